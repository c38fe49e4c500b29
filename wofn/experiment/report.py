"""The experiment's results: tables (mean ± sd over seeds), plots, and the markdown report.

Pure functions of the results the runner wrote (`Experiment.results()`), so a report can be
rebuilt at any time, also from a run that is still going (it says how many cells are in).
Differences to the base are paired by seed: student of seed s minus base of seed s.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from matplotlib.figure import Figure

from wofn import stats
from wofn.experiment.config import ExperimentConfig

METRICS = (("accuracy", "acc"), ("length_balanced_accuracy", "len-bal acc"),
           ("high_confidence_accuracy", "high-conf acc"))
# the two sides of the length-balanced accuracy (evaluations before they were recorded lack them)
SIDES = (("chosen_longer_accuracy", "acc, chosen longer"), ("chosen_shorter_accuracy", "acc, chosen shorter"))
DISCUSSION_MARKER = "<!-- discussion: kept when the report is regenerated -->"


def mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def fmt(values: list[float], scale: float = 100.0, signed: bool = False) -> str:
    m, sd = mean_sd(values)
    if m is None:
        return "–"
    text = f"{scale * m:+.1f}" if signed else f"{scale * m:.1f}"
    return text + (f" ± {scale * sd:.1f}" if sd is not None else "")


def _longer_shorter(row: dict) -> str:
    """The pair set's chosen-longer / chosen-shorter shares ("3% / 55%"; equal lengths are the rest)."""
    longer = f"{100 * row['chosen_longer_share']:.0f}%"
    return longer if row.get("chosen_shorter_share") is None else f"{longer} / {100 * row['chosen_shorter_share']:.0f}%"


def arms_table(results: dict, config: ExperimentConfig) -> list[dict]:
    """One row per (strategy, N, filter) with trained students: metrics and paired deltas over seeds."""
    base = {b["seed"]: b for b in results["bases"]}
    by_arm: dict[tuple, list[dict]] = {}
    for cell in results["cells"]:
        by_arm.setdefault((cell["strategy"], cell["n"], cell["filter"], cell.get("length", "none")), []).append(cell)
    rows = []
    for arm in config.train:
        cells = by_arm.get(arm, [])
        if not cells:
            continue
        row = {"strategy": arm[0], "n": arm[1], "filter": arm[2], "length": arm[3], "seeds": len(cells),
               "synthetic_pairs": statistics.mean(c["mix"]["synthetic_pairs"] for c in cells),
               "chosen_longer_share": statistics.mean(c["pairs"]["chosen_longer_share"] for c in cells),
               "chosen_shorter_share": (statistics.mean(c["pairs"]["chosen_shorter_share"] for c in cells)
                                        if all("chosen_shorter_share" in c["pairs"] for c in cells) else None),
               "mean_confidence": statistics.mean(c["pairs"]["mean_confidence"] for c in cells)}
        for key, _ in METRICS + SIDES:
            row[key] = [c.get(key) for c in cells]
            row[f"delta_{key}"] = [c[key] - base[c["seed"]][key] for c in cells
                                   if c["seed"] in base and c.get(key) is not None
                                   and base[c["seed"]].get(key) is not None]
        row.update(intervals(cells, base))
        rows.append(row)
    return rows


def intervals(cells: list[dict], base: dict[int, dict]) -> dict:
    """{"ci_accuracy": ..., "ci_length_balanced_accuracy": ...}: the students minus their bases (paired by
    seed, on the same evaluation pairs) with 95% bootstrap intervals over seeds and pairs
    (`wofn.stats.paired_difference`); empty when results predate the stored per-pair margins."""
    paired = [(base[c["seed"]], c) for c in cells if c["seed"] in base]
    if not paired or any("margins" not in b or "margins" not in c or "length_signs" not in b for b, c in paired):
        return {}
    a = [stats.correct_from_margins(b["margins"]) for b, _ in paired]
    b = [stats.correct_from_margins(c["margins"]) for _, c in paired]
    signs = [b_["length_signs"] for b_, _ in paired]
    return {f"ci_{metric}": stats.paired_difference(a, b, signs, metric) for metric in stats.METRICS}


def fmt_delta(row: dict, key: str) -> str:
    """The paired Δ: mean [95% CI] with "within noise" marked, else mean ± sd over seeds."""
    ci = row.get(f"ci_{key}")
    if ci is None:
        return fmt(row[f"delta_{key}"], signed=True)
    text = f"{100 * ci['difference']:+.1f} [{100 * ci['low']:+.1f}, {100 * ci['high']:+.1f}]"
    return text + (" (noise)" if ci["within_noise"] else "")


