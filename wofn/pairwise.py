"""The pairwise teacher of West-of-N (Pace et al. 2024): a preference model P(y_a > y_b | x).

The model is the same `AutoModelForSequenceClassification` with one output as a pointwise reward
model, but it reads the prompt and BOTH responses (`wofn.rm_format.encode_pair`, "[Response A]"
then "[Response B]") and its scalar output l(x, a, b) is the logit of P(a is preferred to b).

Position bias is removed by always using both orders: training sees every pair as (chosen,
rejected) with label 1 and as (rejected, chosen) with label 0, and inference reports the
symmetrized logit

    s(x, a, b) = (l(x, a, b) - l(x, b, a)) / 2,

so s(x, a, b) = -s(x, b, a) exactly and sigmoid(s) is the teacher's P(a > b).

Training:  training.train_reward_model(init, pairs, config, out_dir, objective=pairwise.PAIRWISE)
writes a model folder whose manifest kind is "pairwise_preference_model" (see `is_pairwise`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wofn import models, rm_format, scoring, training
from wofn.models import LoadedModel

KIND = "pairwise_preference_model"


class PairwiseObjective(training.Objective):
    """Slot 0: (prompt, chosen, rejected), target 1; slot 1: (prompt, rejected, chosen), target 0."""

    kind = KIND
    slots = 2

    def encode(self, tokenizer, pair: training.Pair, max_length: int) -> list[list[int]]:
        return [rm_format.encode_pair(tokenizer, pair["prompt"], pair["chosen"], pair["rejected"], max_length),
                rm_format.encode_pair(tokenizer, pair["prompt"], pair["rejected"], pair["chosen"], max_length)]

    def margins(self, outputs: torch.Tensor) -> torch.Tensor:
        """The symmetrized logit that chosen beats rejected: (l(x, y+, y-) - l(x, y-, y+)) / 2."""
        return (outputs[0] - outputs[1]) / 2

    def loss(self, outputs: torch.Tensor) -> torch.Tensor:
        """Mean binary cross-entropy of both orders: BCE(l(x, y+, y-), 1) and BCE(l(x, y-, y+), 0)."""
        both = torch.cat([outputs[0], outputs[1]])
        targets = torch.cat([torch.ones_like(outputs[0]), torch.zeros_like(outputs[1])])
        return F.binary_cross_entropy_with_logits(both, targets)


PAIRWISE = PairwiseObjective()


def is_pairwise(model_path: str) -> bool:
    """Whether `model_path` (a model spec) is a trained pairwise preference model (manifest kind)."""
    if model_path in models.SHIPPED:  # backbones and tiny models: never pairwise, don't build them
        return False
    return models.read_manifest(models.resolve(model_path)).get("kind") == KIND


@torch.inference_mode()
def _logits(rm: LoadedModel, sequences: list[tuple[int, ...]],
            token_budget: int | None) -> dict[tuple[int, ...], float]:
    """Model output per distinct sequence, in padded batches of at most `token_budget` tokens.

    Batches are formed from the distinct sequences sorted by (length desc, ids), so the same set
    of sequences always gives the same batches, whatever order they were asked for in.
    """
    order = sorted(set(sequences), key=lambda s: (-len(s), s))
    device = next(rm.model.parameters()).device
    token_budget = token_budget or scoring.default_token_budget(device)
    out: dict[tuple[int, ...], float] = {}
    start = 0
    while start < len(order):
        size = max(1, token_budget // len(order[start]))  # longest first: the batch's width
        batch = order[start : start + size]
        inputs = rm_format.collate(rm.tokenizer, [list(s) for s in batch])
        logits = rm.model(**{k: v.to(device) for k, v in inputs.items()}).logits[:, 0].float()
        out.update(zip(batch, logits.tolist()))
        start += size
    return out


def compare(rm: LoadedModel, prompts: list[str], a_list: list[str], b_list: list[str], max_length: int,
            token_budget: int | None = None) -> list[float]:
    """Symmetrized logits that a beats b, (l(x, a, b) - l(x, b, a)) / 2, in input order.

    Runs 2 sequences per comparison (identical sequences are run once), length-sorted, in batches
    of at most `token_budget` padded tokens. compare(x, a, b) == -compare(x, b, a) exactly.
    """
    if not len(prompts) == len(a_list) == len(b_list):
        raise ValueError(f"{len(prompts)} prompts, {len(a_list)} a-responses, {len(b_list)} b-responses")
    tok = rm.tokenizer
    ab = [tuple(rm_format.encode_pair(tok, x, a, b, max_length)) for x, a, b in zip(prompts, a_list, b_list)]
    ba = [tuple(rm_format.encode_pair(tok, x, b, a, max_length)) for x, a, b in zip(prompts, a_list, b_list)]
    logits = _logits(rm, ab + ba, token_budget)
    return [(logits[s] - logits[t]) / 2 for s, t in zip(ab, ba)]


def pair_margins(rm: LoadedModel, pairs: list[dict], max_length: int, token_budget: int | None = None) -> list[float]:
    """compare(prompt, chosen, rejected) per pair: > 0 when the teacher prefers the chosen response."""
    return compare(rm, [p["prompt"] for p in pairs], [p["chosen"] for p in pairs],
                   [p["rejected"] for p in pairs], max_length, token_budget)
