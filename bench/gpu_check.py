"""`make gpu-check`: wofn's GPU paths on one CUDA GPU with no network, one JSON line per stage.

    python -m bench.gpu_check [--dry-run] [--quick] [--smoke] [--prepare] [--work DIR] [--time-budget S]

For a machine that has python3 with torch, transformers, pyarrow and safetensors but no network:
Beam and the packages it imports that such a machine lacks travel as wheels in `.whl/` (bench/gpu_carry.py,
made by `make gpu-wheels`, i.e. `--prepare`), with the SmolLM2 tokenizer beside them; no DuckDB or
Dagster is needed. `bench/gpu_check.sh` installs the wheels when Beam is missing, then runs this.

The models are built here from configs with random, seeded weights (a trained model computes at
the same speed; random weights seldom sample EOS, so every sequence runs to max_new_tokens) and
saved as safetensors folders that the Beam jobs load like any local model folder:
  smollm2-135m  the shipped SmolLM2-135M-Instruct's architecture (wofn.models.SMOLLM2)
  llama-1b      Llama-3.2-1B's shape (hidden 2048, 16 layers, 32 heads, 8 KV heads, MLP 8192) with
                the SmolLM2 vocabulary

Stages, in order; each prints one JSON line (bench/run.py's format) with its throughput, peak
GPU memory (torch.cuda.max_memory_allocated, reset per stage and side) and MFU against the bf16
matmul peak measured in the same run:
  mfu                the GPU's bf16 matmul peak (a timed 8192^3 torch.matmul loop)
  sampling_<policy>  for each policy: the sampling Beam job (beam_jobs.sample_candidates, torch
                     engine, --device cuda --dtype bfloat16, in this process) vs a per-prompt
                     `model.generate(num_return_sequences=N, do_sample=True)` loop in bf16, the
                     loop stopped after its time cap (rates compare, not totals)
  scoring            the scoring Beam job (beam_jobs.score_candidates) with a reward model of the
                     SmolLM2-135M architecture (LlamaForSequenceClassification, untrained head, bf16)
                     on the first policy's candidates, repeated to the planned count
  training           wofn.training.train_reward_model from that reward model: a few hundred
                     Bradley-Terry steps on the HH train pairs, bf16 autocast

`--dry-run` prints the plan (stages, models and parameter counts, sizes, what travels) without a
GPU and without Beam. `--smoke` runs every stage with a tiny model on any device (the CPU here):
the figures mean nothing, the run shows the stages work end to end. A stage that fails prints a
line with its error and the run goes on; one that would start after `--time-budget` seconds is
skipped. The exit status is 1 when any stage failed or was skipped.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import shlex
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.gpu_carry import (
    TOKENIZER,
    CarryTooLarge,
    carry,
    check_carry,
    download_command,
    prepare,
    tokenizer_dir,
)
from bench.run import emit, log, matmul_peak_gflops, mfu, side, timed
from wofn.models import matmul_params

REPO = Path(__file__).resolve().parent.parent
# the DirectRunner in this process (one worker), so its model shares this process's GPU memory counters
RUNNER = ("--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory")


# --- the plan --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    """A decoder built from a LlamaConfig with random weights; vocabulary and special ids come
    from the SmolLM2 tokenizer."""

    name: str
    about: str
    config: dict  # LlamaConfig fields


SMOLLM2_135M = Shape("smollm2-135m", "the shipped SmolLM2-135M-Instruct's architecture", {
    "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
    "num_key_value_heads": 3, "head_dim": 64, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0}, "tie_word_embeddings": True})
LLAMA_1B = Shape("llama-1b", "Llama-3.2-1B's shape with the SmolLM2 vocabulary", {
    "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 64, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}, "tie_word_embeddings": True})
TINY = Shape("tiny", "a tiny decoder (--smoke; wofn.models' tiny-llama shape)", {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 2048, "tie_word_embeddings": True})


@dataclass(frozen=True)
class Sizes:
    policies: tuple[Shape, ...]  # sampled from, one stage each; the first one's candidates are scored
    reward_model: Shape  # scored with, and trained from (a scalar head on this decoder)
    prompts: int  # HH prompts from data/prompts_unlabeled.parquet
    n: int  # samples per prompt
    max_new_tokens: int
    sample_batch: int  # prompts per generate batch in the job (--batch-size; rows = x n)
    baseline_cap_s: float  # the per-prompt generate loop stops after the prompt that passes this
    score_candidates: int  # candidates scored (the first policy's, repeated)
    score_batch: int  # candidates per reward-model call (--batch-size)
    score_max_length: int
    token_budget: int | None  # padded tokens per forward (None: the job's default, 16384 on a GPU)
    train_steps: int
    train_batch: int  # pairs per step (2 sequences each)
    train_max_length: int
    matmul_size: int
    matmul_seconds: float
    torch_threads: int  # 0: all cores


SIZES = {
    "full": Sizes((SMOLLM2_135M, LLAMA_1B), SMOLLM2_135M, prompts=64, n=8, max_new_tokens=128, sample_batch=32,
                  baseline_cap_s=60, score_candidates=32768, score_batch=512, score_max_length=512,
                  token_budget=None, train_steps=300, train_batch=16, train_max_length=512,
                  matmul_size=8192, matmul_seconds=3.0, torch_threads=0),
    "quick": Sizes((SMOLLM2_135M, LLAMA_1B), SMOLLM2_135M, prompts=16, n=8, max_new_tokens=64, sample_batch=16,
                   baseline_cap_s=20, score_candidates=4096, score_batch=512, score_max_length=512,
                   token_budget=None, train_steps=100, train_batch=16, train_max_length=512,
                   matmul_size=8192, matmul_seconds=1.0, torch_threads=0),
    "smoke": Sizes((TINY,), TINY, prompts=2, n=2, max_new_tokens=4, sample_batch=2, baseline_cap_s=30,
                   score_candidates=8, score_batch=4, score_max_length=64, token_budget=None, train_steps=2,
                   train_batch=2, train_max_length=64, matmul_size=256, matmul_seconds=0.2, torch_threads=1),
}


def stages(sizes: Sizes) -> list[str]:
    return ["mfu", *(f"sampling_{shape.name}" for shape in sizes.policies), "scoring", "training"]


def llama_config(shape: Shape, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **shape.config)


def parameter_counts(config) -> dict:
    """Parameters of the causal LM and of the reward model (scalar head) of `config`, and those
    that take part in matmuls (the MFU's), counted on the meta device: no weights are made."""
    import torch
    from transformers import AutoModelForSequenceClassification, LlamaForCausalLM

    rm_config = copy.deepcopy(config)
    rm_config.num_labels = 1  # as wofn.models.load_reward_model gives a backbone
    with torch.device("meta"):
        lm = LlamaForCausalLM(config)
        rm = AutoModelForSequenceClassification.from_config(rm_config)
    return {"parameters": sum(p.numel() for p in lm.parameters()), "matmul_parameters": matmul_params(lm),
            "reward_model_parameters": sum(p.numel() for p in rm.parameters()),
            "reward_model_matmul_parameters": matmul_params(rm)}


def plan(sizes: Sizes, root: Path = REPO) -> dict:
    """Everything the run will do, from configs alone (no weights, no Beam, no GPU)."""
    from transformers import AutoTokenizer

    from wofn import scoring

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir(root))
    shapes = {s.name: s for s in (*sizes.policies, sizes.reward_model)}
    models = {name: {"architecture": "LlamaForCausalLM", "about": shape.about,
                     "config": {**shape.config, "vocab_size": len(tokenizer)},
                     **parameter_counts(llama_config(shape, tokenizer))} for name, shape in shapes.items()}
    budget = sizes.token_budget or f"job default ({scoring.GPU_TOKEN_BUDGET} on a GPU)"
    return {"stages": stages(sizes), "models": models, "sizes": {
        k: v for k, v in asdict(sizes).items() if k not in ("policies", "reward_model")}, "steps": {
        "sampling": f"{sizes.prompts} prompts x N={sizes.n}, {sizes.max_new_tokens} new tokens, "
                    f"{sizes.sample_batch} prompts ({sizes.sample_batch * sizes.n} rows) per generate batch; "
                    f"baseline: one generate per prompt until {sizes.baseline_cap_s:g} s",
        "scoring": f"{sizes.score_candidates} candidates of {sizes.policies[0].name}, reward model "
                   f"{sizes.reward_model.name} as LlamaForSequenceClassification, {sizes.score_batch} candidates "
                   f"per call, max_length {sizes.score_max_length}, token budget {budget}",
        "training": f"{sizes.train_steps} steps x {sizes.train_batch} pairs, max_length {sizes.train_max_length}, "
                    f"from {sizes.reward_model.name}, bf16 autocast"}}