def _base_row(results: dict) -> dict:
    return {key: [b.get(key) for b in results["bases"]] for key, _ in METRICS + SIDES}


def sides_markdown(results: dict, config: ExperimentConfig) -> list[str]:
    """Accuracy on the evaluation pairs whose chosen response is longer / shorter, base and every arm.

    Empty when the evaluations predate these metrics."""
    bases = results["bases"]
    if not bases or any(b.get("chosen_longer_accuracy") is None for b in bases):
        return []
    b0, base = bases[0], _base_row(results)
    lines = [f"The two halves of the length-balanced accuracy: accuracy on the {b0['chosen_longer_n']} evaluation "
             f"pairs whose chosen response is longer and on the {b0['chosen_shorter_n']} where it is shorter "
             "(in characters; mean ± sd over seeds, Δ paired by seed). A model that learned \"shorter is better\" "
             "is high on the second and low on the first.", "",
             "| model | strategy | N | filter | length control | acc, chosen longer | Δ | acc, chosen shorter | Δ |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| **base** | – | – | – | – | {fmt(base['chosen_longer_accuracy'])} | – | "
             f"{fmt(base['chosen_shorter_accuracy'])} | – |"]
    for row in arms_table(results, config):
        lines.append(f"| student | {row['strategy']} | {row['n']} | {row['filter']} | {row['length']} | "
                     f"{fmt(row['chosen_longer_accuracy'])} | "
                     f"{fmt(row['delta_chosen_longer_accuracy'], signed=True)} | "
                     f"{fmt(row['chosen_shorter_accuracy'])} | "
                     f"{fmt(row['delta_chosen_shorter_accuracy'], signed=True)} |")
    return lines


def results_markdown(results: dict, config: ExperimentConfig) -> list[str]:
    bases = results["bases"]
    lines = []
    if not bases:
        return ["No base model evaluated yet."]
    b0 = bases[0]
    base = _base_row(results)
    lines += [f"Evaluation: {b0['eval_n']} held-out human pairs. Accuracy in %, mean ± sd over seeds; Δ is paired "
              "by seed (student of seed s minus base of seed s). len-bal acc: mean of the accuracy where the chosen "
              "response is longer and where it is shorter (any length-only rule scores 50.0). "
              f"high-conf acc: accuracy on the {100 * b0['high_confidence_fraction']:g}% of pairs with the largest "
              "|margin|. "
              "chosen longer / shorter: share of the student's synthetic pairs whose chosen response is the longer / "
              "the shorter one (policy tokens; equal lengths are the rest). Where the per-pair margins were "
              "stored, Δ acc and Δ len-bal are the mean difference with a 95% bootstrap interval over seeds and "
              "evaluation pairs [low, high], marked (noise) when the interval contains 0.",
              "",
              "| model | strategy | N | filter | length control | seeds | synthetic pairs | chosen longer / shorter | "
              "acc | Δ acc | len-bal acc | Δ len-bal | high-conf acc | Δ high-conf |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
              f"| **base** (human pairs only) | – | – | – | – | {len(bases)} | 0 | – | {fmt(base['accuracy'])} | – | "
              f"{fmt(base['length_balanced_accuracy'])} | – | {fmt(base['high_confidence_accuracy'])} | – |",
              *([f"| **teacher** (ensemble of seeds {', '.join(map(str, results['teacher']['seeds']))}) "
                 "| – | – | – | – | 1 | 0 | – | "
                 f"{100 * results['teacher']['accuracy']:.1f} | – | "
                 f"{100 * results['teacher']['length_balanced_accuracy']:.1f} | – | "
                 f"{100 * results['teacher']['high_confidence_accuracy']:.1f} | – |"]
                if results.get("teacher") else []),
              f"| [longer response wins] | – | – | – | – | – | – | – | {100 * b0['longer_wins_accuracy']:.1f} | "
              "– | 50.0 | – | – | – |",
              f"| [shorter response wins] | – | – | – | – | – | – | – | {100 * b0['shorter_wins_accuracy']:.1f} | "
              "– | 50.0 | – | – | – |"]
    for row in arms_table(results, config):
        lines.append(
            f"| student | {row['strategy']} | {row['n']} | {row['filter']} | {row['length']} | {row['seeds']} | "
            f"{row['synthetic_pairs']:.0f} | "
            f"{_longer_shorter(row)} | {fmt(row['accuracy'])} | {fmt_delta(row, 'accuracy')} | "
            f"{fmt(row['length_balanced_accuracy'])} | {fmt_delta(row, 'length_balanced_accuracy')} | "
            f"{fmt(row['high_confidence_accuracy'])} | {fmt(row['delta_high_confidence_accuracy'], signed=True)} |")
    return lines


