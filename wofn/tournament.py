"""Knockout tournaments that find the best and the worst of N candidates with a pairwise judge.

West-of-N with a pairwise teacher (Pace et al. 2024) needs the best and the worst of N
responses without scoring each alone. `knockout` runs, for many prompts at once:

* Round 1 (shared): candidates, in increasing index order, are paired (c0, c1), (c2, c3), ...;
  the winner of each match enters the BEST bracket and the loser the WORST bracket. With odd N
  the last candidate has a bye and enters both brackets.
* Best bracket: a knockout where the winner of each match advances; its champion is the best.
* Worst bracket: a knockout where the LOSER of each match advances; its last one is the worst.
  Later rounds pair the advancing candidates in order again; an odd one out has a bye.
* Final: one direct comparison of best vs worst gives the pair's logit (the teacher's own
  logit that best beats worst) and confidence = sigmoid(logit). When the two finalists already
  met in a bracket, that result is reused instead of asking the judge again (negated when they
  met as (worst, best): the judge must be antisymmetric, as `wofn.pairwise.compare` is exactly).

Sharing round 1 is exactly the same as running two separate N-candidate knockouts with the
same first-round pairing (the first round of both would hold the same matches); it just does
not ask for them twice. Comparisons per prompt (see `bracket_comparisons`), for N >= 2:

    floor(N/2)  +  2 * (ceil(N/2) - 1)   [+ 1 for the final unless the finalists already met]

(N - 1 per bracket, minus the floor(N/2) shared first-round matches), e.g. N=2: 1, N=4: 4 (+1),
N=8: 10 (+1), N=16: 22 (+1), against 2 * (N - 1) + 1 for two unshared brackets. N = 1: 0.

Batching: `compare` is called once per ROUND with every prompt's matches of that round (both
brackets), so there are ceil(log2 N_max) calls, plus one for the finals that were not reused.

Ties (a logit exactly 0): in a match (i, j) the LOWER candidate index wins (so in the best
bracket the lower index advances, in the worst bracket the higher index is the loser that
advances). The judge's logits must not be NaN.

If the judge is not transitive, the bye candidate of an odd N can come out as both the best and
the worst; such a prompt (like N = 1) has no pair: `Result.has_pair` is False and no final
comparison is made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

Match = tuple[str, int, int]  # (prompt_id, i, j): "does candidate i beat candidate j?"
Comparator = Callable[[list[Match]], Sequence[float]]  # logits that i beats j, one per match


@dataclass(frozen=True)
class Result:
    """A prompt's tournament: its best and worst candidate and the judge's verdict on the two."""

    best_idx: int
    worst_idx: int
    logit: float | None  # the judge's logit that best beats worst (None: no pair)
    confidence: float | None  # sigmoid(logit): the judge's P(best > worst) (None: no pair)
    comparisons: int  # judge comparisons made for this prompt, the final one included
    n_candidates: int

    @property
    def has_pair(self) -> bool:
        return self.best_idx != self.worst_idx and self.logit is not None


def sigmoid(x: float) -> float:
    """1 / (1 + e^-x) without overflow for any float, including +-inf."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def bracket_comparisons(n: int) -> int:
    """Comparisons of both brackets with a shared first round, the final comparison NOT included."""
    if n < 1:
        raise ValueError(f"a tournament needs at least one candidate, got {n}")
    if n == 1:
        return 0
    return n // 2 + 2 * ((n + 1) // 2 - 1)


def rounds(n: int) -> int:
    """Rounds (judge calls) both brackets take for n candidates: ceil(log2 n); 0 for n = 1."""
    return 0 if n <= 1 else (n - 1).bit_length()


def _beats(i: int, j: int, logit: float) -> bool:
    """Whether i wins its match against j: a positive logit, or a tie and the lower index."""
    if math.isnan(logit):
        raise ValueError(f"the judge returned NaN for candidates {i} vs {j}")
    return logit > 0 or (logit == 0 and i < j)


