"""N-way sampling from a causal LM policy, with each response's log-likelihood under the policy.

Continuous batching (the default where the model allows it, `slot_engine_supported`): a fixed
number of slots decode one token each per step; when a row ends, the next waiting (prompt, sample)
takes its slot. A prompt is prefilled once, and its keys and values are kept once for all its N
samples, in preallocated tensors (no cache grows token by token): attention reads a prompt once
per step for all its samples. Elsewhere (sliding-window or recurrent layers), static batches: the
prompts are prefilled as one batch whose cache is repeated N times, decoded until the last row
ends. Every (prompt, sample) has its own seeded generator, so a candidate does not depend on
which other prompts shared its batch or its slots (up to floating-point effects of the batch's
shape), and a redone shard reproduces its rows. Log-probabilities are read from the same forward
pass that sampled the token, under the policy at temperature 1 (the model's own distribution),
whatever the sampling temperature.
"""

from __future__ import annotations

import hashlib
import inspect
import re
import threading
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Callable

import torch

from wofn.models import LoadedModel

_TURN = re.compile(r"\n\n(Human|Assistant):")
BATCHING = ("auto", "continuous", "static")


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
    # the generators are CPU ones (a row's draws do not depend on the device); only their uniforms
    # travel to the device, where the distribution stays
    uniforms = torch.cat([torch.rand(1, generator=g) for g in generators]).to(cdf.device)
    targets = uniforms * cdf[:, -1]
    # right=True: the first index whose cdf exceeds the target, so zero-probability tokens are never picked
    picked = torch.searchsorted(cdf, targets[:, None], right=True)[:, 0]
    return picked.clamp(max=probs.shape[-1] - 1)


DRAW_ROWS = 32  # rows drawn at once on a CPU: each step's float temporaries stay small (6 MB at a 49k vocabulary)


def _draw(logits: torch.Tensor, params: SamplingParams, generators: list[torch.Generator],
          rows: torch.Tensor | None = None) -> tuple[torch.Tensor, list[float]]:
    """One token per row of `logits` [rows, vocab] (any float dtype; `rows`: only these rows, one
    generator each), drawn at the sampling temperature and top-p, and its log-probability under the
    policy's own distribution (temperature 1). Computed on the logits' device (a GPU's [rows, vocab]
    distribution never crosses to the host); the tokens are returned on the CPU. On a CPU the rows
    go DRAW_ROWS at a time: one [slots, vocab] float tensor per step (50 MB at 256 slots) would be
    fresh memory each time (glibc maps blocks over 32 MB anew), and faulting it in cost more than
    the arithmetic; each row's draw does not depend on the others either way."""
    count = len(generators)
    step = count if logits.is_cuda else DRAW_ROWS
    chosen, picked = [], []
    for start in range(0, count, step):
        stop = min(start + step, count)
        part = logits[start:stop] if rows is None else logits.index_select(0, rows[start:stop])
        part = part.float()
        probs = _top_p_filter(torch.softmax(part / params.temperature, dim=-1), params.top_p)
        tokens = _inverse_cdf_sample(probs, generators[start:stop])
        chosen.append(tokens)
        picked.append(torch.log_softmax(part, dim=-1).gather(-1, tokens[:, None])[:, 0])
    return torch.cat(chosen).cpu(), torch.cat(picked).tolist()