def _pooled(first: dict, second: dict) -> dict:
    """One model's evaluation on two held-out sets taken as one: margins and length signs joined, the
    metrics recomputed from them (the others, which need the model, left out)."""
    margins, signs = first["margins"] + second["margins"], first["length_signs"] + second["length_signs"]
    return {"margins": margins, "length_signs": signs, "eval_n": len(margins),
            **{name: stats.metric(margins, signs, name) for name in stats.METRICS}}


def on_held_out_set(results: dict, which: str) -> dict:
    """`results` with every base's and student's metrics replaced by those on another held-out set:
    "holdout" (the `human_holdout` pairs) or "pooled" (the evaluation pairs and those, as one set)."""
    def view(model: dict) -> dict:
        other = model["holdout"] if which == "holdout" else _pooled(model, model["holdout"])
        return {**{k: v for k, v in model.items() if k not in {key for key, _ in METRICS + SIDES}}, **other}

    return {**results, "bases": [view(b) for b in results["bases"]], "cells": [view(c) for c in results["cells"]],
            "teacher": None}


def held_out_markdown(results: dict, config: ExperimentConfig) -> list[str]:
    """Base and students on each held-out set (the evaluation pairs, the human_holdout pairs, both as one):
    accuracy and length-balanced accuracy with the paired Δ and its 95% interval. Empty without
    `human_holdout` evaluations."""
    models = results["bases"] + results["cells"]
    if not results["bases"] or any("holdout" not in m or "margins" not in m for m in models):
        return []
    sets = [("evaluation pairs", results), ("human_holdout pairs", on_held_out_set(results, "holdout")),
            ("both, as one set", on_held_out_set(results, "pooled"))]
    lines = ["Every model on each held-out set: the evaluation pairs, the `human_holdout` share of the human pairs "
             "(no model trained on them; chosen by pair-id hash before any result), and both taken as one set "
             "(declared before the run). Δ: paired by seed, 95% bootstrap interval over seeds and pairs, (noise) "
             "when it contains 0.", "",
             "| held-out set | pairs | model | length control | acc | Δ acc | len-bal acc | Δ len-bal |",
             "|---|---|---|---|---|---|---|---|"]
    for name, view in sets:
        base = _base_row(view)
        lines.append(f"| {name} | {view['bases'][0]['eval_n']} | **base** | – | {fmt(base['accuracy'])} | – | "
                     f"{fmt(base['length_balanced_accuracy'])} | – |")
        for row in arms_table(view, config):
            lines.append(f"| {name} | | student {row['strategy']} N={row['n']} {row['filter']} | {row['length']} | "
                         f"{fmt(row['accuracy'])} | {fmt_delta(row, 'accuracy')} | "
                         f"{fmt(row['length_balanced_accuracy'])} | {fmt_delta(row, 'length_balanced_accuracy')} |")
    return lines


