"""Sampling: shapes, seeds, and log-probabilities that match a teacher-forced forward pass."""

from __future__ import annotations

import math

import pytest
import torch

from wofn import generation


def _prompts():
    return [("a", "\n\nHuman: Hi there\n\nAssistant:"),
            ("b", "\n\nHuman: What is 2+2?\n\nAssistant: 4\n\nHuman: Why?\n\nAssistant:")]


def test_prompt_to_messages_parses_hh_transcripts():
    messages = generation.prompt_to_messages("\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant:")
    assert messages == [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"},
                        {"role": "user", "content": "C"}]
    assert generation.prompt_to_messages("plain text") == [{"role": "user", "content": "plain text"}]


def test_sample_rows_and_seeds(tiny_policy):
    params = generation.SamplingParams(n=3, max_new_tokens=6, seed=11)
    rows = generation.sample(tiny_policy, _prompts(), params)
    assert [(r["prompt_id"], r["candidate_idx"]) for r in rows] == [(p, i) for p in "ab" for i in range(3)]
    assert rows == generation.sample(tiny_policy, _prompts(), params), "same seed, same candidates"
    other = generation.sample(tiny_policy, _prompts(), generation.SamplingParams(n=3, max_new_tokens=6, seed=12))
    assert [r["response"] for r in rows] != [r["response"] for r in other]
    assert len({r["seed"] for r in rows}) == 6
    for r in rows:
        assert r["finish_reason"] in ("stop", "length")
        assert (r["finish_reason"] == "length") == (r["num_tokens"] == 6 and r["finish_reason"] != "stop")
        assert math.isclose(r["logprob_mean"], r["logprob_sum"] / r["num_tokens"])


def test_logprobs_equal_teacher_forced_scores(tiny_policy):
    """The log-prob recorded while sampling (batched, cached) equals a fresh full forward pass."""
    params = generation.SamplingParams(n=2, max_new_tokens=5, seed=5)
    rows = generation.sample(tiny_policy, _prompts(), params, return_token_ids=True)
    for row in rows:
        ids = row["prompt_token_ids"] + row["token_ids"]
        with torch.no_grad():
            logits = tiny_policy.model(torch.tensor([ids])).logits[0].float()
        start = len(row["prompt_token_ids"])
        steps = torch.log_softmax(logits[start - 1 : len(ids) - 1], -1)
        expected = steps.gather(-1, torch.tensor(row["token_ids"])[:, None]).sum().item()
        assert row["logprob_sum"] == pytest.approx(expected, abs=1e-3)
        assert row["num_tokens"] == len(row["token_ids"])


def test_sampling_params_are_validated():
    with pytest.raises(ValueError, match="temperature"):
        generation.SamplingParams(temperature=0)
    with pytest.raises(ValueError, match="n must be"):
        generation.SamplingParams(n=0)


def test_inverse_cdf_sampling_follows_the_distribution_and_skips_zero_mass():
    probs = torch.tensor([[0.0, 0.2, 0.0, 0.8]] * 4000)
    generators = [torch.Generator().manual_seed(i) for i in range(4000)]
    picked = generation._inverse_cdf_sample(probs, generators)
    counts = torch.bincount(picked, minlength=4).tolist()
    assert counts[0] == 0 and counts[2] == 0
    assert abs(counts[3] / 4000 - 0.8) < 0.03
    again = generation._inverse_cdf_sample(probs[:3], [torch.Generator().manual_seed(i) for i in range(3)])
    assert again.tolist() == picked[:3].tolist(), "each row's draw depends only on its own generator"