@torch.inference_mode()
def sample(policy: LoadedModel, prompts: list[tuple[str, str]], params: SamplingParams,
           return_token_ids: bool = False, slots: int | None = None,
           progress: Callable[[int, int], None] | None = None, batching: str = "auto") -> list[dict]:
    """Sample `params.n` responses for each (prompt_id, prompt); one dict per candidate row, in
    prompt order, then sample order.

    `slots`: the rows decoded at once (default: every row). `batching` "continuous" ("auto" picks
    it where `slot_engine_supported`): a row that ends hands its slot to the next waiting (prompt,
    sample), so the batch stays full however long the prompt list is. "static" (what "auto" falls
    back to): the prompts run in groups of slots // n, each decoded until its longest row ends.
    `progress(prompts, tokens)` is called as prompts finish (all their samples). With
    `return_token_ids`, each row also carries `prompt_token_ids` and `token_ids` (not part of the
    candidates table; for checks and debugging).
    """
    if not prompts:
        return []
    model, tokenizer = policy.model, policy.tokenizer
    eos_ids = _eos_ids(model, tokenizer)
    encoded = [encode_prompt(tokenizer, text, params.max_prompt_tokens) for _, text in prompts]
    if batching not in BATCHING:
        raise ValueError(f"batching {batching!r}: expected one of {BATCHING}")
    slots = len(prompts) * params.n if slots is None else max(1, slots)
    seqs = None
    if batching == "continuous" or (batching == "auto" and slot_engine_supported(model)):
        try:
            seqs = _decode_in_slots(model, tokenizer.pad_token_id, encoded, prompts, params, eos_ids, slots, progress)
        except _SlotEngineUnsupported:
            if batching == "continuous":
                raise
    if seqs is None:
        seqs = []
        group = max(1, slots // params.n)
        for start in range(0, len(prompts), group):
            part = _decode_padded_batch(model, tokenizer.pad_token_id, encoded[start:start + group],
                                        prompts[start:start + group], params, eos_ids)
            seqs += part
            if progress:
                progress(len(prompts[start:start + group]), sum(len(tokens) for tokens, _, _ in part))
    results = []
    rows = [(p, i) for p in range(len(prompts)) for i in range(params.n)]
    for r, (p, i) in enumerate(rows):
        tokens, logprob_sum, finish = seqs[r]
        extra = {"prompt_token_ids": encoded[p], "token_ids": tokens} if return_token_ids else {}
        results.append({**extra, **candidate_row(
            tokenizer, prompts[p], i, tokens, logprob_sum, finish, params, derive_seed(params.seed, prompts[p][0], i),
            eos_ids, policy.name, policy.revision)})
    return results


def _decode_padded_batch(model, pad: int, encoded: list[list[int]], prompts: list[tuple[str, str]],
                         params: SamplingParams, eos_ids: set[int]) -> list[tuple[list[int], float, str]]:
    """The prompts as one left-padded batch, prefilled once, decoded until the last row ends (rows
    that end are dropped from the cache): (tokens, logprob_sum, finish_reason) per (prompt, sample)."""
    device = next(model.parameters()).device
    cache_arg = _cache_argument(model)
    out, mask, positions = _prefill_padded(model, cache_arg, pad, encoded, device)
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
        chosen, picked = _draw(logits, params, [generators[row] for row in active])
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

    return list(zip(tokens, logprob_sum, finish))


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


# --- the slot engine ----------------------------------------------------------------------------

_ATTENTION = "wofn_slots"  # the attention function the slot engine registers with transformers


class _SlotEngineUnsupported(RuntimeError):
    """The model's attention did not go through transformers' attention interface."""


def slot_engine_supported(model) -> bool:
    """Whether `sample` can decode `model` in slots: a decoder whose every layer is full attention
    (no sliding windows, no recurrent state) through transformers' attention interface
    (transformers.AttentionInterface; checked again on the first step, where "auto" falls back)."""
    try:
        from transformers import AttentionInterface  # noqa: F401
    except ImportError:
        return False
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        return False
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    return getattr(config, "_attn_implementation", None) in ("sdpa", "eager")


class _Slots:
    """The keys and values of the slot engine, per layer: a prompt's once, in a prompt group
    (values [groups, kv_heads, prompt columns, head_dim]), and each row's own generated tokens in
    its slot (values [slots, kv_heads, new-token columns, head_dim]). Keys are kept transposed
    ([..., head_dim, columns]): the product with the queries then reads the columns in use as a
    plain slice, where a transposed slice of [..., columns, head_dim] ran 2-2.3x slower in bf16 on
    a CPU. A slot reads its prompt through its group, so the N samples of a prompt share one copy,
    which attention reads once per step for all of them.

    `spare`: the `buffers` of an earlier _Slots of the same model (`_take_spare`); those that are
    large enough are zeroed and used again (as views), instead of memory that the first writes
    must fault in page by page (0.02-0.8 s a call at 256 slots of SmolLM2-135M, 0.9 GB, on a CPU)."""

    def __init__(self, layer_kv: list[tuple[torch.Tensor, torch.Tensor]], slots: int, groups: int, n: int,
                 prompt_columns: int, new_columns: int, spare: dict | None = None):
        k = layer_kv[0][0]
        self.kv_heads, self.head_dim, self.n = k.shape[0], k.shape[-1], n
        self.device, self.dtype = k.device, k.dtype
        self.buffers, spare = {}, spare or {}
        layers = range(len(layer_kv))

        def zeros(name: str, layer: int, count: int, columns: int) -> torch.Tensor:
            inner = (self.head_dim, columns) if "keys" in name else (columns, self.head_dim)
            shape = (count, self.kv_heads, *inner)
            kept = spare.get((name, layer))
            if (kept is None or kept.dtype != self.dtype or kept.device != self.device
                    or any(have < need for have, need in zip(kept.shape, shape))):
                kept = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.buffers[name, layer] = kept
            return kept[tuple(slice(0, size) for size in shape)].zero_()

        self.prompt_keys = [zeros("prompt_keys", layer, groups, prompt_columns) for layer in layers]
        self.prompt_values = [zeros("prompt_values", layer, groups, prompt_columns) for layer in layers]
        self.prompt_mask = torch.zeros((groups, prompt_columns), dtype=torch.bool, device=self.device)
        self.new_keys = [zeros("new_keys", layer, slots, new_columns) for layer in layers]
        self.new_values = [zeros("new_values", layer, slots, new_columns) for layer in layers]
        self.new_mask = torch.zeros((slots, new_columns), dtype=torch.bool, device=self.device)
        self.group = torch.zeros(slots, dtype=torch.long, device=self.device)  # a slot's prompt group
        self.member = torch.zeros(slots, dtype=torch.long, device=self.device)  # its sample index in the group
        self.column = torch.zeros(slots, dtype=torch.long, device=self.device)  # where this step's token goes
        self.rows = torch.arange(slots, device=self.device)
        self.prompt_width = self.new_width = 1  # the columns in use this step
        self.calls = 0

    @property
    def groups(self) -> int:
        return self.prompt_mask.shape[0]

    def add_groups(self, count: int) -> None:
        def grow(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t, t.new_zeros((count, *t.shape[1:]))])

        self.prompt_keys = [grow(t) for t in self.prompt_keys]
        self.prompt_values = [grow(t) for t in self.prompt_values]
        self.prompt_mask = grow(self.prompt_mask)
        for layer, (keys, values) in enumerate(zip(self.prompt_keys, self.prompt_values)):
            self.buffers["prompt_keys", layer], self.buffers["prompt_values", layer] = keys, values

    def put_prompt(self, group: int, layer_kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        width = layer_kv[0][0].shape[1]
        for keys, values, (k, v) in zip(self.prompt_keys, self.prompt_values, layer_kv):
            keys[group, :, :, :width] = k.transpose(-1, -2)
            values[group, :, :width] = v
        self.prompt_mask[group] = False
        self.prompt_mask[group, :width] = True

    def compact(self, count: int, moves: list[tuple[int, int]]) -> None:
        """Keep the first `count` slots: each (source, target) of `moves` copies a slot at or past
        `count` into a free one before it, then every buffer becomes a view of its first `count`
        slots (the moved slots' rows are copied, nothing else)."""
        if moves:
            source = torch.tensor([s for s, _ in moves], device=self.device)
            target = torch.tensor([t for _, t in moves], device=self.device)
            for t in (*self.new_keys, *self.new_values, self.new_mask, self.group, self.member):
                t[target] = t[source]
        self.new_keys = [t[:count] for t in self.new_keys]
        self.new_values = [t[:count] for t in self.new_values]
        self.new_mask, self.group, self.member = self.new_mask[:count], self.group[:count], self.member[:count]
        self.rows = self.rows[:count]

    def prepare(self, prompt_width: int, new_width: int, busy: torch.Tensor) -> None:
        """What every layer's `attend` shares in one step, computed once per step: the columns in use,
        the additive mask (0 where a slot may attend, -inf elsewhere) and the flat indexes that move
        queries from slots to their prompt group's rows (`to_group`: one per (group, kv head, member),
        the zero row for a member no slot decodes) and results back (`to_slot`). `busy` [slots]: the
        slots decoding a row this step. A free slot keeps the group and member of the row it last
        decoded, which a new row may hold by now: the busy slots are written last, so they own it."""
        self.prompt_width, self.new_width = prompt_width, new_width
        slots, kv = len(self.group), self.kv_heads
        mask = torch.cat([self.prompt_mask[self.group, :prompt_width], self.new_mask[:, :new_width]], -1)
        self.bias = torch.zeros(mask.shape, dtype=torch.float32, device=self.device).masked_fill_(
            ~mask, float("-inf"))[:, None, None, :]
        heads = torch.arange(kv, device=self.device)
        # row of (slot s, kv head h) in the grouped layout [groups, kv_heads, n]
        self.to_slot = ((self.group[:, None] * kv + heads) * self.n + self.member[:, None]).reshape(-1)
        self.to_group = torch.full((self.groups * kv * self.n,), slots * kv, dtype=torch.long, device=self.device)
        cells, order = self.to_slot.view(slots, kv), torch.arange(slots * kv, device=self.device).view(slots, kv)
        for owners in (~busy, busy):  # busy slots last: they own a cell a free slot still names
            self.to_group[cells[owners].reshape(-1)] = order[owners].reshape(-1)

    def attend(self, module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               scaling: float | None) -> torch.Tensor:
        """One new token per slot: write its key and value, attend over the slot's prompt (via its
        group) and its own tokens. query [slots, heads, 1, head_dim]; returns [slots, 1, heads, head_dim]."""
        layer = module.layer_idx
        self.calls += 1
        new_keys, new_values = self.new_keys[layer], self.new_values[layer]
        new_keys[self.rows, :, :, self.column] = key[:, :, -1]
        new_values[self.rows, :, self.column] = value[:, :, -1]
        slots, heads, _, dim = query.shape
        kv, per_kv, groups = self.kv_heads, heads // self.kv_heads, self.groups
        scale = dim ** -0.5 if scaling is None else scaling
        pw, nw = self.prompt_width, self.new_width
        q = query[:, :, -1].reshape(slots, kv, per_kv, dim)
        rows = torch.cat([q.reshape(slots * kv, per_kv, dim), q.new_zeros((1, per_kv, dim))])
        grouped = rows.index_select(0, self.to_group).view(groups, kv, self.n * per_kv, dim)
        prompt_scores = torch.matmul(grouped, self.prompt_keys[layer][..., :pw])
        prompt_scores = prompt_scores.view(-1, per_kv, pw).index_select(0, self.to_slot).view(slots, kv, per_kv, pw)
        new_scores = torch.matmul(q, new_keys[..., :nw])
        scores = torch.cat([prompt_scores, new_scores], -1).float().mul_(scale).add_(self.bias)
        probs = torch.softmax(scores, -1).to(query.dtype)
        spread = torch.cat([probs[..., :pw].reshape(slots * kv, per_kv, pw), probs.new_zeros((1, per_kv, pw))])
        spread = spread.index_select(0, self.to_group).view(groups, kv, self.n * per_kv, pw)
        out = torch.matmul(spread, self.prompt_values[layer][:, :, :pw])
        out = out.view(-1, per_kv, dim).index_select(0, self.to_slot).view(slots, kv, per_kv, dim)
        out = out + torch.matmul(probs[..., pw:], new_values[:, :, :nw])
        return out.reshape(slots, 1, heads, dim)


_SPARE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its last decode's _Slots.buffers
_SPARE_LOCK = threading.Lock()


def _take_spare(model) -> dict:
    """The slot buffers a finished decode of `model` left (empty when none, or while another thread
    decodes with them): they stay with the model between `sample` calls and go with it."""
    with _SPARE_LOCK:
        return _SPARE.pop(model, {})


def _give_spare(model, buffers: dict) -> None:
    with _SPARE_LOCK:
        _SPARE[model] = buffers


def _slot_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    state = kwargs.pop("wofn_slots", None)
    if state is None:  # another caller of the model (another thread) while the slot engine decodes
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    return state.attend(module, query, key, value, scaling), None


def _register_slot_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(_ATTENTION, _slot_attention)


def _prefill_padded(model, cache_arg: str, pad: int, encoded: list[list[int]], device):
    """One forward over the prompts as a left-padded batch (every row's last token at the end, its
    positions counted from its first real token), computing logits at the last position only.
    Returns (the model's output, with its cache; the attention mask; the positions)."""
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        mask[row, width - len(ids):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                **_last_logits_only(model))
    return out, mask, positions


# once nothing waits, the running rows move into the first slots and the rest are dropped when at
# least this share of the slots is free: a free slot still costs its row in every matmul (at 256
# slots, 32 prompts x N=8, 64 tokens: 16% of the rows computed; dropping at 1/16 instead of 1/2
# ran 14.1 s against 15.7, medians of 5 alternating runs in bf16, the same tokens)
COMPACT_AT = 1 / 16
PREFILL_PADDING = 1.25  # a prefill batch computes at most this many times its prompts' real tokens


def prefill_batches(lengths: list[int], padding: float = PREFILL_PADDING) -> list[list[int]]:
    """The prompts (indexes into `lengths`) in left-padded prefill batches of similar length: by
    length, a batch grows while its padded width times its rows stays within `padding` times its
    real tokens. One padded batch of short and long prompts computes every row at the longest's
    width (and its attention at that width squared): with 32 HH prompts of 37-392 tokens, 2.8x
    the real tokens."""
    batches: list[list[int]] = []
    real = 0
    for index in sorted(range(len(lengths)), key=lambda i: (lengths[i], i)):
        if batches and lengths[index] * (len(batches[-1]) + 1) <= padding * (real + lengths[index]):
            batches[-1].append(index)
            real += lengths[index]
        else:
            batches.append([index])
            real = lengths[index]
    return batches


def _prefill(model, cache_arg: str, pad: int, encoded: list[list[int]], device
             ) -> list[tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]]:
    """The prompts in left-padded batches of similar length (`prefill_batches`): per prompt, each
    layer's (keys, values) over its own tokens [kv_heads, tokens, head_dim] and the logits of its
    first new token [vocab] (the model's dtype)."""
    results: list = [None] * len(encoded)
    for batch in prefill_batches([len(ids) for ids in encoded]):
        part = [encoded[i] for i in batch]
        out = _prefill_padded(model, cache_arg, pad, part, device)[0]
        cache, width = getattr(out, cache_arg), max(len(ids) for ids in part)
        logits = out.logits[:, -1, :]
        for row, (i, ids) in enumerate(zip(batch, part)):
            results[i] = ([(layer.keys[row, :, width - len(ids):], layer.values[row, :, width - len(ids):])
                           for layer in cache.layers], logits[row])
    return results