def format_plan(the_plan: dict, info: dict, root: Path = REPO) -> str:
    lines = ["GPU check plan (bench/gpu_check.py)", "stages, in order:"]
    lines += [f"  {k + 1}. {name}" for k, name in enumerate(the_plan["stages"])]
    lines.append("models (random weights from configs, saved as safetensors folders):")
    for name, m in the_plan["models"].items():
        lines.append(f"  {name}: {m['architecture']}, {m['parameters']:,} parameters "
                     f"({m['matmul_parameters']:,} in matmuls; as a reward model {m['reward_model_parameters']:,}), "
                     f"{m['about']}")
        lines.append(f"    config {json.dumps(m['config'])}")
    lines.append("work:")
    lines += [f"  {stage}: {text}" for stage, text in the_plan["steps"].items()]
    lines.append(f"sizes: {json.dumps(the_plan['sizes'])}")
    if info["wheels"]:
        lines.append(f"carry {info['folder']}/ (the device tool's carry: [\"{info['folder']}\"]):")
        lines += [f"  {name}  {size} MiB" for name, size in info["wheels"].items()]
        lines.append(f"  {TOKENIZER}/  {'present' if info['tokenizer'] else 'MISSING: run make gpu-wheels'}")
    else:
        lines.append(f"carry: no wheels in {info['folder']}/ yet; `make gpu-wheels` makes them with:")
        lines.append("  " + shlex.join(download_command(root)))
        lines.append(f"  and copies the SmolLM2 tokenizer to {info['folder']}/{TOKENIZER}/")
    lines.append(f"travels: {info['carried_mib']} MiB carried + {info['working_tree_mib']} MiB working tree = "
                 f"{info['total_mib']} MiB of {info['limit_mib']} MiB")
    return "\n".join(lines)


