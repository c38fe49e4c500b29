"""scoring.score: token-budget batches and the shared-prompt-prefix path give the same rewards."""

from __future__ import annotations

import pytest
import torch

from wofn import data, models, rm_format, scoring
from wofn.paths import DATA_DIR


@pytest.fixture(scope="module")
def decoder_rm():
    return models.load_reward_model(models.TINY_LLAMA)


@pytest.fixture(scope="module")
def grouped_inputs():
    """4 real HH prompts x 5 responses each, of different lengths, in interleaved order."""
    rows = data.load_preferences(DATA_DIR / "hh_test.parquet", limit=4).to_pylist()
    inputs = [(row["prompt"], (row["chosen"] if k % 2 else row["rejected"]) + " more" * k)
              for k in range(5) for row in rows]
    return [p for p, _ in inputs], [r for _, r in inputs]


def _forward_widths(model) -> tuple[list[tuple[int, ...]], object]:
    shapes: list[tuple[int, ...]] = []

    def hook(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        shapes.append(tuple(ids.shape))

    return shapes, model.register_forward_pre_hook(hook, with_kwargs=True)


def test_shared_prefix_gives_the_same_rewards_and_runs_each_prompt_once(decoder_rm, grouped_inputs):
    prompts, responses = grouped_inputs
    plain = scoring.score(decoder_rm, prompts, responses, max_length=512, share_prefix=False)
    shapes, handle = _forward_widths(decoder_rm.model)
    try:
        shared = scoring.score(decoder_rm, prompts, responses, max_length=512)
    finally:
        handle.remove()
    assert shared == pytest.approx(plain, abs=1e-5)
    prefix_passes = [s for s in shapes if s[0] == 1]
    assert len(prefix_passes) == 4  # one per prompt
    encoded = [rm_format.encode(decoder_rm.tokenizer, p, r, 512) for p, r in zip(prompts, responses)]
    total = sum(map(len, encoded))
    computed = sum(s[0] * s[1] for s in shapes)
    assert computed < 0.5 * total  # the prompts dominate these inputs; each was run once, not 5 times


def test_budget_and_order_do_not_change_rewards(decoder_rm, grouped_inputs):
    prompts, responses = grouped_inputs
    reference = scoring.score(decoder_rm, prompts, responses, max_length=512, share_prefix=False)
    small_chunks = scoring.score(decoder_rm, prompts, responses, max_length=512, token_budget=300)
    reversed_ = scoring.score(decoder_rm, prompts[::-1], responses[::-1], max_length=512)
    assert small_chunks == pytest.approx(reference, abs=1e-5)
    assert reversed_[::-1] == pytest.approx(reference, abs=1e-5)


def test_left_truncation_falls_back_to_plain_batches(decoder_rm, grouped_inputs):
    """At 32 tokens every input is cut from the left, so same-prompt inputs share no prefix."""
    prompts, responses = grouped_inputs
    shapes, handle = _forward_widths(decoder_rm.model)
    try:
        cut = scoring.score(decoder_rm, prompts, responses, max_length=32)
    finally:
        handle.remove()
    assert not any(s[0] == 1 for s in shapes)
    assert cut == pytest.approx(scoring.score(decoder_rm, prompts, responses, 32, share_prefix=False), abs=1e-5)


def test_encoder_models_do_not_share_prefixes(tiny_rm):
    assert not scoring.reuses_prefix(tiny_rm)
    with pytest.raises(ValueError, match="prefix sharing needs a decoder"):
        scoring.score(tiny_rm, ["x"], ["y"], 32, share_prefix=True)


def test_common_prefix_leaves_every_sequence_a_token_of_its_own():
    assert scoring._common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2
    assert scoring._common_prefix_length([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert scoring._common_prefix_length([[7], [7, 8]]) == 0
    assert scoring._common_prefix_length([[1, 2], [3, 4]]) == 0


def test_default_token_budget_depends_on_the_device():
    assert scoring.default_token_budget("cpu") == scoring.CPU_TOKEN_BUDGET
    assert scoring.default_token_budget(torch.device("cuda", 0)) == scoring.GPU_TOKEN_BUDGET
