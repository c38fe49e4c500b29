"""The evaluation table: every reward model of the run (base, then each round's student) on the
held-out human pairs, next to the length baselines."""

import json

import pyarrow as pa
from dagster import AssetExecutionContext, AutomationCondition, MaterializeResult, MetadataValue, asset
from matplotlib.figure import Figure

from wofn import models, schemas
from wofn_dagster.assets.metadata import png_markdown
from wofn_dagster.assets.tables import publish_table
from wofn_dagster.assets.training import evaluate_model
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
       code_version=code_version("wofn.evaluation", own=__file__))
def reward_model_evaluations(context: AssetExecutionContext, settings: WofnSettings,
                             home: WofnHomeResource) -> MaterializeResult:
    """Base and every round's student on the evaluation pairs: accuracy, length-balanced and
    high-confidence accuracy, calibration, per source, and the length baselines."""
    h = home.home
    models.set_torch_threads(settings.threads())
    rows = []
    for k, role, model_dir in _model_dirs(h, settings.rounds):
        ev = evaluate_model(h, model_dir, settings)
        manifest = models.read_manifest(str(model_dir))
        rows.append({
            "round": k, "role": role, "model": str(model_dir), "revision": manifest.get("revision", ""),
            "teacher": (manifest.get("lineage") or {}).get("teacher", {}).get("path"),
            "n": ev["n"], "accuracy": ev["accuracy"],
            "length_balanced_accuracy": ev["length_balanced_accuracy"],
            "high_confidence_accuracy": ev["high_confidence_accuracy"],
            "mean_margin": ev["mean_margin"], "calibration_error": ev["calibration_error"],
            "longer_wins_accuracy": ev["longer_wins_accuracy"], "shorter_wins_accuracy": ev["shorter_wins_accuracy"],
            "by_source": json.dumps(ev.get("by_source", {}), sort_keys=True),
            "eval_data_version": ev["eval_preferences"],
        })
        context.log.info(f"round {k} {role}: accuracy {ev['accuracy']:.3f}, "
                         f"length-balanced {ev['length_balanced_accuracy']:.3f} (n={ev['n']})")
    table = pa.Table.from_pylist(rows, schema=schemas.EVALUATIONS)
    return publish_table(h, "reward_model_evaluations", table, {
        "table": MetadataValue.md(_markdown(rows)),
        "accuracy_by_round": _plot(rows),
        "student_minus_base": MetadataValue.float(rows[-1]["accuracy"] - rows[0]["accuracy"]),
    }, context=context, inputs={"eval_preferences": rows[0]["eval_data_version"]},
        facts={"models": {str(r["round"]): r["revision"] for r in rows}})


def _markdown(rows: list[dict]) -> str:
    head = "| round | model | accuracy | length-balanced | high-confidence | ECE |\n|---|---|---|---|---|---|"
    body = [f"| {r['round']} | {r['role']} | {r['accuracy']:.3f} | {r['length_balanced_accuracy']:.3f} | "
            f"{r['high_confidence_accuracy']:.3f} | {r['calibration_error']:.3f} |" for r in rows]
    base = rows[0]
    tail = [f"| – | [longer wins] | {base['longer_wins_accuracy']:.3f} | 0.500 | | |",
            f"| – | [shorter wins] | {base['shorter_wins_accuracy']:.3f} | 0.500 | | |"]
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
