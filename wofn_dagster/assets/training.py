"""Reward-model assets: the base model trained on human pairs, and the West-of-N student."""

import hashlib
import json
from pathlib import Path

from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue, asset
from matplotlib.figure import Figure

from wofn import data, evaluation, lineage, models, pairwise, reward_ensemble, stages, stats, training
from wofn.paths import WofnHome, content_hash
from wofn_dagster.assets.metadata import png_markdown
from wofn_dagster.assets.tables import batch_versions, read_table
from wofn_dagster.code_versions import code_version
from wofn_dagster.resources import PolicyResource, RewardModelResource, WofnHomeResource, WofnSettings, run_settings

_TRAINING_CODE = code_version("wofn.training", "wofn.evaluation", own=__file__, files=("wofn/stages.py",))


def _train_config(settings: WofnSettings) -> training.TrainConfig:
    return stages.train_config(run_settings(settings))


def _progress(context: AssetExecutionContext, label: str):
    def report(record: dict) -> None:
        member = f" member {record['member'] + 1}/{record['members']}" if "member" in record else ""
        context.log.info(
            f"{label}{member}: step {record['step']}/{record['total_steps']} loss {record['loss']:.4f} "
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
    for k in sorted({r.get("member", 0) for r in history}):  # a teacher ensemble: one pair of lines per member
        records = [r for r in history if r.get("member", 0) == k]
        suffix = f" (member {k})" if "member" in records[0] else ""
        ax.plot([r["step"] for r in records], [r["loss"] for r in records], label="loss" + suffix)
        ax.plot([r["step"] for r in records], [r["accuracy"] for r in records], label="train accuracy" + suffix)
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


EVAL_SETS = ("eval_pairs", "human_holdout")


def eval_set_pairs(h: WofnHome, settings: WofnSettings, eval_set: str = "eval_pairs") -> tuple[list[dict], str]:
    """The pairs of a held-out set and their data version: "eval_pairs" (the `eval_preferences` table) or
    "human_holdout" (the `human_holdout` share of the human pairs, which no model trains on; empty at 0)."""
    if eval_set == "eval_pairs":
        return read_table(h, "eval_preferences").to_pylist(), _data_version(h, "eval_preferences")
    if eval_set != "human_holdout":
        raise ValueError(f"eval_set must be one of {', '.join(EVAL_SETS)}, got {eval_set!r}")
    rows = data.holdout_pairs(run_settings(settings)).to_pylist()
    trained = set(read_table(h, "human_preferences").column("pair_id").to_pylist())
    leaked = sorted({r["pair_id"] for r in rows} & trained)
    if leaked:
        raise ValueError(f"human_holdout {settings.human_holdout}: {len(leaked)} of its pairs (e.g. {leaked[0]!r}) "
                         "are in the human_preferences table the models trained on; it was materialized with "
                         "another human_holdout. Rematerialize human_preferences and the reward models first")
    return rows, hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]


def evaluate_model(h: WofnHome, model_dir: Path, settings: WofnSettings, eval_set: str = "eval_pairs") -> dict:
    """The model's metrics on a held-out set (`eval_set_pairs`), with its per-pair margins and the pairs'
    length signs (what paired intervals need), stored in its manifest and reused while valid.

    A stored evaluation is reused when it was computed on the same pairs (data version) with the
    same high-confidence fraction; otherwise it is computed and stored.
    """
    pairs, version = eval_set_pairs(h, settings, eval_set)
    key = "evaluation" if eval_set == "eval_pairs" else f"evaluation_{eval_set}"
    stored = models.read_manifest(str(model_dir)).get(key) or {}
    if (stored.get("data_version") == version and "margins" in stored
            and stored.get("high_confidence_fraction") == settings.high_confidence_fraction):
        return stored
    result = evaluation.evaluate(str(model_dir), pairs, device=settings.device,
                                 high_confidence_fraction=settings.high_confidence_fraction, with_margins=True)
    result = {"eval_set": eval_set, "data_version": version, "eval_preferences": version,
              "high_confidence_fraction": settings.high_confidence_fraction,
              "length_signs": stats.length_signs(pairs), **result}
    _add_to_manifest(model_dir, {key: result})
    return result


