"""Reward-model assets: the base model trained on human pairs, and the West-of-N student."""

import json
from pathlib import Path

from matplotlib.figure import Figure
from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue, asset

from wofn import evaluation, models, pairwise, training
from wofn.paths import WofnHome, content_hash
from wofn_dagster.assets.common import png_markdown, read_table
from wofn_dagster.resources import WofnHomeResource, WofnSettings


def _train_config(settings: WofnSettings) -> training.TrainConfig:
    return training.TrainConfig(
        epochs=settings.rm_epochs, batch_size=settings.rm_batch_size,
        learning_rate=settings.rm_learning_rate, max_length=settings.rm_max_length,
        seed=settings.seed, bf16=settings.rm_bf16, device=settings.device,
        val_fraction=settings.rm_val_fraction,
    )


def _progress(context: AssetExecutionContext, label: str):
    def report(record: dict) -> None:
        context.log.info(
            f"{label}: step {record['step']}/{record['total_steps']} loss {record['loss']:.4f} "
            f"acc {record['accuracy']:.3f} {record['pairs_per_s']:.1f} pairs/s ETA {record['eta_s']:.0f}s")
    return report


def _add_to_manifest(model_dir, extra: dict) -> dict:
    path = model_dir / "manifest.json"
    manifest = {**json.loads(path.read_text()), **extra}
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    return manifest


def _loss_plot(history: list[dict], title: str) -> MetadataValue:
    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    ax.plot([r["step"] for r in history], [r["loss"] for r in history], label="loss")
    ax.plot([r["step"] for r in history], [r["accuracy"] for r in history], label="train accuracy")
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.legend()
    value = png_markdown(fig)
    return value


def _model_metadata(model_dir, manifest: dict, metrics: dict, title: str) -> dict:
    """What both reward-model assets report about the model they wrote and its training."""
    return {
        "path": MetadataValue.path(str(model_dir)),
        "revision": MetadataValue.text(manifest["revision"]),
        "final_train_loss": MetadataValue.float(metrics["final_loss"]),
        "train_seconds": MetadataValue.float(metrics["seconds"]),
        "train_pairs_per_s": MetadataValue.float(metrics["pairs_per_s"]),
        "training_curve": _loss_plot(metrics["history"], title),
    }


def _data_version(h: WofnHome, asset: str) -> str:
    return content_hash(h.table_dir(asset))


def evaluate_model(h: WofnHome, model_dir: Path, settings: WofnSettings) -> dict:
    """The model's metrics on `eval_preferences`, stored in its manifest and reused while valid.

    A stored evaluation is reused when it was computed on the same evaluation data (data
    version) with the same high-confidence fraction; otherwise it is computed and stored.
    """
    version = _data_version(h, "eval_preferences")
    stored = models.read_manifest(str(model_dir)).get("evaluation") or {}
    if (stored.get("eval_preferences") == version
            and stored.get("high_confidence_fraction") == settings.high_confidence_fraction):
        return stored
    result = evaluation.evaluate(str(model_dir), read_table(h, "eval_preferences").to_pylist(),
                                 device=settings.device,
                                 high_confidence_fraction=settings.high_confidence_fraction)
    result = {"eval_preferences": version, "high_confidence_fraction": settings.high_confidence_fraction, **result}
    _add_to_manifest(model_dir, {"evaluation": result})
    return result


@asset(group_name="reward_models", deps=["human_preferences", "eval_preferences"], kinds={"pytorch"})
def base_reward_model(context: AssetExecutionContext, settings: WofnSettings, home: WofnHomeResource) -> MaterializeResult:
    """Bradley-Terry reward model (scalar head on the backbone) trained on the human pairs: the teacher."""
    h = home.home
    models.set_torch_threads(settings.threads())
    if settings.teacher not in ("pointwise", "pairwise"):
        raise ValueError(f"teacher must be 'pointwise' or 'pairwise', got {settings.teacher!r}")
    objective = pairwise.PAIRWISE if settings.teacher == "pairwise" else training.POINTWISE
    pairs = read_table(h, "human_preferences").to_pylist()
    model_dir = h.model_dir("base_reward_model")
    context.log.info("training base RM on %d human pairs from %s", len(pairs), settings.rm_backbone)
    metrics = training.train_reward_model(
        settings.rm_backbone, pairs, _train_config(settings), model_dir,
        manifest={"role": "base", "lineage": {"human_preferences": _data_version(h, "human_preferences")}},
        progress=_progress(context, f"base RM ({settings.teacher})"), objective=objective)
    result = evaluate_model(h, model_dir, settings)
    manifest = models.read_manifest(str(model_dir))
    context.log.info("base RM accuracy on eval pairs: %.3f (n=%d)", result["accuracy"], result["n"])
    return MaterializeResult(
        metadata={
            "eval_accuracy": MetadataValue.float(result["accuracy"]),
            "eval_n": MetadataValue.int(result["n"]),
            "longer_wins_accuracy": MetadataValue.float(result["longer_wins_accuracy"]),
            "shorter_wins_accuracy": MetadataValue.float(result["shorter_wins_accuracy"]),
            **_model_metadata(model_dir, manifest, metrics, "base RM training"),
        },
        data_version=DataVersion(manifest["revision"]),
    )


