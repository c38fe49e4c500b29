"""Scoring (prompt, response) texts with a scalar reward model, batched by length."""

from __future__ import annotations

import torch

from wofn import rm_format
from wofn.models import LoadedModel


@torch.inference_mode()
def score(rm: LoadedModel, prompts: list[str], responses: list[str], max_length: int,
          token_budget: int = 8192) -> list[float]:
    """Rewards in input order. Batches hold at most `token_budget` padded tokens, sorted by length."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    encoded = [rm_format.encode(rm.tokenizer, p, r, max_length) for p, r in zip(prompts, responses)]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    device = next(rm.model.parameters()).device
    rewards = [0.0] * len(encoded)
    start = 0
    while start < len(order):
        width = len(encoded[order[start]])  # longest first: the batch's width
        size = max(1, token_budget // width)
        batch = order[start : start + size]
        inputs = rm_format.collate(rm.tokenizer, [encoded[i] for i in batch])
        logits = rm.model(**{k: v.to(device) for k, v in inputs.items()}).logits[:, 0].float()
        for i, value in zip(batch, logits.tolist()):
            rewards[i] = value
        start += size
    return rewards
