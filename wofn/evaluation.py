"""Evaluating a reward model on human preference pairs.

Everything is computed from one number per pair, the margin r(chosen) - r(rejected) (a logit:
> 0 means the model prefers the response the human chose). `metrics_from_margins` is pure, so
every reported number can be checked by hand; `margins` is the only part that runs a model.

Metrics (ties, margin == 0, count half wherever "correct" is counted):
- accuracy: share of pairs where the model agrees with the human.
- high_confidence_accuracy: accuracy on the `high_confidence_fraction` of pairs with the largest
  |margin| (ceil(fraction * n) pairs, at least 1; equal |margin| keeps input order).
- mean_margin; mean_confidence: mean sigmoid(margin), the probability given to the human choice.
- calibration_error (ECE): per pair p = sigmoid(|margin|) is the probability the model gives its
  own preferred response, correct = 1 if margin > 0, 0.5 if 0, else 0; p is put in one of
  `calibration_bins` equal-width bins over [0.5, 1] (the last bin includes 1); ECE = sum over
  bins of (bin count / n) * |mean correct - mean p|.
- length_balanced_accuracy: mean of the accuracy on pairs whose chosen response (stripped) is
  longer than the rejected one and on pairs where it is shorter; equal lengths are left out. A
  length-only judge scores exactly 0.5. When one side has no pairs it is the other side's accuracy,
  and `length_balanced_sides` (2, 1 or 0) says how many sides it averages (0: None).
- chosen_longer_accuracy / chosen_shorter_accuracy (with _n): the two sides themselves (None when
  a side has no pairs). A model that learned "shorter is better" is high on the second and low on
  the first; length_balanced_accuracy is their mean.
- longer_wins_accuracy / shorter_wins_accuracy: what always picking the longer / shorter response
  would score (equal lengths count half). They depend only on the pairs.
- by_source: {source: {n, accuracy, length_balanced_accuracy}} by the pairs' `source` key
  (missing -> "unknown").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from wofn import models, pairwise, scoring, stats
from wofn.tournament import sigmoid

DEFAULT_MAX_LENGTH = 256


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _length_sides(correct: list[float], length_diff: list[int]) -> tuple[float | None, float | None]:
    """(accuracy where chosen is longer, accuracy where chosen is shorter); None for a side without pairs."""
    return (_mean([c for c, d in zip(correct, length_diff) if d > 0]),
            _mean([c for c, d in zip(correct, length_diff) if d < 0]))


def _length_balanced(correct: list[float], length_diff: list[int]) -> tuple[float | None, int]:
    """(mean of the accuracy where chosen is longer and where it is shorter, number of sides used)."""
    present = [s for s in _length_sides(correct, length_diff) if s is not None]
    return _mean(present), len(present)


def metrics_from_margins(margins: list[float], pairs: list[dict], high_confidence_fraction: float = 0.25,
                         calibration_bins: int = 10) -> dict:
    """Accuracy, confidence, calibration and length-controlled metrics from per-pair margins.

    `margins[i]` = r(chosen) - r(rejected) for `pairs[i]` (needs `chosen`, `rejected`, optional
    `source`). See the module docstring for the exact definitions.
    """
    n = len(pairs)
    if n == 0:
        raise ValueError("no evaluation pairs")
    if len(margins) != n:
        raise ValueError(f"{len(margins)} margins for {n} pairs")
    if not 0 < high_confidence_fraction <= 1:
        raise ValueError(f"high_confidence_fraction must be in (0, 1], got {high_confidence_fraction}")
    if calibration_bins < 1:
        raise ValueError(f"calibration_bins must be >= 1, got {calibration_bins}")
    margins = [float(m) for m in margins]
    bad = [i for i, m in enumerate(margins) if math.isnan(m)]
    if bad:
        raise ValueError(f"margin is NaN for {len(bad)} pair(s), first at index {bad[0]}")

    correct = stats.correct_from_margins(margins)
    length_diff = stats.length_signs(pairs)  # only the sign is used: chosen longer (+1), shorter (-1), equal (0)

    # the most confident pairs: largest |margin| first, equal |margin| in input order (sort is stable)
    k = max(1, math.ceil(high_confidence_fraction * n - 1e-9))
    confident = sorted(range(n), key=lambda i: -abs(margins[i]))[:k]

    # expected calibration error over equal-width bins of p = sigmoid(|margin|) in [0.5, 1]
    bins: list[list[tuple[float, float]]] = [[] for _ in range(calibration_bins)]
    for m, c in zip(margins, correct):
        p = sigmoid(abs(m))
        index = min(calibration_bins - 1, int((p - 0.5) * 2 * calibration_bins))
        bins[index].append((p, c))
    ece = sum(len(b) / n * abs(_mean([c for _, c in b]) - _mean([p for p, _ in b])) for b in bins if b)

    balanced, sides = _length_balanced(correct, length_diff)
    longer_side, shorter_side = _length_sides(correct, length_diff)

    by_source: dict[str, dict] = {}
    groups: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        groups.setdefault(str(pair.get("source") or "unknown"), []).append(i)
    for source, idx in groups.items():
        by_source[source] = {
            "n": len(idx),
            "accuracy": _mean([correct[i] for i in idx]),
            "length_balanced_accuracy": _length_balanced([correct[i] for i in idx], [length_diff[i] for i in idx])[0],
        }

    return {
        "n": n,
        "accuracy": _mean(correct),
        "high_confidence_accuracy": _mean([correct[i] for i in confident]),
        "high_confidence_n": k,
        "high_confidence_fraction": high_confidence_fraction,
        "mean_margin": _mean(margins),
        "mean_confidence": _mean([sigmoid(m) for m in margins]),
        "calibration_error": ece,
        "calibration_bins": calibration_bins,
        "length_balanced_accuracy": balanced,
        "length_balanced_sides": sides,
        "chosen_longer_accuracy": longer_side,
        "chosen_longer_n": sum(1 for d in length_diff if d > 0),
        "chosen_shorter_accuracy": shorter_side,
        "chosen_shorter_n": sum(1 for d in length_diff if d < 0),
        "longer_wins_accuracy": _mean(stats.correct_from_margins(length_diff)),
        "shorter_wins_accuracy": _mean(stats.correct_from_margins([-d for d in length_diff])),
        "by_source": by_source,
    }


def margins(rm: models.LoadedModel, pairs: list[dict], max_length: int, token_budget: int | None = None) -> list[float]:
    """r(chosen) - r(rejected) per pair, in input order.

    A pairwise preference model (manifest kind `pairwise_preference_model`) gives instead the logit
    of P(chosen > rejected), averaged over both presentation orders.
    """
    if models.read_manifest(rm.path).get("kind") == pairwise.KIND:
        return [float(m) for m in pairwise.pair_margins(rm, pairs, max_length, token_budget)]
    n = len(pairs)
    prompts = [p["prompt"] for p in pairs] * 2
    responses = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    rewards = scoring.score(rm, prompts, responses, max_length, token_budget)
    return [rewards[i] - rewards[n + i] for i in range(n)]


def evaluate_loaded(rm: models.LoadedModel, pairs: list[dict], max_length: int | None = None,
                    token_budget: int | None = None, high_confidence_fraction: float = 0.25,
                    with_margins: bool = False) -> dict:
    """`{"model", "revision", **metrics_from_margins(...)}` for a loaded model (and `margins`, the
    per-pair margins in input order, with `with_margins`: what paired comparisons need).

    `max_length` defaults to the model folder's manifest.json `max_length`, else 256.
    """
    if not pairs:
        raise ValueError("no evaluation pairs")
    if not 0 < high_confidence_fraction <= 1:  # fail before running the model
        raise ValueError(f"high_confidence_fraction must be in (0, 1], got {high_confidence_fraction}")
    max_length = max_length or models.read_manifest(rm.path).get("max_length", DEFAULT_MAX_LENGTH)
    values = margins(rm, pairs, max_length, token_budget)
    return {"model": rm.name, "revision": rm.revision,
            **metrics_from_margins(values, pairs, high_confidence_fraction),
            **({"margins": values} if with_margins else {})}


def evaluate(model: str, pairs: list[dict], device: str = "cpu", max_length: int | None = None,
             high_confidence_fraction: float = 0.25, with_margins: bool = False) -> dict:
    return evaluate_loaded(models.load_reward_model(model, device=device), pairs, max_length,
                           high_confidence_fraction=high_confidence_fraction, with_margins=with_margins)


def compare(results: list[dict], pair_sets: dict[str, list[dict]]) -> list[dict]:
    """Every model minus the first one, per pairs file, on the same pairs: accuracy and length-balanced
    accuracy differences with 95% paired-bootstrap intervals (`wofn.stats.paired_difference`).

    `results`: evaluations with `margins`, `pairs` (the pairs file's name, a key of `pair_sets`) and
    optionally `group` (default: `model`), in model order. A group is one model trained with several
    seeds (one result per seed); the first group seen for a pairs file is the baseline, and a group is
    compared with it seed by seed, in order (the interval then holds the seeds' noise too), so groups
    must have as many seeds as the baseline."""
    groups: dict[str, dict[str, list[dict]]] = {}  # pairs file -> group -> its results, in order
    for result in results:
        groups.setdefault(result["pairs"], {}).setdefault(result.get("group", result["model"]), []).append(result)
    rows = []
    for name, by_group in groups.items():
        (base_label, base), *others = by_group.items()
        signs = stats.length_signs(pair_sets[name])
        for label, members in others:
            if len(members) != len(base):
                raise ValueError(f"{label}: {len(members)} seeds to compare with {len(base)} of {base_label}; "
                                 "give every --model the same number of seeds")
            row = {"pairs": name, "model": label, "baseline": base_label, "n": len(signs), "seeds": len(members)}
            for metric in stats.METRICS:
                row[metric] = stats.paired_difference([stats.correct_from_margins(r["margins"]) for r in base],
                                                      [stats.correct_from_margins(r["margins"]) for r in members],
                                                      signs, metric)
            rows.append(row)
    return rows


def format_comparison(rows: list[dict]) -> str:
    """The paired differences as text lines, one per (model, pairs file)."""
    if not rows:
        return ""
    out = ["paired differences to the first model (same pairs; 95% bootstrap interval over the pairs, and over "
           "the seeds where a model has several; \"within noise\" when it contains 0):"]
    for row in rows:
        seeds = f", {row['seeds']} seeds" if row.get("seeds", 1) > 1 else ""
        out.append(f"  {row['model']} - {row['baseline']} on {row['pairs']} (n={row['n']}{seeds}): accuracy "
                   f"{stats.describe(row['accuracy'])}; len-balanced accuracy "
                   f"{stats.describe(row['length_balanced_accuracy'])}")
    return "\n".join(out)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _signed(value: float) -> str:
    """+0.717; tiny margins (a barely trained or pairwise model) in scientific form, not +0.000."""
    return f"{value:+.1e}" if 0 < abs(value) < 5e-4 else f"{value:+.3f}"


def format_table(results: list[dict]) -> str:
    """A fixed-width text table: per pairs file, the two length baselines, then one row per model.

    The baselines are rows of their own (`[longer wins]`, `[shorter wins]`), printed once per pairs
    file, so a length heuristic is never read as a reward model's score.
    """
    header = ["model", "pairs", "n", "accuracy", "len-balanced acc", "chosen longer", "chosen shorter", "high-conf acc",
              "mean margin", "ECE"]
    rows: list[list[str]] = []
    one_sided = False
    fractions: list[float] = []
    by_file: dict[str, list[dict]] = {}
    for result in results:
        by_file.setdefault(str(result.get("pairs", "-")), []).append(result)
    for pairs_name, group in by_file.items():
        first = group[0]
        for label, key, sides in (("[longer wins]", "longer_wins_accuracy", ("100.0%", "0.0%")),
                                  ("[shorter wins]", "shorter_wins_accuracy", ("0.0%", "100.0%"))):
            rows.append([label, pairs_name, str(first["n"]), _pct(first[key]), "50.0%", *sides, "-", "-", "-"])
        for r in group:
            balanced = _pct(r.get("length_balanced_accuracy"))
            if r.get("length_balanced_sides", 2) < 2 and r.get("length_balanced_accuracy") is not None:
                balanced += "*"
                one_sided = True
            fraction = r.get("high_confidence_fraction")
            if fraction is not None and fraction not in fractions:
                fractions.append(fraction)
            ece = r.get("calibration_error")
            rows.append([str(r["model"]), pairs_name, str(r["n"]), _pct(r["accuracy"]), balanced,
                         _pct(r.get("chosen_longer_accuracy")), _pct(r.get("chosen_shorter_accuracy")),
                         _pct(r.get("high_confidence_accuracy")), _signed(r["mean_margin"]),
                         "-" if ece is None else f"{ece:.3f}"])
    widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header))]
    left = {0, 1}  # text columns left-aligned, numbers right-aligned

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(w) if c in left else cell.rjust(w)
                         for c, (cell, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)] + [line(row) for row in rows]
    notes = ["len-balanced acc: mean of the accuracy where the chosen response is longer (chosen longer) and "
             "where it is shorter (chosen shorter); a length-only judge scores 50.0%"]
    if fractions:
        notes.append("high-conf acc: accuracy on the " + " / ".join(f"{100 * f:g}%" for f in fractions)
                     + " of pairs with the largest |margin|")
    notes.append("ECE: expected calibration error of sigmoid(|margin|); [longer wins] / [shorter wins]: "
                 "always pick the longer / shorter response")
    if one_sided:
        notes.append("*: the pairs hold only one length direction; this is that side's accuracy")
    return "\n".join(out + [""] + notes)
