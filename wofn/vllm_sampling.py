"""N-way sampling with vLLM, for GPU machines (`--engine vllm`; optional, import-guarded).

The rows are the same as `generation.sample`'s (built by `generation.candidate_row`):

* every (prompt, sample) is its own request with its own seed (`generation.derive_seed`), so a
  candidate does not depend on what else was in the batch, and a redone shard reproduces it
  on the same engine (vLLM and the torch engine draw different samples for the same seed);
* the N requests of a prompt share their prefix through vLLM's automatic prefix caching
  (`enable_prefix_caching=True`), which is what "prefill once" means there;
* log-probabilities come from the sampling step itself (`logprobs=0`: the sampled token's).
  Where the engine takes `logprobs_mode` (vLLM V1), wofn asks for "raw_logprobs": the model's
  own distribution (before temperature and top-p), the same quantity as the torch engine's, and
  the rows say `logprob_mode: raw`. An engine without that option (vLLM V0) reports them after
  temperature and top-p: the rows say `logprob_mode: processed`, and the likelihood filter then
  ranks by a different quantity than a torch-engine run would;
* one engine per worker process, on the GPU the worker claimed (`wofn.devices.claim`): vLLM
  takes its GPU from CUDA_VISIBLE_DEVICES, which `load` narrows to that one.

Not exercised on the CPU-only CI machine: the tests there check the guarded import and the
request plan only.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

from wofn import generation, models

INSTALL_HINT = ("the vLLM engine needs the `vllm` package on a CUDA machine: `pip install vllm` "
                "(it brings its own torch build); the default engine (`--engine torch`) needs nothing extra")


def require_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return vllm


@dataclass
class VLLMPolicy:
    """A vLLM engine with its tokenizer and provenance (one object: Beam handlers return it)."""

    llm: object
    tokenizer: object
    eos_ids: set[int]
    name: str
    revision: str
    path: str
    logprob_mode: str = "raw"  # wofn.schemas.CANDIDATES.logprob_mode


def logprob_options(engine_args_class) -> tuple[dict, str]:
    """The engine option that asks for raw log-probabilities where the engine has it, and the
    `logprob_mode` the rows then carry ("raw", else "processed")."""
    if "logprobs_mode" in inspect.signature(engine_args_class).parameters:
        return {"logprobs_mode": "raw_logprobs"}, "raw"
    return {}, "processed"


def pin_device(device: str, environ=os.environ) -> None:
    """Narrow CUDA_VISIBLE_DEVICES to the GPU `device` names ("cuda:k", k among the visible ones)."""
    if not device.startswith("cuda:"):
        return
    k = int(device.split(":", 1)[1])
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(k + 1)]
    environ["CUDA_VISIBLE_DEVICES"] = ids[k]


def load(spec: str, dtype: str = "bfloat16", trust_remote_code: bool = False,
         gpu_memory_utilization: float = 0.85, device: str = "cuda", **engine_args) -> VLLMPolicy:
    vllm = require_vllm()
    resolved = models.resolve(spec)
    models.check_safetensors(resolved)
    pin_device(device)
    logprobs, mode = logprob_options(vllm.EngineArgs)
    llm = vllm.LLM(model=resolved, dtype=dtype, trust_remote_code=trust_remote_code,
                   enable_prefix_caching=True, gpu_memory_utilization=gpu_memory_utilization,
                   **{**logprobs, **engine_args})
    tokenizer = models.load_tokenizer(resolved, trust_remote_code)
    eos_ids = {tokenizer.eos_token_id} - {None}
    try:
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(resolved).eos_token_id
        eos_ids.update([eos] if isinstance(eos, int) else (eos or []))
    except OSError:  # no generation_config.json
        pass
    return VLLMPolicy(llm, tokenizer, eos_ids, spec, models.revision(resolved), resolved, mode)


def plan(tokenizer, prompts: list[tuple[str, str]], params: generation.SamplingParams) -> list[dict]:
    """One request per (prompt, sample), in candidate-row order: prompt index, candidate_idx,
    the prompt's token ids (chat template, cut from the left) and the derived seed."""
    encoded = [generation.encode_prompt(tokenizer, text, params.max_prompt_tokens) for _, text in prompts]
    return [{"prompt": p, "candidate_idx": i, "prompt_token_ids": encoded[p],
             "seed": generation.derive_seed(params.seed, prompts[p][0], i)}
            for p in range(len(prompts)) for i in range(params.n)]


def sample(policy: VLLMPolicy, prompts: list[tuple[str, str]], params: generation.SamplingParams) -> list[dict]:
    vllm = require_vllm()
    requests = plan(policy.tokenizer, prompts, params)
    sampling = [vllm.SamplingParams(n=1, temperature=params.temperature, top_p=params.top_p,
                                    max_tokens=params.max_new_tokens, seed=r["seed"], logprobs=0)
                for r in requests]
    outputs = policy.llm.generate([{"prompt_token_ids": r["prompt_token_ids"]} for r in requests], sampling,
                                  use_tqdm=False)
    rows = []
    for request, output in zip(requests, outputs):
        completion = output.outputs[0]
        tokens = list(completion.token_ids)
        logprob_sum = sum(step[token].logprob for step, token in zip(completion.logprobs or [], tokens))
        finish = "stop" if completion.finish_reason == "stop" else "length"
        rows.append(generation.candidate_row(
            policy.tokenizer, prompts[request["prompt"]], request["candidate_idx"], tokens, logprob_sum, finish,
            params, request["seed"], policy.eos_ids, policy.name, policy.revision, policy.logprob_mode))
    return rows