# --- models ----------------------------------------------------------------------------------

def build_model(shape: Shape, out: Path, device: str) -> dict:
    """A random-weight (seeded) model of `shape` in bf16 with the SmolLM2 tokenizer, saved to `out`."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir())
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(llama_config(shape, tokenizer))
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    del model
    free_memory(device)
    return {"parameters": params, "disk_gib": round(sum(p.stat().st_size for p in out.iterdir()) / 2**30, 3)}


# --- measuring -------------------------------------------------------------------------------

def is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def free_memory(device: str) -> None:
    import torch

    gc.collect()
    if is_cuda(device):
        torch.cuda.empty_cache()


def reset_peak(device: str) -> float | None:
    """Start a peak-memory window; GiB allocated now."""
    import torch

    free_memory(device)
    if not is_cuda(device):
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return round(torch.cuda.memory_allocated() / 2**30, 3)


def peak(device: str, before: float | None) -> dict:
    import torch

    if not is_cuda(device):
        return {"gpu_memory_gib": None}
    torch.cuda.synchronize()
    return {"gpu_memory_gib": {"before": before, "peak": round(torch.cuda.max_memory_allocated() / 2**30, 3)}}


def device_info(device: str) -> dict:
    import torch
    import transformers

    info = {"device": device, "torch": torch.__version__, "transformers": transformers.__version__}
    if is_cuda(device):
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda)
    return info


def table_rows(path: Path, column: str | None = None) -> tuple[int, int]:
    """Rows of a Parquet folder (0 when it has none), and the sum of `column`."""
    import pyarrow.parquet as pq

    files = sorted(path.glob("*.parquet")) if path.is_dir() else []
    if not files:
        return 0, 0
    table = pq.read_table(files, columns=[column] if column else None)
    return table.num_rows, (int(sum(table.column(column).to_pylist())) if column else 0)


# --- stages ----------------------------------------------------------------------------------

class Check:
    """One run: the sizes, the device, the work folder and what earlier stages left there."""

    def __init__(self, sizes: Sizes, device: str, work: Path):
        self.sizes, self.device, self.work = sizes, device, work
        self.dtype = "bfloat16" if is_cuda(device) else "float32"
        self.peaks: dict = {}
        self.built: dict[str, dict] = {}

    def model_dir(self, shape: Shape) -> Path:
        out = self.work / "models" / shape.name
        if shape.name not in self.built:
            log(f"building {shape.name} ({shape.about}) on {self.device}")
            info, seconds = timed(build_model, shape, out, self.device)
            self.built[shape.name] = {**info, "build_seconds": round(seconds, 2)}
            log(f"  {info['parameters']:,} parameters in {seconds:.1f}s")
        return out

    def prompts(self) -> tuple[Path, list[tuple[str, str]]]:
        import pyarrow.parquet as pq

        from wofn import data
        from wofn.paths import DATA_DIR

        path = self.work / "prompts.parquet"
        table = data.load_prompts(DATA_DIR / "prompts_unlabeled.parquet", limit=self.sizes.prompts)
        pq.write_table(table, path)
        return path, [(r["prompt_id"], r["prompt"]) for r in table.to_pylist()]

    def job_options(self, batch: int) -> list[str]:
        return ["--device", self.device, "--dtype", self.dtype, "--batch-size", str(batch), "--num-shards", "1",
                "--torch-threads", str(self.sizes.torch_threads), *RUNNER]

    def mfu(self) -> dict:
        """The matmul peak in the dtype the other stages run in (bf16 on a GPU, fp32 for --smoke on a CPU)."""
        from wofn import models

        before = reset_peak(self.device)
        gflops = matmul_peak_gflops(models.torch_dtype(self.dtype), self.sizes.matmul_size,
                                    self.sizes.matmul_seconds, self.device)
        self.peaks = {self.dtype: gflops}
        log(f"{self.dtype} matmul peak: {gflops / 1000:.1f} TFLOP/s")
        return {"matmul": f"{self.sizes.matmul_size}^3 {self.dtype} torch.matmul loop on {self.device}, "
                          f"~{self.sizes.matmul_seconds:g} s", "peak_gflops": self.peaks, **peak(self.device, before)}

    def sampling(self, shape: Shape) -> dict:
        from beam_jobs import sample_candidates
        from bench.run import baseline_sampling
        from wofn import generation, models

        s = self.sizes
        folder = self.model_dir(shape)
        prompts_file, prompts = self.prompts()
        out = self.work / f"candidates_{shape.name}"
        log(f"sampling {shape.name}: the Beam job, {len(prompts)} prompts x N={s.n}")
        before = reset_peak(self.device)
        _, job_s = timed(sample_candidates.run, [
            "--prompts", str(prompts_file), "--output", str(out), "--policy", str(folder), "--n", str(s.n),
            "--max-new-tokens", str(s.max_new_tokens), *self.job_options(s.sample_batch)], save_main_session=False)
        ours_memory = peak(self.device, before)
        candidates, generated = table_rows(out, "num_tokens")
        errors, _ = table_rows(Path(str(out) + "_errors"))

        policy, load_s = timed(models.load_policy, str(folder), device=self.device, dtype=self.dtype)
        params = generation.SamplingParams(n=s.n, max_new_tokens=s.max_new_tokens)
        encoded = [generation.encode_prompt(policy.tokenizer, text, params.max_prompt_tokens) for _, text in prompts]
        baseline_sampling(policy, encoded[:1], generation.SamplingParams(n=2, max_new_tokens=4))  # warm-up
        log(f"sampling {shape.name}: per-prompt generate, up to {s.baseline_cap_s:g} s")
        before = reset_peak(self.device)
        base = {"seconds": 0.0, "prompts": 0, "candidates": 0, "generated_tokens": 0}
        for ids in encoded:
            (cands, tokens), seconds = timed(baseline_sampling, policy, [ids], params)
            base.update(seconds=base["seconds"] + seconds, prompts=base["prompts"] + 1,
                        candidates=base["candidates"] + cands, generated_tokens=base["generated_tokens"] + tokens)
            if base["seconds"] > s.baseline_cap_s:
                break
        base_memory = peak(self.device, before)
        lm_params = matmul_params(policy.model)
        del policy
        prefill = sum(map(len, encoded))
        base_prefill = s.n * sum(map(len, encoded[:base["prompts"]]))  # generate repeats each prompt N times
        ours = side(job_s, candidates=candidates, generated_tokens=generated)
        ours.update(errors=errors, prefill_tokens=prefill, **ours_memory,
                    mfu=mfu(lm_params, generated + prefill, job_s, self.peaks.get(self.dtype)))
        baseline = side(base["seconds"], candidates=base["candidates"], generated_tokens=base["generated_tokens"])
        baseline.update(prompts=base["prompts"], prefill_tokens=base_prefill, **base_memory,
                        mfu=mfu(lm_params, base["generated_tokens"] + base_prefill, base["seconds"],
                                self.peaks.get(self.dtype)))
        return {"config": {"policy": shape.name, **self.built[shape.name], "dtype": self.dtype, "prompts": len(prompts),
                           "n": s.n, "max_new_tokens": s.max_new_tokens, "job_batch_prompts": s.sample_batch,
                           "ours": "beam_jobs.sample_candidates in this process (DirectRunner, one worker); seconds "
                                   "are the whole job's: read, model load, sampling, write",
                           "baseline": "per-prompt model.generate(do_sample=True, num_return_sequences=N), "
                                       f"transformers' defaults (top_k=50), stopped after {s.baseline_cap_s:g} s",
                           "load_seconds_of_the_policy": round(load_s, 2)},
                "ours": ours, "baseline": baseline,
                "speedup_generated_tokens_per_s": round(ours["generated_tokens_per_s"]
                                                        / baseline["generated_tokens_per_s"], 3)}

    def scoring(self) -> dict:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
        from transformers import AutoTokenizer

        from beam_jobs import score_candidates
        from wofn import rm_format

        s = self.sizes
        folder = self.model_dir(s.reward_model)
        source = pq.read_table(sorted((self.work / f"candidates_{s.policies[0].name}").glob("*.parquet")))
        if source.num_rows == 0:
            raise RuntimeError(f"no candidates of {s.policies[0].name} to score (its sampling stage wrote none)")
        copies = math.ceil(s.score_candidates / source.num_rows)
        ids = source.schema.get_field_index("prompt_id")
        table = pa.concat_tables([source.set_column(ids, "prompt_id", pc.binary_join_element_wise(
            source["prompt_id"], pa.scalar(f"copy{k}"), "-")) for k in range(copies)]).slice(0, s.score_candidates)
        candidates = self.work / "score_input"
        candidates.mkdir(exist_ok=True)
        pq.write_table(table, candidates / "part-00000.parquet")
        tokenizer = AutoTokenizer.from_pretrained(folder)
        per_row = [len(rm_format.encode(tokenizer, p, r, s.score_max_length))
                   for p, r in zip(source["prompt"].to_pylist(), source["response"].to_pylist())]
        tokens = sum(per_row[k % len(per_row)] for k in range(table.num_rows))
        out = self.work / "scores"
        log(f"scoring: the Beam job, {table.num_rows} candidates with {s.reward_model.name}")
        before = reset_peak(self.device)
        _, job_s = timed(score_candidates.run, [
            "--candidates", str(candidates), "--output", str(out), "--reward-model", str(folder),
            "--max-length", str(s.score_max_length),
            *(["--token-budget", str(s.token_budget)] if s.token_budget else []),
            *self.job_options(s.score_batch)], save_main_session=False)
        scored, _ = table_rows(out)
        errors, _ = table_rows(Path(str(out) + "_errors"))
        rm_params = self.reward_model_params()
        figures = side(job_s, sequences=scored, tokens=tokens)
        figures.update(errors=errors, **peak(self.device, before),
                       mfu=mfu(rm_params, tokens, job_s, self.peaks.get(self.dtype)))
        return {"config": {"reward_model": f"{s.reward_model.name} + untrained scalar head "
                                           "(LlamaForSequenceClassification)", "dtype": self.dtype,
                           "candidates": table.num_rows, "distinct_texts": source.num_rows,
                           "max_length": s.score_max_length, "batch_candidates": s.score_batch,
                           "token_budget": s.token_budget or "job default",
                           "ours": "beam_jobs.score_candidates in this process; seconds are the whole job's; "
                                   "tokens are rm_format.encode's, unpadded"},
                "ours": figures}

    def reward_model_params(self) -> int:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir())
        return parameter_counts(llama_config(self.sizes.reward_model, tokenizer))["reward_model_matmul_parameters"]

    def training(self) -> dict:
        from transformers import AutoTokenizer

        from wofn import data, rm_format, training
        from wofn.paths import DATA_DIR

        s = self.sizes
        folder = self.model_dir(s.reward_model)
        pairs = data.load_preferences(DATA_DIR / "hh_train.parquet").to_pylist()
        # training runs ceil(len(pairs) * epochs / batch) steps; half a pair short of train_steps * batch
        # keeps that ceil at train_steps despite rounding
        epochs = (s.train_steps * s.train_batch - 0.5) / len(pairs)
        config = training.TrainConfig(epochs=epochs, batch_size=s.train_batch, max_length=s.train_max_length,
                                      bf16=is_cuda(self.device), device=self.device, val_fraction=0.0,
                                      log_every=s.train_steps)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        epoch_tokens = sum(len(rm_format.encode(tokenizer, p["prompt"], p[k], s.train_max_length))
                           for p in pairs for k in ("chosen", "rejected"))
        log(f"training: {s.train_steps} steps x {s.train_batch} pairs from {s.reward_model.name}")
        before = reset_peak(self.device)
        metrics = training.train_reward_model(str(folder), pairs, config, self.work / "student")
        memory = peak(self.device, before)
        tokens = round(epoch_tokens * epochs)
        figures = side(metrics["seconds"], pairs=metrics["steps"] * s.train_batch, tokens=tokens)
        figures.update(steps=metrics["steps"], final_loss=round(metrics["final_loss"], 4), **memory,
                       mfu=mfu(self.reward_model_params(), tokens, metrics["seconds"], self.peaks.get(self.dtype),
                               flops_per_param_token=6))
        return {"config": {"init": f"{s.reward_model.name} + scalar head", "train_pairs": len(pairs),
                           "steps": s.train_steps, "batch_pairs": s.train_batch, "max_length": s.train_max_length,
                           "bf16_autocast": config.bf16, "epochs": round(epochs, 3),
                           "ours": "wofn.training.train_reward_model (AdamW, fp32 weights); seconds exclude "
                                   "loading and saving; tokens are unpadded, estimated from one epoch's"},
                "ours": figures}

    def run_stage(self, name: str) -> dict:
        if name == "mfu":
            return self.mfu()
        if name.startswith("sampling_"):
            return self.sampling(next(p for p in self.sizes.policies if f"sampling_{p.name}" == name))
        return {"scoring": self.scoring, "training": self.training}[name]()


# --- main ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the plan and what travels; needs no GPU")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a minute or two on a GPU)")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny model and tiny sizes on any device (the CPU without a GPU): the stages work")
    parser.add_argument("--prepare", action="store_true",
                        help="download the wheels into .whl and copy the tokenizer there (make gpu-wheels)")
    parser.add_argument("--work", type=Path, help="folder for the models and tables (default: a temporary one)")
    parser.add_argument("--time-budget", type=float, default=450.0,
                        help="seconds; a stage that would start later is skipped (default 450)")
    args = parser.parse_args(argv)
    try:
        if args.prepare:
            print(json.dumps(prepare()), flush=True)
            return 0
        sizes = SIZES["smoke" if args.smoke else "quick" if args.quick else "full"]
        if args.dry_run:
            info = carry()
            print(format_plan(plan(sizes), info), flush=True)
            check_carry(info)
            return 0
    except CarryTooLarge as refusal:
        print(refusal, file=sys.stderr)
        return 2
    return run(sizes, args.work, args.time_budget)


def run(sizes: Sizes, work: Path | None, budget_s: float) -> int:
    import torch

    if not torch.cuda.is_available() and sizes is not SIZES["smoke"]:
        print("gpu_check: no CUDA GPU here; use --dry-run for the plan, or --smoke to run the stages on the CPU",
              file=sys.stderr)
        return 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = torch.get_num_threads()
    torch.set_num_threads(sizes.torch_threads or threads)
    try:
        with tempfile.TemporaryDirectory(prefix="wofn-gpu-check-") as tmp:
            check = Check(sizes, device, Path(work or tmp))
            check.work.mkdir(parents=True, exist_ok=True)
            return run_stages(check, budget_s)
    finally:
        torch.set_num_threads(threads)


def run_stages(check: Check, budget_s: float) -> int:
    """Each stage in order, one JSON line each; 1 when any failed or was skipped, else 0."""
    device, failed, started = check.device, 0, time.perf_counter()
    log(f"plan: stages {stages(check.sizes)} on {device}, work in {check.work}")
    for name in stages(check.sizes):
        elapsed, load_before = time.perf_counter() - started, os.getloadavg()[0]
        if elapsed > budget_s:
            emit(name, {"skipped": f"{elapsed:.0f} s elapsed, over the {budget_s:.0f} s time budget"},
                 load_before)
            failed += 1
            continue
        log(f"stage {name}")
        try:
            figures, seconds = timed(check.run_stage, name)
            figures["stage_seconds"] = round(seconds, 2)
        except Exception as exc:  # noqa: BLE001 - reported on its line; the next stage still runs
            traceback.print_exc()
            figures = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            failed += 1
        emit(name, {**figures, "device": device_info(device)}, load_before)
    log(f"done in {time.perf_counter() - started:.1f}s, {failed} stage(s) failed or skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
