"""Reward-model assets: the base model trained on human pairs, and the West-of-N student."""

import json
import random

from matplotlib.figure import Figure
from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue, asset

from wofn import evaluation, models, training
from wofn.paths import WofnHome, content_hash
from wofn_dagster.assets.common import png_markdown, read_table
from wofn_dagster.resources import WofnHomeResource, WofnSettings


def _train_config(settings: WofnSettings) -> training.TrainConfig:
    return training.TrainConfig(
        epochs=settings.rm_epochs, batch_size=settings.rm_batch_size,
        learning_rate=settings.rm_learning_rate, max_length=settings.rm_max_length,
        seed=settings.seed, bf16=settings.rm_bf16, device=settings.device,
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


@asset(group_name="reward_models", deps=["human_preferences", "eval_preferences"], kinds={"pytorch"})
def base_reward_model(context: AssetExecutionContext, settings: WofnSettings, home: WofnHomeResource) -> MaterializeResult:
    """Bradley-Terry reward model (scalar head on the backbone) trained on the human pairs: the teacher."""
    h = home.home
    models.set_torch_threads(settings.threads())
    pairs = read_table(h, "human_preferences").to_pylist()
    model_dir = h.model_dir("base_reward_model")
    context.log.info("training base RM on %d human pairs from %s", len(pairs), settings.rm_backbone)
    metrics = training.train_reward_model(
        settings.rm_backbone, pairs, _train_config(settings), model_dir,
        manifest={"role": "base", "lineage": {"human_preferences": _data_version(h, "human_preferences")}},
        progress=_progress(context, "base RM"))
    result = evaluation.evaluate(str(model_dir), read_table(h, "eval_preferences").to_pylist(), device=settings.device)
    manifest = _add_to_manifest(model_dir, {"evaluation": {"eval_preferences": _data_version(h, "eval_preferences"), **result}})
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


def _student_data(human: list[dict], synthetic: list[dict], ratio: float, seed: int) -> tuple[list[dict], dict]:
    """All human pairs plus up to ratio x as many synthetic pairs (a seeded sample when there are more)."""
    cap = round(ratio * len(human))
    if len(synthetic) > cap:
        synthetic = random.Random(seed).sample(synthetic, cap)
    mix = {"human_pairs": len(human), "synthetic_pairs": len(synthetic),
           "synthetic_per_human": len(synthetic) / len(human), "requested_ratio": ratio}
    keep = ("prompt", "chosen", "rejected")
    return [{k: p[k] for k in keep} for p in human] + [{k: p[k] for k in keep} for p in synthetic], mix


@asset(group_name="reward_models",
       deps=["human_preferences", "filtered_pairs", "eval_preferences", "base_reward_model"], kinds={"pytorch"})
def student_reward_model(context: AssetExecutionContext, settings: WofnSettings, home: WofnHomeResource) -> MaterializeResult:
    """Reward model trained on human pairs plus filtered West-of-N pairs, evaluated beside the base."""
    h = home.home
    models.set_torch_threads(settings.threads())
    if settings.student_init not in ("backbone", "base"):
        raise ValueError(f"student_init must be 'backbone' or 'base', got {settings.student_init!r}")
    base_dir = h.model_dir("base_reward_model")
    base_manifest = models.read_manifest(str(base_dir))
    human = read_table(h, "human_preferences").to_pylist()
    synthetic = read_table(h, "filtered_pairs").to_pylist()
    pairs, mix = _student_data(human, synthetic, settings.synthetic_ratio, settings.seed)
    if mix["synthetic_per_human"] < settings.synthetic_ratio:
        context.log.warning(
            f"only {mix['synthetic_pairs']} synthetic pairs for {mix['human_pairs']} human pairs "
            f"(ratio {mix['synthetic_per_human']:.2f} < {settings.synthetic_ratio}); raise max_prompts or n for a full mix")
    init = settings.rm_backbone if settings.student_init == "backbone" else str(base_dir)
    model_dir = h.model_dir("student_reward_model")
    candidates_dir = h.table_dir("candidates")
    lineage = {
        "human_preferences": _data_version(h, "human_preferences"),
        "filtered_pairs": _data_version(h, "filtered_pairs"),
        "teacher": {"path": str(base_dir), "revision": base_manifest.get("revision")},
        "policy": settings.policy,
        "candidates": content_hash(candidates_dir),
    }
    context.log.info("training student RM on %s from %s", mix, init)
    metrics = training.train_reward_model(
        init, pairs, _train_config(settings), model_dir,
        manifest={"role": "student", "round": 1, "mix": mix, "lineage": lineage},
        progress=_progress(context, "student RM"))
    eval_pairs = read_table(h, "eval_preferences").to_pylist()
    base_eval = evaluation.evaluate(str(base_dir), eval_pairs, device=settings.device)
    student_eval = evaluation.evaluate(str(model_dir), eval_pairs, device=settings.device)
    delta = student_eval["accuracy"] - base_eval["accuracy"]
    manifest = _add_to_manifest(model_dir, {"evaluation": {
        "eval_preferences": _data_version(h, "eval_preferences"), "student": student_eval, "base": base_eval,
        "accuracy_delta": delta}})
    context.log.info("eval accuracy: base %.3f, student %.3f (delta %+.3f, n=%d)",
                     base_eval["accuracy"], student_eval["accuracy"], delta, student_eval["n"])
    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    bars = {"base": base_eval["accuracy"], "student": student_eval["accuracy"],
            "longer wins": base_eval["longer_wins_accuracy"], "shorter wins": base_eval["shorter_wins_accuracy"]}
    ax.bar(list(bars), list(bars.values()), color=["grey", "tab:blue", "lightgrey", "lightgrey"])
    ax.axhline(0.5, color="black", linewidth=0.5)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"accuracy on {student_eval['n']} eval pairs")
    plot = png_markdown(fig)
    return MaterializeResult(
        metadata={
            "base_accuracy": MetadataValue.float(base_eval["accuracy"]),
            "student_accuracy": MetadataValue.float(student_eval["accuracy"]),
            "accuracy_delta": MetadataValue.float(delta),
            "eval_n": MetadataValue.int(student_eval["n"]),
            "longer_wins_accuracy": MetadataValue.float(base_eval["longer_wins_accuracy"]),
            "shorter_wins_accuracy": MetadataValue.float(base_eval["shorter_wins_accuracy"]),
            "mix": MetadataValue.json(mix),
            "lineage": MetadataValue.json(lineage),
            "accuracy_plot": plot,
            **_model_metadata(model_dir, manifest, metrics, "student RM training"),
        },
        data_version=DataVersion(manifest["revision"]),
    )
