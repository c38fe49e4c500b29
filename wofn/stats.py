"""Paired differences between reward models, with 95% intervals that tell a gain from noise.

Two models evaluated on the same pairs are compared pair by pair: each pair is correct (1), a tie
(0.5) or wrong (0) for each model, and the difference of a metric (accuracy, or length-balanced
accuracy: the mean of the accuracy where the chosen response is longer and where it is shorter)
is taken over the same pairs. The interval is a percentile bootstrap:

- one seed (one model per side): the pairs are resampled with replacement, the same indices for
  both models (a paired bootstrap), `n_boot` times;
- several seeds (one model per side and seed, each seed's pair of models on the same pairs):
  first the seeds are resampled, then the pairs within each drawn seed, so the interval holds
  both the evaluation set's noise and the training seed's.

A difference whose interval contains 0 is "within noise". Everything is seeded: the same inputs
give the same interval.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRICS = ("accuracy", "length_balanced_accuracy")


def correct_from_margins(margins: Sequence[float]) -> list[float]:
    """1 where margin > 0 (the model agrees with the human), 0.5 for a tie, else 0. The one definition
    of "correct" (wofn.evaluation's metrics use it too)."""
    return [1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins]


def length_signs(pairs: Sequence[dict]) -> list[int]:
    """+1 where the chosen response (stripped, in characters) is longer than the rejected one, -1 where
    shorter, 0 equal. The one definition of a pair's length side (wofn.evaluation's metrics use it too)."""
    signs = []
    for p in pairs:
        diff = len(p["chosen"].strip()) - len(p["rejected"].strip())
        signs.append((diff > 0) - (diff < 0))
    return signs


def _metric(correct: np.ndarray, signs: np.ndarray, metric: str) -> np.ndarray:
    """The metric of each row of `correct` [..., n] (signs [..., n] align with it)."""
    if metric == "accuracy":
        return correct.mean(-1)
    sides = []
    for side in (1, -1):
        mask = signs == side
        count = mask.sum(-1)
        sides.append(np.where(count > 0, (correct * mask).sum(-1) / np.maximum(count, 1), np.nan))
    return np.nanmean(np.stack(sides), 0)


def metric(margins: Sequence[float], signs: Sequence[int], name: str) -> float:
    """One model's metric (`METRICS`) on pairs from its per-pair margins and the pairs' `length_signs`."""
    if name not in METRICS:
        raise ValueError(f"metric {name!r}: expected one of {', '.join(METRICS)}")
    return float(_metric(np.asarray(correct_from_margins(margins)), np.asarray(signs, dtype=int), name))


def paired_difference(correct_a: Sequence[Sequence[float]], correct_b: Sequence[Sequence[float]],
                      signs: Sequence[int] | Sequence[Sequence[int]] | None = None,
                      metric: str = "accuracy", n_boot: int = 2000, seed: int = 0) -> dict:
    """Metric of B minus metric of A (mean over seeds), with a 95% bootstrap interval.

    `correct_a[s][i]` / `correct_b[s][i]`: seed s's models on pair i (`correct_from_margins`); every
    seed's two lists have the same length (the same pairs), seeds may differ in pairs. `signs`:
    `length_signs` of the pairs (one list for all seeds, or one per seed); needed for
    length_balanced_accuracy. Returns {difference, low, high, within_noise, a, b, seeds, n}.
    """
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r}: expected one of {', '.join(METRICS)}")
    if not correct_a or len(correct_a) != len(correct_b):
        raise ValueError(f"need the same number of seeds on both sides, got {len(correct_a)} and {len(correct_b)}")
    seeds = len(correct_a)
    if signs is None:
        if metric != "accuracy":
            raise ValueError(f"{metric} needs the pairs' length signs")
        signs = [[0] * len(a) for a in correct_a]
    elif signs and not isinstance(signs[0], (list, tuple, np.ndarray)):
        signs = [signs] * seeds
    a = [np.asarray(x, dtype=float) for x in correct_a]
    b = [np.asarray(x, dtype=float) for x in correct_b]
    sg = [np.asarray(x, dtype=int) for x in signs]
    for s in range(seeds):
        if not len(a[s]) or len(a[s]) != len(b[s]) or len(a[s]) != len(sg[s]):
            raise ValueError(f"seed {s}: {len(a[s])} and {len(b[s])} pairs compared, {len(sg[s])} length signs")
    point_a = float(np.mean([_metric(a[s], sg[s], metric) for s in range(seeds)]))
    point_b = float(np.mean([_metric(b[s], sg[s], metric) for s in range(seeds)]))
    rng = np.random.default_rng(seed)
    draws = np.zeros(n_boot)
    seed_draws = rng.integers(0, seeds, size=(n_boot, seeds)) if seeds > 1 else np.zeros((n_boot, 1), dtype=int)
    for s in range(seeds):  # every bootstrap replicate that drew seed s resamples its pairs
        n = len(a[s])
        idx = rng.integers(0, n, size=(n_boot, n))
        diff = _metric(b[s][idx], sg[s][idx], metric) - _metric(a[s][idx], sg[s][idx], metric)  # [n_boot]
        draws += (seed_draws == s).sum(1) * np.nan_to_num(diff)
    draws /= seed_draws.shape[1]
    low, high = (float(v) for v in np.percentile(draws, [2.5, 97.5]))
    return {"metric": metric, "difference": point_b - point_a, "low": low, "high": high,
            "within_noise": low <= 0 <= high, "a": point_a, "b": point_b, "seeds": seeds,
            "n": int(sum(len(x) for x in a))}


def describe(result: dict, scale: float = 100.0, unit: str = " points") -> str:
    """'+2.1 points [95% CI -0.4, +4.6], within noise'."""
    text = (f"{scale * result['difference']:+.1f}{unit} [95% CI {scale * result['low']:+.1f}, "
            f"{scale * result['high']:+.1f}]")
    return text + (", within noise" if result["within_noise"] else "")
