"""Scoring (prompt, response) texts with a scalar reward model, batched by length.

Two paths, same rewards (up to floating-point effects):

* **Token-budget batches**: sequences sorted by length, longest first, each batch holding at
  most `token_budget` padded tokens, so padding stays small.
* **Shared prompt prefix** (decoder reward models only, where the model takes a KV cache): the
  N candidates of one prompt start with the same tokens. Those are run once, the cache is
  repeated for the N rows, and only the N differing suffixes are computed. Which tokens are
  shared is read off the encoded sequences themselves (their longest common prefix), so the
  input format is exactly `rm_format.encode`'s and left truncation is respected. Encoder
  models (BERT, MiniLM) attend in both directions, so a prefix cannot be reused there.
"""

from __future__ import annotations

import inspect
from collections import defaultdict

import torch

from wofn import rm_format
from wofn.models import LoadedModel

CPU_TOKEN_BUDGET = 2048  # measured best for MiniLM at 256 tokens on a 2-core CPU (bench/run.py)
GPU_TOKEN_BUDGET = 16384
MIN_SHARED_PREFIX = 16  # below this many shared tokens a separate prefix pass does not pay


def default_token_budget(device: torch.device | str) -> int:
    return GPU_TOKEN_BUDGET if torch.device(device).type == "cuda" else CPU_TOKEN_BUDGET


def cache_argument(model) -> str | None:
    """Name of the forward argument that takes a KV cache (`cache` in transformers 5,
    `past_key_values` before), or None for models without one (encoders)."""
    params = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return None


def reuses_prefix(rm: LoadedModel) -> bool:
    """Whether `score` shares prompt prefixes for this model: a decoder that takes a KV cache."""
    return cache_argument(rm.model) is not None and not getattr(rm.model.config, "is_encoder_decoder", False)


def score(rm: LoadedModel, prompts: list[str], responses: list[str], max_length: int,
          token_budget: int | None = None, share_prefix: bool | None = None) -> list[float]:
    """Rewards in input order (a teacher ensemble's: its members' mean).

    `token_budget`: padded tokens per forward pass (None: 2048 on CPU, 16384 on GPU).
    `share_prefix`: compute the shared prompt prefix of same-prompt inputs once (None: wherever
    the model allows, see `reuses_prefix`; False: never).
    """
    return [reward for reward, _ in score_members(rm, prompts, responses, max_length, token_budget, share_prefix)]


@torch.inference_mode()
def score_members(rm: LoadedModel, prompts: list[str], responses: list[str], max_length: int,
                  token_budget: int | None = None,
                  share_prefix: bool | None = None) -> list[tuple[float, list[float] | None]]:
    """(reward, member rewards) in input order: a teacher ensemble (`wofn.reward_ensemble`) gives
    each member's reward beside their mean; a single reward model gives None. Arguments as `score`."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    device = next(rm.model.parameters()).device
    budget = token_budget or default_token_budget(device)
    encoded = [rm_format.encode(rm.tokenizer, p, r, max_length) for p, r in zip(prompts, responses)]
    rewards: list[tuple[float, list[float] | None] | None] = [None] * len(encoded)
    if share_prefix is None:
        share_prefix = reuses_prefix(rm)
    elif share_prefix and not reuses_prefix(rm):
        raise ValueError(f"{rm.name}: prefix sharing needs a decoder model that takes a KV cache")
    rest = list(range(len(encoded)))
    if share_prefix:
        rest = []
        for group in _groups_by_prompt(prompts):
            shared = _common_prefix_length(encoded[i] for i in group)
            if len(group) >= 2 and shared >= MIN_SHARED_PREFIX:
                values = _score_with_shared_prefix(rm, [encoded[i] for i in group], shared, budget, device)
                for i, value in zip(group, values):
                    rewards[i] = value
            else:
                rest.extend(group)
    for i, value in zip(rest, _score_batched(rm, [encoded[i] for i in rest], budget, device)):
        rewards[i] = value
    return rewards  # type: ignore[return-value]


def _rewards(out) -> list[tuple[float, list[float] | None]]:
    """(reward, member rewards or None) per row of a model output."""
    values = out.logits[:, 0].float().tolist()
    members = getattr(out, "member_logits", None)
    if members is None:
        return [(value, None) for value in values]
    return list(zip(values, members.float().tolist()))


def _score_batched(rm: LoadedModel, encoded: list[list[int]], budget: int,
                   device) -> list[tuple[float, list[float] | None]]:
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    rewards: list[tuple[float, list[float] | None]] = [(0.0, None)] * len(encoded)
    start = 0
    while start < len(order):
        width = len(encoded[order[start]])  # longest first: the batch's width
        size = max(1, budget // width)
        batch = order[start : start + size]
        inputs = rm_format.collate(rm.tokenizer, [encoded[i] for i in batch])
        out = rm.model(**{k: v.to(device) for k, v in inputs.items()})
        for i, value in zip(batch, _rewards(out)):
            rewards[i] = value
        start += size
    return rewards


def _groups_by_prompt(prompts: list[str]) -> list[list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, prompt in enumerate(prompts):
        groups[prompt].append(i)
    return list(groups.values())


def _common_prefix_length(sequences) -> int:
    """Tokens all sequences share from the start, leaving every sequence at least one of its own
    (the reward is read at each sequence's last token, which must be computed per row)."""
    sequences = list(sequences)
    shared = min(len(s) for s in sequences) - 1
    first = sequences[0]
    for seq in sequences[1:]:
        k = 0
        while k < shared and seq[k] == first[k]:
            k += 1
        shared = k
    return max(shared, 0)


def _score_with_shared_prefix(rm: LoadedModel, encoded: list[list[int]], shared: int, budget: int,
                              device) -> list[tuple[float, None]]:
    """One prefix pass for the group, then its suffixes (right-padded) in budget-sized chunks,
    each chunk reading a copy of the prefix cache."""
    model = rm.model
    cache_arg = cache_argument(model)
    prefix = torch.tensor([encoded[0][:shared]], device=device)
    prefix_cache = getattr(model(input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True), cache_arg)
    suffixes = [seq[shared:] for seq in encoded]
    width = max(len(s) for s in suffixes)
    rows = max(1, budget // (shared + width))
    rewards: list[tuple[float, None]] = []
    for start in range(0, len(suffixes), rows):
        chunk = suffixes[start : start + rows]
        cache = _repeated(prefix_cache, len(chunk), last=start + rows >= len(suffixes))
        inputs = rm_format.collate(rm.tokenizer, chunk)
        ids, mask = inputs["input_ids"].to(device), inputs["attention_mask"].to(device)
        full_mask = torch.cat([torch.ones((len(chunk), shared), dtype=mask.dtype, device=device), mask], -1)
        positions = torch.arange(shared, shared + ids.shape[1], device=device).expand(len(chunk), -1)
        out = model(input_ids=ids, attention_mask=full_mask, position_ids=positions, use_cache=True,
                    **{cache_arg: cache})
        rewards.extend((value, None) for value in out.logits[:, 0].float().tolist())
    return rewards


def _repeated(cache, rows: int, last: bool):
    """The prefix cache expanded to `rows` rows; a copy unless this is its last use."""
    import copy

    target = cache if last else copy.deepcopy(cache)
    target.batch_repeat_interleave(rows)
    return target