def _record_model(context: AssetExecutionContext, h: WofnHome, asset: str, manifest: dict) -> None:
    """The model's lineage record (lineage/<asset>/<revision>.json), beside its manifest."""
    inputs = {k: v for k, v in (manifest.get("lineage") or {}).items()
              if k in ("human_preferences", "filtered_pairs") and isinstance(v, str)}
    lineage.record(h, asset, manifest["revision"], inputs=inputs, path=h.model_dir(asset),
                   code_version=(manifest.get("lineage") or {}).get("code_version"), run_id=context.run.run_id,
                   facts={"role": manifest.get("role"), "kind": manifest.get("kind")})


@asset(group_name="reward_models", deps=["human_preferences", "eval_preferences"], kinds={"pytorch"},
       code_version=_TRAINING_CODE)
def base_reward_model(context: AssetExecutionContext, settings: WofnSettings, home: WofnHomeResource,
                      reward_models: RewardModelResource) -> MaterializeResult:
    """Bradley-Terry reward model (scalar head on the backbone) trained on the human pairs: the teacher."""
    h = home.home
    models.set_torch_threads(settings.threads())
    # every rule between settings (e.g. a pairwise teacher takes no length control and one member), before training
    run = run_settings(settings, reward_models=reward_models)
    objective = pairwise.PAIRWISE if run.teacher == "pairwise" else training.POINTWISE
    members = run.teacher_members
    pairs = read_table(h, "human_preferences").to_pylist()
    model_dir = h.model_dir("base_reward_model")
    context.log.info("training base RM on %d human pairs from %s%s", len(pairs), reward_models.backbone,
                     f" ({members} members, seeds {settings.seed}..{settings.seed + members - 1})"
                     if members > 1 else "")
    metrics = training.train_ensemble(
        reward_models.backbone, pairs, _train_config(settings), model_dir, members,
        manifest={"role": "base", "lineage": {"human_preferences": _data_version(h, "human_preferences"),
                                              "backbone": reward_models.backbone, "code_version": _TRAINING_CODE}},
        progress=_progress(context, f"base RM ({reward_models.teacher})"), objective=objective)
    result = evaluate_model(h, model_dir, settings)
    manifest = models.read_manifest(str(model_dir))
    _record_model(context, h, "base_reward_model", manifest)
    context.log.info("base RM on eval pairs: accuracy %.3f, length-balanced %.3f (n=%d)",
                     result["accuracy"], result["length_balanced_accuracy"], result["n"])
    validation = metrics.get("validation") or {}
    if validation:
        context.log.info(
            "base RM on its validation split: accuracy %.3f, length-balanced %.3f, mean margin %+.3f "
            "(longer wins %.3f, shorter wins %.3f; n=%d)", validation["accuracy"],
            validation["length_balanced_accuracy"] or float("nan"), validation["mean_margin"],
            validation["longer_wins_accuracy"], validation["shorter_wins_accuracy"], validation["n"])
    if members > 1 and validation:
        context.log.info(
            "teacher ensemble of %d: members' validation accuracy %s; all members agree on %.1f%% of the validation "
            "pairs, %.3f accurate there", members, ", ".join(f"{a:.3f}" for a in validation["member_accuracies"]),
            100 * validation["unanimous_share"], validation["unanimous_accuracy"] or float("nan"))
    return MaterializeResult(
        metadata={
            "teacher_members": MetadataValue.int(members),
            **{f"val_{key}": MetadataValue.float(validation[key]) for key in (
                "accuracy", "length_balanced_accuracy", "mean_margin", "longer_wins_accuracy", "shorter_wins_accuracy",
                "unanimous_share", "unanimous_accuracy")
               if validation.get(key) is not None},
            **({"val_member_accuracies": MetadataValue.json(validation["member_accuracies"])}
               if validation.get("member_accuracies") else {}),
            "head": MetadataValue.text(manifest.get("head", "hf")),
            "eval_accuracy": MetadataValue.float(result["accuracy"]),
            "eval_length_balanced_accuracy": MetadataValue.float(result["length_balanced_accuracy"]),
            "eval_n": MetadataValue.int(result["n"]),
            "longer_wins_accuracy": MetadataValue.float(result["longer_wins_accuracy"]),
            "shorter_wins_accuracy": MetadataValue.float(result["shorter_wins_accuracy"]),
            **_model_metadata(model_dir, manifest, metrics, "base RM training"),
        },
        data_version=DataVersion(manifest["revision"]),
    )


