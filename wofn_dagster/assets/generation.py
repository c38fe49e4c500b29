"""Inference assets, each materialized by a Beam job: candidates (N-way sampling) and their scores."""

import math
import time
from pathlib import Path

from matplotlib.figure import Figure
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, RetryPolicy, asset

from beam_jobs import sample_candidates, score_candidates
from wofn import pairwise
from wofn_dagster.assets.common import error_summary, forward_logs, png_markdown, quantiles, read_table, staged, table_result
from wofn_dagster.resources import BeamRunnerResource, WofnHomeResource, WofnSettings

_RETRY = RetryPolicy(max_retries=1, delay=5)


@asset(group_name="inference", deps=["prompts"], kinds={"beam", "parquet"}, retry_policy=_RETRY)
def candidates(context: AssetExecutionContext, settings: WofnSettings, home: WofnHomeResource,
               beam_runner: BeamRunnerResource) -> MaterializeResult:
    """N responses per prompt sampled from the policy, with their log-likelihood under it."""
    h = home.home
    n_prompts = len(read_table(h, "prompts"))
    context.log.info("sampling %d prompts x N=%d with %s (%s)", n_prompts, settings.n, settings.policy, beam_runner.runner)
    started = time.monotonic()
    with forward_logs(context, "beam_jobs"), staged(h.table_dir("candidates")) as staging, \
            staged(h.table_dir("candidate_errors")) as errors_staging:
        stats = sample_candidates.run([
            "--prompts", str(h.table_dir("prompts")), "--output", str(staging), "--errors", str(errors_staging),
            "--policy", settings.policy, "--n", str(settings.n),
            "--max-new-tokens", str(settings.max_new_tokens), "--temperature", str(settings.temperature),
            "--top-p", str(settings.top_p), "--seed", str(settings.seed),
            "--batch-size", str(settings.sample_batch_size), "--dtype", settings.policy_dtype,
            "--engine", settings.sampling_engine, *(["--allow-pickle"] if settings.allow_pickle_weights else []),
            "--device", settings.device, "--torch-threads", str(settings.threads()),
            *beam_runner.args(),
        ], save_main_session=False)
    seconds = time.monotonic() - started
    rows = read_table(h, "candidates")
    stop = sum(1 for r in rows.column("finish_reason").to_pylist() if r == "stop")
    tokens = sum(rows.column("num_tokens").to_pylist())
    means = rows.column("logprob_mean").to_pylist()
    context.log.info("sampled %d candidates, %d tokens in %.0fs (%.1f tokens/s)", rows.num_rows, tokens, seconds, tokens / seconds)
    return table_result(h, "candidates", {
        "prompts": MetadataValue.int(n_prompts),
        "n": MetadataValue.int(settings.n),
        "policy": MetadataValue.text(settings.policy),
        "policy_revision": MetadataValue.text(rows.column("policy_revision")[0].as_py() if rows.num_rows else ""),
        "generated_tokens": MetadataValue.int(tokens),
        "stopped_at_eos_share": MetadataValue.float(stop / max(1, rows.num_rows)),
        "logprob_mean_quantiles": MetadataValue.json(quantiles(means)),
        "seconds": MetadataValue.float(seconds),
        "candidates_per_s": MetadataValue.float(rows.num_rows / seconds),
        "tokens_per_s": MetadataValue.float(tokens / seconds),
        "beam_counters": MetadataValue.json(stats),
        **error_summary(h, "candidate_errors"),
    })


def score_with(context: AssetExecutionContext, settings: WofnSettings, beam_runner: BeamRunnerResource,
               candidates_dir: Path, model_dir: Path, out_dir: Path) -> tuple[dict, float]:
    """Run the scoring Beam job over `candidates_dir` with `model_dir` into `out_dir` (swapped in whole)."""
    started = time.monotonic()
    errors_dir = out_dir.parent / "score_errors"
    with forward_logs(context, "beam_jobs"), staged(out_dir) as staging, staged(errors_dir) as errors_staging:
        stats = score_candidates.run([
            "--candidates", str(candidates_dir), "--output", str(staging), "--errors", str(errors_staging),
            "--reward-model", str(model_dir), "--batch-size", str(settings.score_batch_size),
            "--dtype", settings.score_dtype, *(["--allow-pickle"] if settings.allow_pickle_weights else []),
            "--device", settings.device, "--torch-threads", str(settings.threads()),
            *beam_runner.args(),
        ], save_main_session=False)
    return stats, time.monotonic() - started


@asset(group_name="inference", deps=["candidates", "base_reward_model"], kinds={"beam", "parquet"}, retry_policy=_RETRY)
def candidate_scores(context: AssetExecutionContext, settings: WofnSettings, home: WofnHomeResource,
                     beam_runner: BeamRunnerResource) -> MaterializeResult:
    """The base reward model's judgement of every candidate: a reward each (pointwise teacher), or
    the knockout-tournament best and worst of each prompt (pairwise teacher, table tournament_pairs)."""
    h = home.home
    model_dir = h.model_dir("base_reward_model")
    table = "tournament_pairs" if pairwise.is_pairwise(str(model_dir)) else "candidate_scores"
    stats, seconds = score_with(context, settings, beam_runner, h.table_dir("candidates"), model_dir,
                                h.table_dir(table))
    if table == "tournament_pairs":
        confidences = read_table(h, table).column("confidence").to_pylist()
        context.log.info(f"judged {stats.get('prompts_judged', 0)} prompts with "
                         f"{stats.get('comparisons', 0)} pairwise comparisons in {seconds:.0f}s")
        return table_result(h, table, {
            "teacher": MetadataValue.text("pairwise"),
            "reward_model": MetadataValue.path(str(model_dir)),
            "confidence_quantiles": MetadataValue.json(quantiles(confidences)),
            "seconds": MetadataValue.float(seconds),
            "beam_counters": MetadataValue.json(stats),
            **error_summary(h, "score_errors"),
        })
    rewards = [r for r in read_table(h, table).column("reward").to_pylist() if math.isfinite(r)]
    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    ax.hist(rewards, bins=40)
    ax.set_xlabel("base reward")
    ax.set_ylabel("candidates")
    ax.set_title("candidate rewards")
    context.log.info("scored %d candidates in %.0fs", len(rewards), seconds)
    return table_result(h, table, {
        "teacher": MetadataValue.text("pointwise"),
        "reward_model": MetadataValue.path(str(model_dir)),
        "reward_quantiles": MetadataValue.json(quantiles(rewards)),
        "seconds": MetadataValue.float(seconds),
        "candidates_per_s": MetadataValue.float(len(rewards) / seconds),
        "reward_histogram": png_markdown(fig),
        "beam_counters": MetadataValue.json(stats),
        **error_summary(h, "score_errors"),
    })
