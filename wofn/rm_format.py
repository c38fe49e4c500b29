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


# --- the pairwise teacher's input ------------------------------------------------------------

PAIR_LABEL_A = "\n\n[Response A]:"
PAIR_LABEL_B = "\n\n[Response B]:"


def pair_text(prompt: str, response_a: str, response_b: str) -> str:
    """The transcript a pairwise preference model reads (before any truncation):

        <prompt, right-stripped; an HH transcript ending in "\\n\\nAssistant:">
        "\\n\\n[Response A]: " <response_a, stripped>
        "\\n\\n[Response B]: " <response_b, stripped>

    i.e. `prompt.rstrip() + "\\n\\n[Response A]: " + a.strip() + "\\n\\n[Response B]: " + b.strip()`.
    The model's scalar output is read as logit P(A is preferred to B).
    """
    return prompt.rstrip() + PAIR_LABEL_A + " " + response_a.strip() + PAIR_LABEL_B + " " + response_b.strip()


def _special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The special ids the tokenizer puts before and after a single sequence ([CLS] .. [SEP], BOS ..).

    Found by tokenizing a probe with and without special tokens (transformers 5 fast tokenizers
    have neither `build_inputs_with_special_tokens` nor `prepare_for_model`).
    """
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return list(full[:start]), list(full[start + len(bare) :])
    raise ValueError(f"cannot locate the special tokens of {type(tokenizer).__name__}: {full} vs {bare}")


def encode_pair(tokenizer, prompt: str, response_a: str, response_b: str, max_length: int) -> list[int]:
    """Token ids of `pair_text(prompt, a, b)` with the tokenizer's special tokens, <= `max_length`.

    The four pieces (prompt, labelled response A, labelled response B) are tokenized separately
    without special tokens. Of the budget left after the special tokens and the two labels, each
    response keeps at most a third (its END: tokens are dropped from its left), and the prompt
    keeps what the responses leave (also its end, cut from the left). Both responses therefore
    always stay visible, and swapping A and B truncates the same tokens of each.
    """
    prefix, suffix = _special_affixes(tokenizer)

    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    prompt_ids = ids(prompt.rstrip())
    label_a, label_b = ids(PAIR_LABEL_A), ids(PAIR_LABEL_B)
    a_ids, b_ids = ids(" " + response_a.strip()), ids(" " + response_b.strip())
    budget = max_length - len(prefix) - len(suffix) - len(label_a) - len(label_b)
    if budget < 3:
        raise ValueError(f"max_length={max_length} leaves no room for a prompt and two responses "
                         f"(special tokens and labels take {max_length - budget})")
    cap = budget // 3
    a_ids = a_ids[-cap:] if len(a_ids) > cap else a_ids
    b_ids = b_ids[-cap:] if len(b_ids) > cap else b_ids
    room = budget - len(a_ids) - len(b_ids)
    prompt_ids = prompt_ids[len(prompt_ids) - room :] if len(prompt_ids) > room else prompt_ids
    return prefix + prompt_ids + label_a + a_ids + label_b + b_ids + suffix
