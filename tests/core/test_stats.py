"""Paired differences with bootstrap intervals: exact on cases whose answer is known."""

from __future__ import annotations

import pytest

from wofn import stats


def test_identical_models_differ_by_nothing_within_noise():
    correct = [[1, 0, 1, 1, 0.5, 0, 1, 1]]
    result = stats.paired_difference(correct, correct)
    assert (result["difference"], result["low"], result["high"]) == (0.0, 0.0, 0.0)
    assert result["within_noise"] and result["n"] == 8 and result["seeds"] == 1


def test_a_model_right_wherever_the_other_is_wrong_is_not_noise():
    a, b = [[0.0] * 100], [[1.0] * 100]
    result = stats.paired_difference(a, b)
    assert (result["difference"], result["low"], result["high"]) == (1.0, 1.0, 1.0)
    assert not result["within_noise"] and stats.describe(result) == "+100.0 points [95% CI +100.0, +100.0]"


def test_the_interval_is_paired_and_seeded():
    """B is right on 10 more of 200 pairs than A, and they agree elsewhere: the paired interval holds only
    the 10 discordant pairs' noise (an unpaired one would be ~10x wider)."""
    a = [[1.0] * 100 + [0.0] * 100]
    b = [[1.0] * 100 + [1.0] * 10 + [0.0] * 90]
    first = stats.paired_difference(a, b, n_boot=1000, seed=3)
    assert first == stats.paired_difference(a, b, n_boot=1000, seed=3)
    assert first["difference"] == pytest.approx(0.05)
    assert 0 < first["low"] < 0.05 < first["high"] < 0.1
    assert not first["within_noise"]
    assert "within noise" not in stats.describe(first)


def test_seeds_widen_the_interval_when_they_disagree():
    """Two seeds whose gains are +10 and -10 points: the mean is 0; resampling the seeds puts a quarter of
    the draws near each seed's own gain, so the interval reaches both."""
    a = [[0.0] * 50 + [1.0] * 50, [0.0] * 50 + [1.0] * 50]
    b = [[1.0] * 10 + [0.0] * 40 + [1.0] * 50, [0.0] * 50 + [0.0] * 10 + [1.0] * 40]
    result = stats.paired_difference(a, b, n_boot=2000)
    assert result["difference"] == pytest.approx(0.0) and result["seeds"] == 2
    assert result["low"] <= -0.08 and result["high"] >= 0.08 and result["within_noise"]


def test_length_balanced_difference_uses_both_sides():
    """A length-only judge ("shorter wins") scores 50% length-balanced; a perfect model 100%."""
    signs = [1, 1, -1, -1, -1, 0]
    shorter_wins = [[0.0, 0.0, 1.0, 1.0, 1.0, 0.5]]
    perfect = [[1.0] * 6]
    result = stats.paired_difference(shorter_wins, perfect, signs, "length_balanced_accuracy")
    assert result["a"] == pytest.approx(0.5) and result["b"] == pytest.approx(1.0)
    assert result["difference"] == pytest.approx(0.5)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="same number of seeds"):
        stats.paired_difference([[1.0]], [[1.0], [0.0]])
    with pytest.raises(ValueError, match="seed 0: 2 and 1 pairs"):
        stats.paired_difference([[1.0, 0.0]], [[1.0]])
    with pytest.raises(ValueError, match="length signs"):
        stats.paired_difference([[1.0]], [[1.0]], metric="length_balanced_accuracy")
    with pytest.raises(ValueError, match="metric 'auc'"):
        stats.paired_difference([[1.0]], [[1.0]], metric="auc")
    assert stats.correct_from_margins([0.3, 0.0, -1.0]) == [1.0, 0.5, 0.0]


def test_metric_from_margins_matches_the_evaluation_definitions():
    margins, signs = [1.0, -1.0, 0.0, 2.0, -0.5], [1, 1, -1, -1, 0]
    assert stats.metric(margins, signs, "accuracy") == pytest.approx((1 + 0 + 0.5 + 1 + 0) / 5)
    # chosen longer: 1 of 2; chosen shorter: (0.5 + 1) / 2; equal lengths count in neither side
    assert stats.metric(margins, signs, "length_balanced_accuracy") == pytest.approx((0.5 + 0.75) / 2)
    with pytest.raises(ValueError, match="metric 'auc'"):
        stats.metric(margins, signs, "auc")
