"""The evaluation table: every reward model of the run (base, then each round's student) on each
held-out set of human pairs, next to the length baselines, each student paired with the base."""

import json

import pyarrow as pa
from dagster import AssetExecutionContext, AutomationCondition, MaterializeResult, MetadataValue, asset
from matplotlib.figure import Figure

from wofn import models, schemas, stats
from wofn_dagster.assets.metadata import png_markdown
from wofn_dagster.assets.tables import publish_table
from wofn_dagster.assets.training import EVAL_SETS, evaluate_model
from wofn_dagster.code_versions import code_version
from wofn_dagster.resources import WofnHomeResource, WofnSettings


def _model_dirs(h, rounds: int) -> list[tuple[int, str, object]]:
    dirs = [(0, "base", h.model_dir("base_reward_model")), (1, "student", h.model_dir("student_reward_model"))]
    dirs += [(k, "student", h.round_dir(k) / "student_reward_model") for k in range(2, rounds + 1)]
    return dirs


# Declarative automation: cheap, and always about the latest models, so it follows any model that
# is rematerialized by hand (the refresh schedule's runs include it anyway).
@asset(group_name="reward_models",
       deps=["base_reward_model", "student_reward_model", "student_rounds", "eval_preferences"],
       kinds={"pytorch", "parquet"}, automation_condition=AutomationCondition.eager(),
       code_version=code_version("wofn.evaluation", "wofn.stats", own=__file__))
def reward_model_evaluations(context: AssetExecutionContext, settings: WofnSettings,
                             home: WofnHomeResource) -> MaterializeResult:
    """Base and every round's student on each held-out set (the evaluation pairs; with `human_holdout`, also
    the held-out human pairs): accuracy, length-balanced and high-confidence accuracy, calibration, per
    source, the length baselines, and each student minus the base with a 95% paired interval."""
    h = home.home
    models.set_torch_threads(settings.threads())
    sets = EVAL_SETS if settings.human_holdout else EVAL_SETS[:1]
    rows = []
    for eval_set in sets:
        base_eval = None
        for k, role, model_dir in _model_dirs(h, settings.rounds):
            ev = evaluate_model(h, model_dir, settings, eval_set)
            base_eval = base_eval or ev
            rows.append(_row(k, role, model_dir, ev, base_eval if k else None))
            context.log.info(f"{eval_set} round {k} {role}: accuracy {ev['accuracy']:.3f}, "
                             f"length-balanced {ev['length_balanced_accuracy']:.3f} (n={ev['n']})"
                             + (f"; vs base {_delta_text(rows[-1], 'accuracy')}" if k else ""))
    table = pa.Table.from_pylist(rows, schema=schemas.EVALUATIONS)
    last = [r for r in rows if r["eval_set"] == "eval_pairs"][-1]
    metadata = {
        "table": MetadataValue.md(_markdown(rows)),
        "accuracy_by_round": _plot([r for r in rows if r["eval_set"] == "eval_pairs"]),
        "student_minus_base": MetadataValue.float(last["delta_accuracy"]),
        "student_minus_base_interval": MetadataValue.text(_delta_text(last, "accuracy")),
    }
    if settings.human_holdout:
        held = [r for r in rows if r["eval_set"] == "human_holdout"][-1]
        metadata["student_minus_base_on_human_holdout"] = MetadataValue.text(_delta_text(held, "accuracy"))
    return publish_table(h, "reward_model_evaluations", table, metadata, context=context,
                         inputs={"eval_preferences": rows[0]["eval_data_version"]},
                         facts={"models": {str(r["round"]): r["revision"] for r in rows},
                                "eval_sets": {r["eval_set"]: r["eval_data_version"] for r in rows}})


def _row(k: int, role: str, model_dir, ev: dict, base_eval: dict | None) -> dict:
    manifest = models.read_manifest(str(model_dir))
    row = {
        "round": k, "role": role, "model": str(model_dir), "revision": manifest.get("revision", ""),
        "teacher": (manifest.get("lineage") or {}).get("teacher", {}).get("path"),
        "n": ev["n"], "accuracy": ev["accuracy"],
        "length_balanced_accuracy": ev["length_balanced_accuracy"],
        "high_confidence_accuracy": ev["high_confidence_accuracy"],
        "mean_margin": ev["mean_margin"], "calibration_error": ev["calibration_error"],
        "longer_wins_accuracy": ev["longer_wins_accuracy"], "shorter_wins_accuracy": ev["shorter_wins_accuracy"],
        "by_source": json.dumps(ev.get("by_source", {}), sort_keys=True),
        "eval_data_version": ev["data_version"], "eval_set": ev["eval_set"],
    }
    if base_eval is not None:  # a student: paired with the base on the same pairs
        for metric in stats.METRICS:
            ci = stats.paired_difference([stats.correct_from_margins(base_eval["margins"])],
                                         [stats.correct_from_margins(ev["margins"])], ev["length_signs"], metric)
            row.update({f"delta_{metric}": ci["difference"], f"delta_{metric}_low": ci["low"],
                        f"delta_{metric}_high": ci["high"]})
    return row


def _delta_text(row: dict, metric: str) -> str:
    """'+0.021 [-0.014, +0.055], within noise' (a student's row)."""
    low, high = row[f"delta_{metric}_low"], row[f"delta_{metric}_high"]
    return (f"{row[f'delta_{metric}']:+.3f} [{low:+.3f}, {high:+.3f}]"
            + (", within noise" if low <= 0 <= high else ""))


def _markdown(rows: list[dict]) -> str:
    head = ("| held-out set | round | model | accuracy | Δ vs base [95% CI] | length-balanced | Δ vs base [95% CI] | "
            "high-confidence | ECE |\n|---|---|---|---|---|---|---|---|---|")
    body = [f"| {r['eval_set']} ({r['n']}) | {r['round']} | {r['role']} | {r['accuracy']:.3f} | "
            f"{_delta_text(r, 'accuracy') if r['round'] else '–'} | {r['length_balanced_accuracy']:.3f} | "
            f"{_delta_text(r, 'length_balanced_accuracy') if r['round'] else '–'} | "
            f"{r['high_confidence_accuracy']:.3f} | {r['calibration_error']:.3f} |" for r in rows]
    tail = [f"| {r['eval_set']} ({r['n']}) | – | [{side} wins] | {r[f'{side}_wins_accuracy']:.3f} | | 0.500 | | | |"
            for r in rows if r["round"] == 0 for side in ("longer", "shorter")]
    return "\n".join([head, *body, *tail])


def _plot(rows: list[dict]) -> MetadataValue:
    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    rounds = [r["round"] for r in rows]
    ax.plot(rounds, [r["accuracy"] for r in rows], marker="o", label="accuracy")
    ax.plot(rounds, [r["length_balanced_accuracy"] for r in rows], marker="s", label="length-balanced")
    ax.axhline(rows[0]["longer_wins_accuracy"], linestyle="--", color="grey", label="longer wins")
    ax.axhline(rows[0]["shorter_wins_accuracy"], linestyle=":", color="grey", label="shorter wins")
    ax.set_xticks(rounds)
    ax.set_xlabel("round (0 = base)")
    ax.set_ylabel("eval accuracy")
    ax.legend(fontsize=7)
    return png_markdown(fig)
