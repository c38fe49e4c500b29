"""The reward model's input format: the one function training, scoring and evaluation share.

Every pair file is normalized to the HH transcript template (`prompt` ends with
"\\n\\nAssistant:", the response follows after one space), so the reward model reads the
conversation exactly as the human labellers saw it. Long inputs are truncated from the LEFT:
the end of the response, and the turns closest to it, are always seen.
"""

from __future__ import annotations

import torch


def rm_text(prompt: str, response: str) -> str:
    """The transcript a reward model scores: prompt, one space, the stripped response."""
    return prompt.rstrip() + " " + response.strip()


def encode(tokenizer, prompt: str, response: str, max_length: int) -> list[int]:
    """Token ids with the tokenizer's special tokens, at most `max_length`, cut from the left."""
    tokenizer.truncation_side = "left"  # keep the response end; idempotent on a shared tokenizer
    return tokenizer(rm_text(prompt, response), truncation=True, max_length=max_length)["input_ids"]


def collate(tokenizer, sequences: list[list[int]]) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence (decoder RMs read the last non-pad token)."""
    width = max(len(s) for s in sequences)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