def train_student(context: AssetExecutionContext, settings: WofnSettings, reward_models: RewardModelResource,
                  policy: PolicyResource, h: WofnHome, *, teacher_dir: Path, synthetic: list[dict],
                  synthetic_version: str, synthetic_table: str, out_dir: Path, round_k: int,
                  synthetic_lineage: dict | None = None) -> dict:
    """Train one student on human ∪ synthetic pairs and evaluate it beside its teacher.

    Shared by `student_reward_model` (round 1, teacher = base) and `student_rounds` (round k,
    teacher = the student of round k-1). The manifest's `lineage` names the exact data versions:
    human pairs, synthetic pairs (`synthetic_table` at `synthetic_version`, and `synthetic_lineage`:
    the pair and candidate versions behind it, per prompt batch), the teacher's revision and the
    policy. Returns metrics, manifest, mix, lineage and both evaluations.
    """
    teacher_manifest = models.read_manifest(str(teacher_dir))
    if settings.student_init == "teacher" and reward_ensemble.is_ensemble(teacher_dir):
        raise ValueError(f"student_init: teacher continues from one model, but the round-{round_k} teacher "
                         f"{teacher_dir} is an ensemble of {len(teacher_manifest['members'])} (teacher_members); "
                         "use student_init: backbone")
    human = read_table(h, "human_preferences").to_pylist()
    pairs, mix = training.mix_pairs(human, synthetic, settings.synthetic_ratio, settings.seed)
    if mix["synthetic_per_human"] < settings.synthetic_ratio:
        context.log.warning(
            f"round {round_k}: only {mix['synthetic_pairs']} synthetic pairs for {mix['human_pairs']} human pairs "
            f"(ratio {mix['synthetic_per_human']:.2f} < {settings.synthetic_ratio}); "
            "raise max_prompts or n for a full mix")
    init = reward_models.backbone if settings.student_init == "backbone" else str(teacher_dir)
    lineage = {
        "human_preferences": _data_version(h, "human_preferences"),
        "synthetic_pairs": synthetic_version,
        "synthetic_table": synthetic_table,
        "teacher": {"path": str(teacher_dir), "revision": teacher_manifest.get("revision"),
                    "kind": teacher_manifest.get("kind"),
                    "human_preferences": (teacher_manifest.get("lineage") or {}).get("human_preferences")},
        "policy": policy.model,
        "candidates": _data_version(h, "candidates"),
        "prompt_batches": {key: {"prompts": v} for key, v in batch_versions(h, "prompts").items()},
        "code_version": _TRAINING_CODE,
        **(synthetic_lineage or {}),
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
                     f"student {student_eval['accuracy']:.3f} (delta {delta:+.3f}); length-balanced teacher "
                     f"{teacher_eval['length_balanced_accuracy']:.3f}, "
                     f"student {student_eval['length_balanced_accuracy']:.3f} (n={student_eval['n']})")
    return {"metrics": metrics, "manifest": manifest, "mix": mix, "lineage": lineage,
            "teacher_eval": teacher_eval, "student_eval": student_eval, "delta": delta}