def _grouped_stats(results: dict) -> dict[tuple, dict]:
    """Pair statistics by (strategy, N, filter, length), averaged over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for s in results["pair_stats"]:
        groups.setdefault((s["strategy"], s["n"], s["filter"], s.get("length", "none")), []).append(s)
    out = {}
    for key, rows in groups.items():
        out[key] = {}
        for field_name in ("pairs", "chosen_longer_share", "chosen_shorter_share", "mean_length_gap", "mean_confidence",
                           "chosen_logprob_mean", "rejected_logprob_mean"):
            values = [r[field_name] for r in rows if r[field_name] is not None]
            out[key][field_name] = statistics.mean(values) if values else float("nan")
    return out


def pair_stats_markdown(results: dict) -> list[str]:
    """The synthetic pair sets of the whole grid (no training needed): size, length balance, likelihood.

    One table for the plain pair sets, and (when the grid has length controls) one with each length
    control's pair count and chosen-longer / chosen-shorter shares beside it.
    """
    stats = _grouped_stats(results)
    lengths = list(dict.fromkeys(key[3] for key in stats))
    lines = ["| strategy | N | filter | pairs | chosen longer | chosen shorter | mean length gap (tokens) | "
             "mean confidence | chosen log-lik / token | rejected log-lik / token |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (strategy, n, filter_name, length), st in stats.items():
        if length != "none":
            continue
        lines.append(f"| {strategy} | {n} | {filter_name} | {st['pairs']:.0f} | "
                     f"{100 * st['chosen_longer_share']:.0f}% | {100 * st['chosen_shorter_share']:.0f}% | "
                     f"{st['mean_length_gap']:+.1f} | {st['mean_confidence']:.3f} | "
                     f"{st['chosen_logprob_mean']:.3f} | {st['rejected_logprob_mean']:.3f} |")
    controls = [length for length in lengths if length != "none"]
    if controls:
        lines += ["",
                  "With length control: pairs (chosen longer % / chosen shorter %; equal lengths are the rest).", "",
                  "| strategy | N | filter | none | " + " | ".join(controls) + " |",
                  "|---|---|---|---|" + "---|" * len(controls)]
        arms = list(dict.fromkeys(key[:3] for key in stats))
        for arm in arms:
            cells = []
            for length in ["none", *controls]:
                st = stats.get((*arm, length))
                cells.append("–" if st is None else f"{st['pairs']:.0f} ({100 * st['chosen_longer_share']:.0f} / "
                             f"{100 * st['chosen_shorter_share']:.0f})")
            lines.append(f"| {arm[0]} | {arm[1]} | {arm[2]} | " + " | ".join(cells) + " |")
    return lines


# ---- plots

def _base_band(ax, results: dict, key: str = "accuracy") -> None:
    m, sd = mean_sd([b[key] for b in results["bases"]])
    if m is None:
        return
    ax.axhline(100 * m, color="grey", linestyle="--", label="base")
    if sd:
        ax.axhspan(100 * (m - sd), 100 * (m + sd), color="grey", alpha=0.15)


def plot_accuracy_vs_n(results: dict, config: ExperimentConfig) -> Figure:
    """Student accuracy (and length-balanced accuracy) vs N, one line per (strategy, filter) trained at several N."""
    fig = Figure(figsize=(9, 3.6))
    axes = fig.subplots(1, 2)
    rows = arms_table(results, config)
    for ax, (key, label) in zip(axes, METRICS[:2]):
        series: dict[tuple, list] = {}
        for row in rows:
            series.setdefault((row["strategy"], row["filter"], row["length"]), []).append(row)
        for (strategy, filter_name, length), arm_rows in series.items():
            arm_rows.sort(key=lambda r: r["n"])
            xs = [r["n"] for r in arm_rows]
            ms = [100 * mean_sd(r[key])[0] for r in arm_rows]
            sds = [100 * (mean_sd(r[key])[1] or 0) for r in arm_rows]
            label_text = f"{strategy}, {filter_name}" + ("" if length == "none" else f", {length}")
            ax.errorbar(xs, ms, yerr=sds, marker="o", capsize=3, label=label_text)
        _base_band(ax, results, key)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(config.ns), [str(n) for n in config.ns])
        ax.set_xlabel("N (candidates per prompt)")
        ax.set_ylabel(f"{label} (%)")
        ax.set_title(f"student {label} vs N")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_arms(results: dict, config: ExperimentConfig) -> Figure:
    """Every trained arm's accuracy and length-balanced accuracy (mean ± sd) beside the base."""
    rows = arms_table(results, config)
    fig = Figure(figsize=(max(6, 0.7 * len(rows) + 2), 4))
    ax = fig.subplots()
    labels = ["base"] + [f"{r['strategy']}\nN={r['n']} {r['filter']}"
                         + ("" if r["length"] == "none" else f"\n{r['length']}")
                         for r in rows]
    base = _base_row(results)
    for offset, (key, label) in zip((-0.2, 0.2), METRICS[:2]):
        values = [base[key]] + [r[key] for r in rows]
        ms = [100 * (mean_sd(v)[0] or 0) for v in values]
        sds = [100 * (mean_sd(v)[1] or 0) for v in values]
        ax.bar([i + offset for i in range(len(values))], ms, width=0.4, yerr=sds, capsize=2, label=label)
    ax.axhline(50, color="black", linewidth=0.5)
    ax.set_xticks(range(len(labels)), labels, fontsize=6, rotation=60, ha="right")
    ax.set_ylim(40, max(70, ax.get_ylim()[1]))
    ax.set_ylabel("%")
    ax.set_title("students per strategy / N / filter vs base")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_pair_logprob_vs_n(results: dict, config: ExperimentConfig) -> Figure:
    """The pairs' mean per-token log-likelihood under the policy vs N (filter none), chosen and rejected."""
    fig = Figure(figsize=(9, 3.6))
    axes = fig.subplots(1, 2)
    filter_name = "none" if "none" in config.filters else config.filters[0]
    for strategy in config.strategies:
        rows = [s for s in results["pair_stats"] if s["strategy"] == strategy and s["filter"] == filter_name
                and s.get("length", "none") == "none"]
        for ax, side in zip(axes, ("chosen", "rejected")):
            xs, ys = [], []
            for n in config.ns:
                values = [r[f"{side}_logprob_mean"] for r in rows
                          if r["n"] == n and r[f"{side}_logprob_mean"] is not None]
                if values:
                    xs.append(n)
                    ys.append(statistics.mean(values))
            ax.plot(xs, ys, marker="o", label=strategy)
    for ax, side in zip(axes, ("chosen", "rejected")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(config.ns), [str(n) for n in config.ns])
        ax.set_xlabel("N")
        ax.set_ylabel("mean log-likelihood per token")
        ax.set_title(f"{side} responses (filter: {filter_name})")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