def _pairings(entrants: list[int]) -> tuple[list[tuple[int, int]], list[int]]:
    """Matches of one round ((e0, e1), (e2, e3), ...) and the bye (the odd one out), if any."""
    matches = [(entrants[k], entrants[k + 1]) for k in range(0, len(entrants) - 1, 2)]
    byes = [entrants[-1]] if len(entrants) % 2 else []
    return matches, byes


def knockout(groups: dict[str, list[int]], compare: Comparator) -> dict[str, Result]:
    """Best and worst candidate of every prompt in `groups` (prompt_id -> candidate indices).

    `compare(matches)` gets a list of (prompt_id, i, j) and returns, per match, a logit that
    candidate i beats candidate j (> 0: i wins). It is called once per round for all prompts.
    """
    entrants: dict[str, list[int]] = {}
    for prompt_id in sorted(groups):
        indices = sorted(groups[prompt_id])
        if not indices:
            raise ValueError(f"prompt {prompt_id!r} has no candidates")
        if len(set(indices)) != len(indices):
            raise ValueError(f"prompt {prompt_id!r} has duplicate candidate indices: {groups[prompt_id]}")
        entrants[prompt_id] = indices

    played: dict[str, dict[tuple[int, int], float]] = {p: {} for p in entrants}  # (i, j) -> logit i beats j

    def play(round_matches: list[Match]) -> list[float]:
        if not round_matches:
            return []
        logits = [float(x) for x in compare(list(round_matches))]
        if len(logits) != len(round_matches):
            raise ValueError(f"compare returned {len(logits)} logits for {len(round_matches)} matches")
        for (prompt_id, i, j), logit in zip(round_matches, logits):
            played[prompt_id][(i, j)] = logit
        return logits

    # Round 1, shared: winners enter the best bracket, losers the worst; a bye enters both.
    best: dict[str, list[int]] = {}
    worst: dict[str, list[int]] = {}
    first: list[Match] = []
    for prompt_id, indices in entrants.items():
        matches, _ = _pairings(indices)
        first += [(prompt_id, i, j) for i, j in matches]
    play(first)
    for prompt_id, indices in entrants.items():
        matches, byes = _pairings(indices)
        results = [(i, j, _beats(i, j, played[prompt_id][(i, j)])) for i, j in matches]
        best[prompt_id] = [i if won else j for i, j, won in results] + byes
        worst[prompt_id] = [j if won else i for i, j, won in results] + byes

    # Later rounds: both brackets of every prompt in one judge call per round.
    while any(len(v) > 1 for v in best.values()) or any(len(v) > 1 for v in worst.values()):
        round_matches: list[Match] = []
        for prompt_id in entrants:
            for bracket in (best, worst):
                matches, _ = _pairings(bracket[prompt_id]) if len(bracket[prompt_id]) > 1 else ([], [])
                round_matches += [(prompt_id, i, j) for i, j in matches]
        play(round_matches)
        for prompt_id in entrants:
            for bracket, winner_advances in ((best, True), (worst, False)):
                if len(bracket[prompt_id]) < 2:
                    continue
                matches, byes = _pairings(bracket[prompt_id])
                advancing = []
                for i, j in matches:
                    won = _beats(i, j, played[prompt_id][(i, j)])
                    advancing.append((i if won else j) if winner_advances else (j if won else i))
                bracket[prompt_id] = advancing + byes

    # Final: best vs worst, reusing their match if they already met.
    finals: list[Match] = []
    for prompt_id in entrants:
        b, w = best[prompt_id][0], worst[prompt_id][0]
        if b != w and (b, w) not in played[prompt_id] and (w, b) not in played[prompt_id]:
            finals.append((prompt_id, b, w))
    play(finals)

    results: dict[str, Result] = {}
    for prompt_id, indices in entrants.items():
        b, w = best[prompt_id][0], worst[prompt_id][0]
        logit = None
        if b != w:
            logit = played[prompt_id][(b, w)] if (b, w) in played[prompt_id] else -played[prompt_id][(w, b)]
        results[prompt_id] = Result(
            best_idx=b, worst_idx=w, logit=logit,
            confidence=None if logit is None else sigmoid(logit),
            comparisons=len(played[prompt_id]), n_candidates=len(indices),
        )
    return results
