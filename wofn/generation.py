"""N-way sampling from a causal LM policy, with each response's log-likelihood under the policy.

One batch of prompts is prefilled once; its KV cache is then repeated N times, so the N samples
of a prompt share the prefix computation. Finished rows are dropped from the cache. Every
(prompt, sample) has its own seeded generator, so a candidate does not depend on which other
prompts shared its batch (up to floating-point effects of padding), and a redone shard
reproduces its rows. Log-probabilities are read from the same forward pass that sampled the
token, under the policy at temperature 1 (the model's own distribution), whatever the sampling
temperature.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from dataclasses import dataclass

import torch

from wofn.models import LoadedModel

_TURN = re.compile(r"\n\n(Human|Assistant):")


@dataclass(frozen=True)
class SamplingParams:
    n: int = 8  # samples per prompt
    max_new_tokens: int = 64  # generation cap; rows that hit it get finish_reason "length"
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 0  # global seed; each (prompt, sample) derives its own
    max_prompt_tokens: int = 1024  # longer prompts are cut from the left (the end is kept)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def derive_seed(seed: int, prompt_id: str, candidate_idx: int) -> int:
    digest = hashlib.sha256(f"{seed}:{prompt_id}:{candidate_idx}".encode()).hexdigest()
    return int(digest[:15], 16)  # < 2**60: fits int64


def prompt_to_messages(prompt: str) -> list[dict[str, str]]:
    """HH transcript ("\\n\\nHuman: ... \\n\\nAssistant:") to chat messages; other text is one user turn."""
    parts = _TURN.split(prompt)
    if len(parts) < 3 or parts[0].strip():
        return [{"role": "user", "content": prompt.strip()}]
    messages = []
    for speaker, text in zip(parts[1::2], parts[2::2]):
        role = "user" if speaker == "Human" else "assistant"
        messages.append({"role": role, "content": text.strip()})
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()  # the open turn the policy is asked to write
    return messages


def encode_prompt(tokenizer, prompt: str, max_tokens: int) -> list[int]:
    """Chat template when the tokenizer has one, else the raw text; cut from the left."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            prompt_to_messages(prompt), add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
    else:
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    return list(ids[-max_tokens:])


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    drop = sorted_probs.cumsum(-1) - sorted_probs > top_p  # keep the smallest set reaching top_p
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs)