def _accuracy_bars(teacher_eval: dict, student_eval: dict) -> MetadataValue:
    """Teacher and student, accuracy beside length-balanced accuracy, with the length-only rules."""
    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    labels = ["teacher", "student", "longer wins", "shorter wins"]
    plain = [teacher_eval["accuracy"], student_eval["accuracy"],
             teacher_eval["longer_wins_accuracy"], teacher_eval["shorter_wins_accuracy"]]
    balanced = [teacher_eval["length_balanced_accuracy"], student_eval["length_balanced_accuracy"], 0.5, 0.5]
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], plain, width=0.4, color="tab:blue", label="accuracy")
    ax.bar([i + 0.2 for i in x], balanced, width=0.4, color="tab:orange", label="length-balanced")
    ax.set_xticks(list(x), labels)
    ax.axhline(0.5, color="black", linewidth=0.5)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"on {student_eval['n']} eval pairs")
    ax.legend(fontsize=7)
    return png_markdown(fig)


def _synthetic_lineage(h: WofnHome) -> dict:
    """The versions behind round 1's synthetic pairs: selected pairs, and candidates and scores per batch."""
    judged = "tournament_pairs" if pairwise.is_pairwise(str(h.model_dir("base_reward_model"))) else "candidate_scores"
    candidates, scores = batch_versions(h, "candidates"), batch_versions(h, judged)
    prompts = batch_versions(h, "prompts")
    return {
        "filtered_pairs": _data_version(h, "filtered_pairs"),
        "west_of_n_pairs": _data_version(h, "west_of_n_pairs"),
        "prompt_batches": {key: {"prompts": prompts.get(key), "candidates": candidates.get(key),
                                 judged: scores.get(key)}
                           for key in sorted(set(prompts) | set(candidates))},
    }


@asset(group_name="reward_models",
       deps=["human_preferences", "filtered_pairs", "eval_preferences", "base_reward_model"], kinds={"pytorch"},
       code_version=_TRAINING_CODE)
def student_reward_model(context: AssetExecutionContext, settings: WofnSettings, home: WofnHomeResource,
                         reward_models: RewardModelResource, policy: PolicyResource) -> MaterializeResult:
    """Reward model trained on human pairs plus filtered West-of-N pairs (all prompt batches), evaluated
    beside the base."""
    h = home.home
    models.set_torch_threads(settings.threads())
    out_dir = h.model_dir("student_reward_model")
    result = train_student(context, settings, reward_models, policy, h, teacher_dir=h.model_dir("base_reward_model"),
                           synthetic=read_table(h, "filtered_pairs").to_pylist(),
                           synthetic_version=_data_version(h, "filtered_pairs"), synthetic_table="filtered_pairs",
                           synthetic_lineage=_synthetic_lineage(h), out_dir=out_dir, round_k=1)
    _record_model(context, h, "student_reward_model", result["manifest"])
    base_eval, student_eval = result["teacher_eval"], result["student_eval"]
    return MaterializeResult(
        metadata={
            "base_accuracy": MetadataValue.float(base_eval["accuracy"]),
            "student_accuracy": MetadataValue.float(student_eval["accuracy"]),
            "accuracy_delta": MetadataValue.float(result["delta"]),
            "base_length_balanced_accuracy": MetadataValue.float(base_eval["length_balanced_accuracy"]),
            "student_length_balanced_accuracy": MetadataValue.float(student_eval["length_balanced_accuracy"]),
            "length_balanced_delta": MetadataValue.float(student_eval["length_balanced_accuracy"]
                                                         - base_eval["length_balanced_accuracy"]),
            "eval_n": MetadataValue.int(student_eval["n"]),
            "longer_wins_accuracy": MetadataValue.float(base_eval["longer_wins_accuracy"]),
            "shorter_wins_accuracy": MetadataValue.float(base_eval["shorter_wins_accuracy"]),
            "mix": MetadataValue.json(result["mix"]),
            "lineage": MetadataValue.json(result["lineage"]),
            "lineage_chain": MetadataValue.md("```\n" + lineage.format_chain(lineage.chain(out_dir, h)) + "\n```"),
            "accuracy_plot": _accuracy_bars(base_eval, student_eval),
            **_model_metadata(out_dir, result["manifest"], result["metrics"], "student RM training"),
        },
        data_version=DataVersion(result["manifest"]["revision"]),
    )