PLOTS = {"accuracy_vs_n.png": plot_accuracy_vs_n, "arms.png": plot_arms,
         "pair_logprob_vs_n.png": plot_pair_logprob_vs_n}


def write_plots(results: dict, config: ExperimentConfig, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, plot in PLOTS.items():
        fig = plot(results, config)
        fig.savefig(folder / name, dpi=110)
        written.append(folder / name)
    return written


def write_report(results: dict, config: ExperimentConfig, path: Path, command: str, header: dict) -> Path:
    """`path` (markdown) and its plots in `<path stem>/`; text after DISCUSSION_MARKER in an existing file is kept."""
    path = Path(path)
    plots_dir = path.parent / path.stem
    write_plots(results, config, plots_dir)
    kept = ""
    if path.exists() and DISCUSSION_MARKER in path.read_text():
        kept = path.read_text().split(DISCUSSION_MARKER, 1)[1]
    done, total = len(results["cells"]), results["cells_total"]
    lines = [f"# Experiment `{config.name}`: does West-of-N improve the reward model here?", "",
             "Generated by `wofn experiment` (wofn/experiment/report.py); rerunning the command resumes the run and "
             "rewrites everything above the discussion.", "",
             "## How it was made", "", "```", command, "```", "",
             f"Config (`{config.source}`, digest {config.digest}):", "", "```yaml", config.text.strip(), "```", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    if results.get("tune"):
        seeds = results["tune"]["trials"][0].get("seeds", [config.teacher_seed])
        lines += ["", "Training settings tuned on the validation split of the human pairs (one base RM per row and "
                  f"seed, seeds {', '.join(map(str, seeds))}, each with its own validation split; the mean decides); "
                  "base RMs and students use the chosen row:", "",
                  "| " + " | ".join(results["tune"]["settings"])
                  + " | validation accuracy | validation loss | chosen |",
                  "|" + "---|" * (len(results["tune"]["settings"]) + 3)]
        for trial in results["tune"]["trials"]:
            mark = "✓" if trial["settings"] == results["tune"]["settings"] else ""
            lines.append("| " + " | ".join(f"{v:g}" if isinstance(v, (int, float)) else str(v)
                                           for v in trial["settings"].values())
                         + f" | {100 * trial['val_accuracy']:.1f} | {trial['val_loss']:.4f} | {mark} |")
    lines += ["",
              f"Students trained: **{done} of {total}** cells." + ("" if done == total else " (run not finished)"),
              "", "## Results", ""]
    lines += results_markdown(results, config)
    sides = sides_markdown(results, config)
    if sides:
        lines += ["", *sides]
    held_out = held_out_markdown(results, config)
    if held_out:
        lines += ["", "### A second held-out set", "", *held_out]
    rel = plots_dir.name
    lines += ["", f"![accuracy vs N]({rel}/accuracy_vs_n.png)", "", f"![every trained arm]({rel}/arms.png)", "",
              "## The synthetic pair sets (whole grid, before training)", "",
              "Mean over seeds (west_of_n does not depend on the seed). Log-likelihood: the policy's mean per-token "
              "log-probability of the response at T=1.", ""]
    lines += pair_stats_markdown(results)
    lines += ["", f"![pairs' log-likelihood vs N]({rel}/pair_logprob_vs_n.png)", "", DISCUSSION_MARKER]
    text = "\n".join(lines) + (kept if kept else "\n\n## Discussion\n\n(to be written)\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(text)
    tmp.replace(path)
    return path
