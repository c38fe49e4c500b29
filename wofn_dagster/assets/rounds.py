"""Iterative West-of-N: round k re-scores the candidates with round k-1's student and trains anew."""

import shutil

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, RetryPolicy, asset

from wofn import models, pairs, schemas
from wofn.paths import content_hash
from wofn_dagster.assets.common import write_table
from wofn_dagster.assets.generation import score_with
from wofn_dagster.assets.training import evaluate_model, train_student
from wofn_dagster.resources import BeamRunnerResource, WofnHomeResource, WofnSettings


@asset(group_name="reward_models", deps=["student_reward_model", "candidates", "human_preferences", "eval_preferences"],
       kinds={"beam", "duckdb", "pytorch"}, retry_policy=RetryPolicy(max_retries=1, delay=5))
def student_rounds(context: AssetExecutionContext, settings: WofnSettings, home: WofnHomeResource,
                   beam_runner: BeamRunnerResource) -> MaterializeResult:
    """Rounds 2..`rounds` of West-of-N, each teacher being the previous round's student."""
    h = home.home
    models.set_torch_threads(settings.threads())
    if settings.rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {settings.rounds}")
    records = [_record(1, h.model_dir("student_reward_model"), h.model_dir("base_reward_model"),
                       evaluate_model(h, h.model_dir("student_reward_model"), settings))]
    teacher = h.model_dir("student_reward_model")
    filters = {"confidence_quantile": settings.confidence_quantile, "logprob_quantile": settings.logprob_quantile,
               "likelihood": settings.likelihood, "min_margin": settings.min_margin,
               "max_tokens": settings.max_pair_tokens}
    for k in range(2, settings.rounds + 1):
        rdir = h.round_dir(k)
        context.log.info(f"round {k}: scoring candidates with {teacher}")
        score_with(context, settings, beam_runner, h.table_dir("candidates"), teacher, rdir / "candidate_scores")
        selected, _ = pairs.select_pairs(h.table_dir("candidates"), rdir / "candidate_scores",
                                         strategy=settings.strategy, seed=settings.pair_seed)
        write_table(rdir / "west_of_n_pairs", selected, schemas.PAIRS, where=f"round {k} west_of_n_pairs")
        kept, funnel = pairs.filter_pairs(rdir / "west_of_n_pairs", **filters)
        write_table(rdir / "filtered_pairs", kept, schemas.PAIRS, where=f"round {k} filtered_pairs")
        write_table(rdir / "pair_funnel", pairs.pair_funnel(
            rdir / "west_of_n_pairs", **filters, strategy=settings.strategy,
            pair_seed=pairs.seed_for(settings.strategy, settings.pair_seed)),
            schemas.PAIR_FUNNEL, where=f"round {k} pair_funnel")
        context.log.info(f"round {k}: funnel {funnel}")
        result = train_student(context, settings, h, teacher_dir=teacher, synthetic=kept.to_pylist(),
                               synthetic_version=content_hash(rdir / "filtered_pairs"),
                               out_dir=rdir / "student_reward_model", round_k=k)
        records.append(_record(k, rdir / "student_reward_model", teacher, result["student_eval"],
                               funnel=funnel, pair_stats=pairs.pair_stats(kept)))
        teacher = rdir / "student_reward_model"
    stale = [p for p in sorted((h.root / "rounds").glob("round_*")) if int(p.name.split("_")[1]) > settings.rounds]
    for path in stale:  # rounds of an earlier, longer run would read as part of this one
        context.log.info(f"removing {path} (beyond rounds={settings.rounds})")
        shutil.rmtree(path)
    return MaterializeResult(metadata={
        "rounds": MetadataValue.int(settings.rounds),
        "per_round": MetadataValue.md(_markdown(records)),
        "round_models": MetadataValue.json({r["round"]: r["model"] for r in records}),
    })


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