def _inverse_cdf_sample(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row of `probs` [rows, vocab] (unnormalized is fine), row r drawing its single
    uniform from generators[r]: one random number per row and step instead of one per vocabulary
    entry (what torch.multinomial spends), still independent of the other rows in the batch."""
    cdf = probs.float().cumsum(-1)
    uniforms = torch.cat([torch.rand(1, generator=g) for g in generators])
    targets = uniforms * cdf[:, -1]
    # right=True: the first index whose cdf exceeds the target, so zero-probability tokens are never picked
    picked = torch.searchsorted(cdf, targets[:, None], right=True)[:, 0]
    return picked.clamp(max=probs.shape[-1] - 1)


@torch.inference_mode()
def sample(policy: LoadedModel, prompts: list[tuple[str, str]], params: SamplingParams,
           return_token_ids: bool = False) -> list[dict]:
    """Sample `params.n` responses for each (prompt_id, prompt); one dict per candidate row.

    With `return_token_ids`, each row also carries `prompt_token_ids` and `token_ids` (not part
    of the candidates table; for checks and debugging).
    """
    model, tokenizer = policy.model, policy.tokenizer
    device = next(model.parameters()).device
    eos_ids = _eos_ids(model, tokenizer)
    encoded = [encode_prompt(tokenizer, text, params.max_prompt_tokens) for _, text in prompts]
    width = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):  # left padding: every row's last token is at the end
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        mask[row, width - len(ids):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)

    cache_arg = _cache_argument(model)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                **_last_logits_only(model))
    cache = getattr(out, cache_arg)
    cache.batch_repeat_interleave(params.n)
    logits = out.logits[:, -1, :].float().repeat_interleave(params.n, dim=0)  # [B*N, V]
    mask = mask.repeat_interleave(params.n, dim=0)
    next_pos = positions[:, -1:].repeat_interleave(params.n, dim=0) + 1  # [B*N, 1]

    rows = [(p, i) for p in range(len(prompts)) for i in range(params.n)]
    seeds = [derive_seed(params.seed, prompts[p][0], i) for p, i in rows]
    generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    tokens: list[list[int]] = [[] for _ in rows]
    logprob_sum = [0.0] * len(rows)
    finish = ["length"] * len(rows)
    active = list(range(len(rows)))  # row ids still generating, in cache order

    for step in range(params.max_new_tokens):
        logprobs = torch.log_softmax(logits, dim=-1)  # the policy's own distribution (T=1)
        probs = _top_p_filter(torch.softmax(logits / params.temperature, dim=-1), params.top_p).cpu()
        chosen = _inverse_cdf_sample(probs, [generators[row] for row in active])
        picked = logprobs.gather(-1, chosen.to(logprobs.device)[:, None])[:, 0].tolist()
        keep = []
        for k, row in enumerate(active):
            token = int(chosen[k])
            tokens[row].append(token)
            logprob_sum[row] += picked[k]
            if token in eos_ids:
                finish[row] = "stop"
            else:
                keep.append(k)
        if not keep or step == params.max_new_tokens - 1:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask, next_pos, chosen = mask[index], next_pos[index], chosen[keep]
            active = [active[k] for k in keep]
        mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype, device=device)], -1)
        out = model(input_ids=chosen[:, None].to(device), attention_mask=mask,
                    position_ids=next_pos, use_cache=True, **{cache_arg: cache})
        cache = getattr(out, cache_arg)
        logits = out.logits[:, -1, :].float()
        next_pos = next_pos + 1

    results = []
    for r, (p, i) in enumerate(rows):
        extra = {"prompt_token_ids": encoded[p], "token_ids": tokens[r]} if return_token_ids else {}
        results.append({**extra, **candidate_row(
            policy.tokenizer, prompts[p], i, tokens[r], logprob_sum[r], finish[r], params, seeds[r],
            eos_ids, policy.name, policy.revision)})
    return results


def candidate_row(tokenizer, prompt: tuple[str, str], candidate_idx: int, tokens: list[int], logprob_sum: float,
                  finish_reason: str, params: SamplingParams, seed: int, eos_ids: set[int], policy: str,
                  policy_revision: str, logprob_mode: str = "raw") -> dict:
    """One wofn.schemas.CANDIDATES row (every sampling engine builds its rows here). `logprob_mode`:
    "raw" when `logprob_sum` is under the model's own distribution (temperature 1), "processed"
    when under the sampling distribution (after temperature and top-p)."""
    text_tokens = [t for t in tokens if t not in eos_ids]
    return {
        "prompt_id": prompt[0],
        "candidate_idx": candidate_idx,
        "prompt": prompt[1],
        "response": tokenizer.decode(text_tokens, skip_special_tokens=True).strip(),
        "num_tokens": len(tokens),
        "logprob_sum": logprob_sum,
        "logprob_mean": logprob_sum / max(1, len(tokens)),
        "finish_reason": finish_reason,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_new_tokens": params.max_new_tokens,
        "seed": seed,
        "policy": policy,
        "policy_revision": policy_revision,
        "logprob_mode": logprob_mode,
    }


def _last_logits_only(model) -> dict:
    """The forward argument that computes the LM head on the last position only (the prefill needs
    no other: its [batch, width, vocab] logits were most of a small model's time and memory), where
    the model takes one (transformers: `logits_to_keep`, earlier `num_logits_to_keep`)."""
    parameters = inspect.signature(model.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in parameters:
            return {name: 1}
    return {}


def _cache_argument(model) -> str:
    """transformers 5 renamed `past_key_values` to `cache`; support both."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(value)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
