"""Knockout tournaments (wofn.tournament) with judges whose answers are known."""

from __future__ import annotations

import math
import random

import pytest

from wofn import tournament

SIZES = (1, 2, 3, 5, 7, 8, 16)


class Judge:
    """compare(i, j) = value[prompt][i] - value[prompt][j]; records every call and match."""

    def __init__(self, values: dict[str, list[float]]):
        self.values = values
        self.calls: list[list[tuple[str, int, int]]] = []

    def __call__(self, matches):
        self.calls.append(list(matches))
        return [self.values[p][i] - self.values[p][j] for p, i, j in matches]

    def matches_of(self, prompt_id: str) -> list[tuple[int, int]]:
        return [(i, j) for call in self.calls for p, i, j in call if p == prompt_id]


def _expected_comparisons(n: int, met: bool) -> int:
    """N-1 per bracket, the floor(N/2) first-round matches shared, +1 final unless they met."""
    if n == 1:
        return 0
    return (n - 1) + (n - 1) - n // 2 + (0 if met else 1)


def _permutation_values(seed: int) -> dict[str, list[float]]:
    rng = random.Random(seed)
    values = {}
    for n in SIZES:
        for copy in range(3):
            order = list(range(n))
            rng.shuffle(order)
            values[f"n{n:02d}-{copy}"] = [float(v) for v in order]
    return values


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_total_order_finds_true_best_and_worst(seed):
    values = _permutation_values(seed)
    judge = Judge(values)
    results = tournament.knockout({p: list(range(len(v))) for p, v in values.items()}, judge)
    assert set(results) == set(values)
    for prompt_id, vals in values.items():
        n = len(vals)
        result = results[prompt_id]
        assert result.n_candidates == n
        assert result.best_idx == vals.index(max(vals))
        assert result.worst_idx == vals.index(min(vals))
        matches = judge.matches_of(prompt_id)
        assert len(matches) == len(set(matches)) == result.comparisons
        if n == 1:
            assert not result.has_pair and result.logit is None and result.confidence is None
            assert result.comparisons == 0
            continue
        bracket_matches = {(i, j) for call in judge.calls[: tournament.rounds(16)]
                           for q, i, j in call if q == prompt_id}
        met = {(result.best_idx, result.worst_idx), (result.worst_idx, result.best_idx)} & bracket_matches
        assert result.comparisons == _expected_comparisons(n, bool(met))
        assert tournament.bracket_comparisons(n) <= result.comparisons <= tournament.bracket_comparisons(n) + 1
        assert result.comparisons <= 2 * (n - 1) + 1  # never more than two unshared brackets + final
        assert result.has_pair
        # the pair's logit is the judge's own verdict on best vs worst
        assert result.logit == vals[result.best_idx] - vals[result.worst_idx] > 0
        assert result.confidence == pytest.approx(1 / (1 + math.exp(-result.logit)))
    # one judge call per round for every prompt at once, plus one for the finals not reused
    assert len(judge.calls) == tournament.rounds(16) + 1 == 5
    for call in judge.calls[:-1]:
        assert len({p for p, _, _ in call}) > 1  # batched across prompts


def test_comparison_counts():
    assert [tournament.bracket_comparisons(n) for n in SIZES] == [0, 1, 3, 6, 9, 10, 22]
    assert [tournament.rounds(n) for n in SIZES] == [0, 1, 2, 3, 3, 3, 4]
    for n in range(2, 40):
        assert tournament.bracket_comparisons(n) == 2 * (n - 1) - n // 2
        assert tournament.rounds(n) == math.ceil(math.log2(n))


@pytest.mark.parametrize("n", SIZES)
def test_rounds_per_bracket(n):
    judge = Judge({"p": [float(v) for v in range(n)]})
    result = tournament.knockout({"p": list(range(n))}, judge)["p"]
    round_calls = judge.calls[:-1] if n > 1 and result.comparisons > tournament.bracket_comparisons(n) else judge.calls
    assert len(round_calls) == tournament.rounds(n) == (math.ceil(math.log2(n)) if n > 1 else 0)
    assert result.best_idx == n - 1 and result.worst_idx == 0


def test_n2_reuses_the_only_match():
    judge = Judge({"p": [0.0, 2.5]})
    result = tournament.knockout({"p": [0, 1]}, judge)["p"]
    assert (result.best_idx, result.worst_idx, result.comparisons) == (1, 0, 1)
    assert judge.calls == [[("p", 0, 1)]]
    assert result.logit == 2.5 and result.confidence == pytest.approx(1 / (1 + math.exp(-2.5)))


@pytest.mark.parametrize("n", [2, 3, 5, 8, 16])
def test_ties_are_deterministic(n):
    judge = Judge({"p": [0.0] * n})
    result = tournament.knockout({"p": list(range(n))}, judge)["p"]
    # all equal: the lower index always wins a match, so best = lowest, worst = highest index
    assert (result.best_idx, result.worst_idx) == (0, n - 1)
    assert result.best_idx != result.worst_idx
    assert result.logit == 0.0 and result.confidence == 0.5
    again = tournament.knockout({"p": list(reversed(range(n)))}, Judge({"p": [0.0] * n}))["p"]
    assert again == result


def test_sparse_indices_and_losing_final_is_reported():
    # A judge that is not transitive: the bracket winners may lose their direct comparison.
    def judge(matches):
        out = []
        for _, i, j in matches:
            if {i, j} == {10, 30}:  # 30 beats 10 directly...
                out.append(-1.0 if (i, j) == (10, 30) else 1.0)
            else:  # ...but otherwise the lower index wins
                out.append(1.0 if i < j else -1.0)
        return out

    result = tournament.knockout({"p": [30, 10, 20, 40]}, judge)["p"]
    # round 1: (10, 20) -> 10; (30, 40) -> 30. best: (10, 30) -> 30; worst: (20, 40) -> 40.
    assert (result.best_idx, result.worst_idx) == (30, 40)
    assert result.logit == 1.0

    def reversed_final(matches):
        return [-1.0 if {i, j} == {10, 40} else (1.0 if i < j else -1.0) for _, i, j in matches]

    result = tournament.knockout({"p": [10, 20, 30, 40]}, reversed_final)["p"]
    # best 10, worst 40 (they never met), but the direct comparison says 40 beats 10.
    assert (result.best_idx, result.worst_idx) == (10, 40)
    assert result.logit == -1.0 and result.confidence < 0.5 and result.has_pair


def test_intransitive_bye_can_be_both_and_gives_no_pair():
    # N=3: round 1 (0, 1) -> 0; bye 2. best (0, 2): 2 wins; worst (1, 2): 2 loses.
    def judge(matches):
        table = {(0, 1): 1.0, (0, 2): -1.0, (1, 2): 1.0}
        return [table[(i, j)] for _, i, j in matches]

    result = tournament.knockout({"p": [0, 1, 2]}, judge)["p"]
    assert result.best_idx == result.worst_idx == 2
    assert not result.has_pair and result.logit is None and result.comparisons == 3


def test_bad_inputs():
    with pytest.raises(ValueError, match="no candidates"):
        tournament.knockout({"p": []}, Judge({}))
    with pytest.raises(ValueError, match="duplicate"):
        tournament.knockout({"p": [0, 0]}, Judge({"p": [0.0]}))
    with pytest.raises(ValueError, match="NaN"):
        tournament.knockout({"p": [0, 1]}, lambda m: [float("nan")] * len(m))
    with pytest.raises(ValueError, match="logits"):
        tournament.knockout({"p": [0, 1]}, lambda m: [])
    assert tournament.knockout({}, Judge({})) == {}
