"""Iterative West-of-N: round k re-scores the candidates with round k-1's student and trains anew."""

import shutil

from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue, asset

from wofn import lineage, models, pairs, schemas, stages
from wofn.paths import PARTITION_PREFIX, content_hash, table_rows
from wofn_dagster.assets.generation import score_with
from wofn_dagster.assets.runtime import INFERENCE_RETRY
from wofn_dagster.assets.tables import batch_versions, staged, write_table
from wofn_dagster.assets.training import evaluate_model, train_student
from wofn_dagster.code_versions import code_version
from wofn_dagster.resources import (
    BeamRunnerResource,
    PolicyResource,
    RewardModelResource,
    WofnHomeResource,
    WofnSettings,
    run_settings,
)

_ROUNDS_CODE = code_version("wofn.pairs", "wofn.training", "wofn.evaluation", "beam_jobs.score_candidates",
                            own=__file__, files=("wofn/stages.py", "wofn_dagster/assets/training.py",
                                                 "wofn_dagster/assets/generation.py"))


def _record_table(h, k: int, table: str, inputs: dict, context: AssetExecutionContext, **facts) -> str:
    """A lineage record for round k's `table` (lineage/round_<k>/<table>/<version>.json); its version."""
    folder = h.round_dir(k) / table
    version = content_hash(folder)
    lineage.record(h, f"round_{k}/{table}", version, inputs=inputs, rows=table_rows(folder), path=folder,
                   code_version=_ROUNDS_CODE, run_id=context.run.run_id, facts=facts)
    return version


@asset(group_name="reward_models", deps=["student_reward_model", "candidates", "human_preferences", "eval_preferences"],
       kinds={"beam", "duckdb", "pytorch"}, retry_policy=INFERENCE_RETRY, code_version=_ROUNDS_CODE)
def student_rounds(context: AssetExecutionContext, settings: WofnSettings, home: WofnHomeResource,
                   reward_models: RewardModelResource, policy: PolicyResource,
                   beam_runner: BeamRunnerResource) -> MaterializeResult:
    """Rounds 2..`rounds` of West-of-N, each teacher being the previous round's student (every prompt batch)."""
    h = home.home
    models.set_torch_threads(settings.threads())
    if settings.rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {settings.rounds}")
    records = [_record(1, h.model_dir("student_reward_model"), h.model_dir("base_reward_model"),
                       evaluate_model(h, h.model_dir("student_reward_model"), settings))]
    teacher = h.model_dir("student_reward_model")
    if settings.rounds > 1 and settings.confidence_measure != "margin":
        context.log.warning(f"rounds 2..{settings.rounds}: the teacher is one student, which gives no agreement; "
                            f"their confidence filter ranks by the margin (confidence_measure "
                            f"{settings.confidence_measure!r} applies to round 1)")
    # every prompt batch's candidates, as one glob (the scoring job reads file patterns)
    candidates_glob = h.table_dir("candidates") / f"{PARTITION_PREFIX}*" / "*.parquet"
    candidate_versions = batch_versions(h, "candidates")
    for k in range(2, settings.rounds + 1):
        rdir = h.round_dir(k)
        context.log.info(f"round {k}: scoring candidates of {len(candidate_versions)} prompt batches with {teacher}")
        score_with(context, settings, reward_models, beam_runner, candidates_glob, teacher,
                   into=staged(rdir / "candidate_scores"), errors_into=staged(rdir / "score_errors"))
        teacher_revision = models.read_manifest(str(teacher)).get("revision")
        scores_version = _record_table(h, k, "candidate_scores", {"candidates": candidate_versions}, context,
                                 reward_model=str(teacher), reward_model_revision=teacher_revision)
        selected, _ = pairs.select_pairs(h.table_dir("candidates"), rdir / "candidate_scores",
                                         strategy=settings.strategy, seed=settings.pair_seed,
                                         length_control=settings.length_control, length_band=settings.length_band)
        write_table(rdir / "west_of_n_pairs", selected, schemas.PAIRS, where=f"round {k} west_of_n_pairs")
        pairs_version = _record_table(h, k, "west_of_n_pairs", {"candidates": candidate_versions,
                                                          f"round_{k}/candidate_scores": scores_version},
                                context, strategy=settings.strategy, length_control=settings.length_control,
                                length_band=settings.length_band)
        filtered = stages.filter_pairs(run_settings(settings), rdir / "west_of_n_pairs", settings.strategy,
                                       pairs.seed_for(settings.strategy, settings.pair_seed),
                                       teacher_is_ensemble=False)  # every round's teacher is one student
        kept, funnel, funnel_table = filtered.table, filtered.steps, filtered.funnel
        if filtered.before_balance is not None:
            context.log.info(f"round {k}: length balance {filtered.before_balance['pairs']} -> {kept.num_rows} pairs")
        write_table(rdir / "filtered_pairs", kept, schemas.PAIRS, where=f"round {k} filtered_pairs")
        kept_version = _record_table(h, k, "filtered_pairs", {f"round_{k}/west_of_n_pairs": pairs_version}, context,
                               strategy=settings.strategy, length_balance=settings.length_balance)
        write_table(rdir / "pair_funnel", funnel_table, schemas.PAIR_FUNNEL, where=f"round {k} pair_funnel")
        context.log.info(f"round {k}: funnel {funnel}")
        result = train_student(context, settings, reward_models, policy, h, teacher_dir=teacher,
                               synthetic=kept.to_pylist(), synthetic_version=kept_version,
                               synthetic_table=f"round_{k}/filtered_pairs", out_dir=rdir / "student_reward_model",
                               round_k=k, synthetic_lineage={"west_of_n_pairs": pairs_version,
                                                             "candidate_scores": scores_version})
        records.append(_record(k, rdir / "student_reward_model", teacher, result["student_eval"],
                               funnel=funnel, pair_stats=pairs.pair_stats(kept)))
        teacher = rdir / "student_reward_model"
    stale = [p for p in sorted((h.root / "rounds").glob("round_*")) if int(p.name.split("_")[1]) > settings.rounds]
    for path in stale:  # rounds of an earlier, longer run would read as part of this one
        context.log.info(f"removing {path} (beyond rounds={settings.rounds})")
        shutil.rmtree(path)
    revisions = {r["round"]: r["revision"] for r in records}
    return MaterializeResult(metadata={
        "rounds": MetadataValue.int(settings.rounds),
        "per_round": MetadataValue.md(_markdown(records)),
        "round_models": MetadataValue.json({r["round"]: r["model"] for r in records}),
        "round_revisions": MetadataValue.json(revisions),
        "data_version": MetadataValue.text(records[-1]["revision"] or ""),
    }, data_version=DataVersion(records[-1]["revision"] or "none"))


def _record(k: int, model_dir, teacher_dir, ev: dict, funnel=None, pair_stats=None) -> dict:
    return {"round": k, "teacher": str(teacher_dir), "model": str(model_dir),
            "revision": models.read_manifest(str(model_dir)).get("revision"),
            "accuracy": ev["accuracy"], "length_balanced_accuracy": ev.get("length_balanced_accuracy"),
            "funnel": funnel, "pair_stats": pair_stats}


def _markdown(records: list[dict]) -> str:
    lines = ["| round | accuracy | length-balanced | teacher |", "|---|---|---|---|"]
    for r in records:
        lb = "" if r["length_balanced_accuracy"] is None else f"{r['length_balanced_accuracy']:.3f}"
        lines.append(f"| {r['round']} | {r['accuracy']:.3f} | {lb} | {r['teacher']} |")
    return "\n".join(lines)