def _decode_in_slots(model, pad: int | None, encoded: list[list[int]], prompts: list[tuple[str, str]],
                     params: SamplingParams, eos_ids: set[int], slots: int,
                     progress: Callable[[int, int], None] | None) -> list[tuple[list[int], float, str]]:
    """Continuous batching: `slots` rows decode together; when one ends (EOS or max_new_tokens), the
    next waiting (prompt, sample) takes its slot. A prompt is prefilled once, when its first sample is
    admitted; its keys and values are kept once for all its samples (`_Slots`). Each row has its own
    generator and positions, so it does not depend on the others (up to floating-point effects of
    the batch's shape). Once nothing waits, the rows still running move into the first slots and
    the others are dropped whenever COMPACT_AT of them are free. Returns (tokens, logprob_sum,
    finish_reason) per (prompt, sample), in that order."""
    device = next(model.parameters()).device
    cache_arg, pad, n = _cache_argument(model), 0 if pad is None else pad, params.n
    _register_slot_attention()
    queue = deque((p, i) for p in range(len(prompts)) for i in range(n))
    results: list = [None] * len(queue)
    slots = min(slots, len(queue))
    to_admit, to_finish, tokens_of = [n] * len(prompts), [n] * len(prompts), [0] * len(prompts)
    prefilled: dict[int, tuple] = {}
    group_of: dict[int, int] = {}
    free_groups: list[int] = []
    state: _Slots | None = None
    logits = None
    row: list[int] = [-1] * slots  # the (prompt, sample) index p * n + i a slot decodes, -1 when free
    tokens: list[list[int]] = [[] for _ in range(slots)]
    logprob_sum = [0.0] * slots
    generators: list = [None] * slots
    positions = torch.zeros(slots, dtype=torch.long)
    free = list(range(slots))
    checked, finished = False, []  # prompts finished, reported once the first step shows the engine works

    def report() -> None:
        for count in finished if progress else ():
            progress(1, count)
        finished.clear()

    while True:
        if checked:
            report()
        if free and queue:  # admit waiting rows into the free slots
            taken = [queue.popleft() for _ in range(min(len(free), len(queue)))]
            new = sorted({p for p, _ in taken if p not in prefilled})
            if new:
                prefilled.update(zip(new, _prefill(model, cache_arg, pad, [encoded[p] for p in new], device)))
            if state is None:
                first_kv, first_logits = prefilled[new[0]]
                groups = min(len(prompts), 2 * -(-slots // n))
                state = _Slots(first_kv, slots, groups, n, max(map(len, encoded)), max(1, params.max_new_tokens - 1),
                               spare=_take_spare(model))
                free_groups = list(range(groups))
                logits = first_logits.new_zeros((slots, first_logits.shape[-1]))
            for (p, i), s in zip(taken, free):
                layer_kv, prompt_logits = prefilled[p]
                if p not in group_of:
                    if not free_groups:
                        free_groups = list(range(state.groups, 2 * state.groups))
                        state.add_groups(state.groups)
                    group_of[p] = free_groups.pop(0)
                    state.put_prompt(group_of[p], layer_kv)
                state.group[s], state.member[s] = group_of[p], i
                state.new_mask[s] = False
                positions[s] = len(encoded[p])
                logits[s] = prompt_logits
                row[s], tokens[s], logprob_sum[s] = p * n + i, [], 0.0
                generators[s] = torch.Generator(device="cpu").manual_seed(derive_seed(params.seed, prompts[p][0], i))
                to_admit[p] -= 1
                if not to_admit[p]:
                    del prefilled[p]
            free = free[len(taken):]
        active = [s for s in range(slots) if row[s] >= 0]
        if not active:
            report()
            break
        chosen, picked = _draw(logits, params, [generators[s] for s in active],
                               None if len(active) == slots else torch.tensor(active, device=logits.device))
        feed = []
        for k, s in enumerate(active):
            token = int(chosen[k])
            tokens[s].append(token)
            logprob_sum[s] += picked[k]
            if token in eos_ids or len(tokens[s]) == params.max_new_tokens:
                p = row[s] // n
                results[row[s]] = (tokens[s], logprob_sum[s], "stop" if token in eos_ids else "length")
                tokens_of[p] += len(tokens[s])
                to_finish[p] -= 1
                if not to_finish[p]:
                    free_groups.append(group_of.pop(p))
                    finished.append(tokens_of[p])
                row[s] = -1
                free.append(s)
            else:
                feed.append((s, token))
        if not feed:
            continue
        if not queue and slots - len(feed) >= max(1, int(COMPACT_AT * slots)):  # nothing waits: drop free slots
            count = len(feed)
            running = {s for s, _ in feed}
            moves = dict(zip((s for s, _ in feed if s >= count), (s for s in range(count) if s not in running)))
            state.compact(count, list(moves.items()))
            for source, target in moves.items():
                positions[target] = positions[source]
                row[target], tokens[target] = row[source], tokens[source]
                logprob_sum[target], generators[target] = logprob_sum[source], generators[source]
            positions, row, tokens = positions[:count], row[:count], tokens[:count]
            logprob_sum, generators = logprob_sum[:count], generators[:count]
            feed = [(moves.get(s, s), token) for s, token in feed]
            slots, free = count, []
        step = torch.full((slots, 1), pad, dtype=torch.long)
        fed = torch.tensor([s for s, _ in feed])
        step[fed, 0] = torch.tensor([token for _, token in feed])
        columns = torch.tensor([len(tokens[s]) - 1 if row[s] >= 0 else 0 for s in range(slots)])
        state.column = columns.to(device)
        state.new_mask[fed.to(device), columns[fed].to(device)] = True
        busy = torch.tensor([r >= 0 for r in row], device=device)
        state.prepare(max(len(encoded[r // n]) for r in row if r >= 0), int(columns.max()) + 1, busy)
        state.calls = 0
        attention = model.config._attn_implementation
        model.config._attn_implementation = _ATTENTION
        try:
            out = model(input_ids=step.to(device), position_ids=positions[:, None].to(device), use_cache=False,
                        wofn_slots=state, **_last_logits_only(model))
        finally:
            model.config._attn_implementation = attention
        if not checked:
            if state.calls != model.config.num_hidden_layers:
                raise _SlotEngineUnsupported(
                    f"{type(model).__name__}: {state.calls} of {model.config.num_hidden_layers} layers attended "
                    "through transformers' attention interface; sample with batching='static'")
            checked = True
        logits = out.logits[:, -1, :]  # the model's dtype: _draw takes its rows to float a few at a time
        positions[fed] += 1
    if state is not None:
        _give_spare(model, state.buffers)
    return results