def train_student(context: AssetExecutionContext, settings: WofnSettings, h: WofnHome, *, teacher_dir: Path,
                  synthetic: list[dict], synthetic_version: str, out_dir: Path, round_k: int) -> dict:
    """Train one student on human ∪ synthetic pairs and evaluate it beside its teacher.

    Shared by `student_reward_model` (round 1, teacher = base) and `student_rounds` (round k,
    teacher = the student of round k-1). Returns metrics, manifest, mix, lineage and both evaluations.
    """
    if settings.student_init not in ("backbone", "teacher"):
        raise ValueError(f"student_init must be 'backbone' or 'teacher', got {settings.student_init!r}")
    teacher_manifest = models.read_manifest(str(teacher_dir))
    human = read_table(h, "human_preferences").to_pylist()
    pairs, mix = training.mix_pairs(human, synthetic, settings.synthetic_ratio, settings.seed)
    if mix["synthetic_per_human"] < settings.synthetic_ratio:
        context.log.warning(
            f"round {round_k}: only {mix['synthetic_pairs']} synthetic pairs for {mix['human_pairs']} human pairs "
            f"(ratio {mix['synthetic_per_human']:.2f} < {settings.synthetic_ratio}); raise max_prompts or n for a full mix")
    init = settings.rm_backbone if settings.student_init == "backbone" else str(teacher_dir)
    lineage = {
        "human_preferences": _data_version(h, "human_preferences"),
        "synthetic_pairs": synthetic_version,
        "teacher": {"path": str(teacher_dir), "revision": teacher_manifest.get("revision"),
                    "kind": teacher_manifest.get("kind")},
        "policy": settings.policy,
        "candidates": _data_version(h, "candidates"),
    }
    context.log.info(f"round {round_k}: training student RM on {mix} from {init}")
    metrics = training.train_reward_model(
        init, pairs, _train_config(settings), out_dir,
        manifest={"role": "student", "round": round_k, "mix": mix, "lineage": lineage},
        progress=_progress(context, f"student RM round {round_k}"))
    teacher_eval = evaluate_model(h, teacher_dir, settings)
    student_eval = evaluate_model(h, out_dir, settings)
    delta = student_eval["accuracy"] - teacher_eval["accuracy"]
    manifest = _add_to_manifest(out_dir, {"teacher_evaluation": teacher_eval, "accuracy_delta_vs_teacher": delta})
    context.log.info(f"round {round_k}: eval accuracy teacher {teacher_eval['accuracy']:.3f}, "
                     f"student {student_eval['accuracy']:.3f} (delta {delta:+.3f}, n={student_eval['n']})")
    return {"metrics": metrics, "manifest": manifest, "mix": mix, "lineage": lineage,
            "teacher_eval": teacher_eval, "student_eval": student_eval, "delta": delta}


def _accuracy_bars(teacher_eval: dict, student_eval: dict) -> MetadataValue:
    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    bars = {"teacher": teacher_eval["accuracy"], "student": student_eval["accuracy"],
            "longer wins": teacher_eval["longer_wins_accuracy"], "shorter wins": teacher_eval["shorter_wins_accuracy"]}
    ax.bar(list(bars), list(bars.values()), color=["grey", "tab:blue", "lightgrey", "lightgrey"])
    ax.axhline(0.5, color="black", linewidth=0.5)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"accuracy on {student_eval['n']} eval pairs")
    return png_markdown(fig)


@asset(group_name="reward_models",
       deps=["human_preferences", "filtered_pairs", "eval_preferences", "base_reward_model"], kinds={"pytorch"})
def student_reward_model(context: AssetExecutionContext, settings: WofnSettings, home: WofnHomeResource) -> MaterializeResult:
    """Reward model trained on human pairs plus filtered West-of-N pairs, evaluated beside the base."""
    h = home.home
    models.set_torch_threads(settings.threads())
    out_dir = h.model_dir("student_reward_model")
    result = train_student(context, settings, h, teacher_dir=h.model_dir("base_reward_model"),
                           synthetic=read_table(h, "filtered_pairs").to_pylist(),
                           synthetic_version=_data_version(h, "filtered_pairs"), out_dir=out_dir, round_k=1)
    base_eval, student_eval = result["teacher_eval"], result["student_eval"]
    return MaterializeResult(
        metadata={
            "base_accuracy": MetadataValue.float(base_eval["accuracy"]),
            "student_accuracy": MetadataValue.float(student_eval["accuracy"]),
            "accuracy_delta": MetadataValue.float(result["delta"]),
            "eval_n": MetadataValue.int(student_eval["n"]),
            "longer_wins_accuracy": MetadataValue.float(base_eval["longer_wins_accuracy"]),
            "shorter_wins_accuracy": MetadataValue.float(base_eval["shorter_wins_accuracy"]),
            "mix": MetadataValue.json(result["mix"]),
            "lineage": MetadataValue.json(result["lineage"]),
            "accuracy_plot": _accuracy_bars(base_eval, student_eval),
            **_model_metadata(out_dir, result["manifest"], result["metrics"], "student RM training"),
        },
        data_version=DataVersion(result["manifest"]["revision"]),
    )
