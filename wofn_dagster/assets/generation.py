"""Inference assets, each materialized by a Beam job: candidates (N-way sampling) and their scores."""

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from dagster import AssetExecutionContext, AssetSpec, MetadataValue, multi_asset
from matplotlib.figure import Figure

from beam_jobs import sample_candidates, score_candidates
from wofn import models, pairwise, stages
from wofn.paths import content_hash
from wofn_dagster.assets.metadata import png_markdown, quantiles
from wofn_dagster.assets.runtime import INFERENCE_RETRY, forward_logs, no_retry_on_bad_input
from wofn_dagster.assets.tables import (
    count_rows,
    empty_result,
    error_result,
    error_summary,
    read_files,
    read_table,
    staged_partition,
    table_result,
)
from wofn_dagster.code_versions import code_version
from wofn_dagster.partitions import prompt_batches
from wofn_dagster.resources import (
    BeamRunnerResource,
    PolicyResource,
    RewardModelResource,
    WofnHomeResource,
    WofnSettings,
    run_settings,
)

_SAMPLING_CODE = code_version("beam_jobs.sample_candidates", own=__file__, files=("wofn/stages.py",))
_SCORING_CODE = code_version("beam_jobs.score_candidates", own=__file__, files=("wofn/stages.py",))


def _inference_spec(key: str, deps: list[str], code: str, description: str) -> AssetSpec:
    return AssetSpec(key, deps=deps, group_name="inference", kinds={"beam", "parquet"}, code_version=code,
                     description=description)


@multi_asset(name="candidates", partitions_def=prompt_batches, retry_policy=INFERENCE_RETRY, can_subset=False,
             specs=[_inference_spec("candidates", ["prompts"], _SAMPLING_CODE, "N responses per prompt of one prompt "
                                    "batch, sampled from the policy, with their log-likelihood under it"),
                    _inference_spec("candidate_errors", ["prompts"], _SAMPLING_CODE, "The prompts the sampling job "
                                    "could not sample (dead letters), each with its reason")])
def candidates(context: AssetExecutionContext, settings: WofnSettings, home: WofnHomeResource,
               policy: PolicyResource, beam_runner: BeamRunnerResource):
    """One prompt batch's candidates, by the sampling Beam job, and the prompts it could not sample."""
    h = home.home
    key = context.partition_key
    prompts_dir = h.partition_dir("prompts", key)
    n_prompts = count_rows(h, "prompts", key)
    context.log.info(f"batch {key}: sampling {n_prompts} prompts x N={settings.n} with {policy.model} "
                     f"({beam_runner.runner}, attempt {context.retry_number + 1})")
    started = time.monotonic()
    # a retry (or a rerun after a crash) with the same inputs and settings resumes the sampling job's shards
    resume = content_hash_of_text(json.dumps([content_hash(prompts_dir), [policy.model, policy.dtype, policy.engine],
                                              settings.n, settings.max_new_tokens, settings.temperature, settings.top_p,
                                              settings.seed, _SAMPLING_CODE]))
    with no_retry_on_bad_input(), forward_logs(context, "beam_jobs"), \
            staged_partition(h, "candidates", key, context.log, resume_key=resume) as staging, \
            staged_partition(h, "candidate_errors", key, context.log, resume_key=resume) as errors_staging:
        stats = sample_candidates.run(stages.sampling_argv(run_settings(settings, policy=policy), prompts_dir, staging,
                                                           errors_staging, beam_runner.args()), save_main_session=False)
    seconds = time.monotonic() - started
    count, stop, tokens, means, revision = _sampling_summary(h, key)
    context.log.info("sampled %d candidates, %d tokens in %.0fs (%.1f tokens/s)", count, tokens, seconds,
                     tokens / seconds)
    inputs = {"prompts": {key: content_hash(prompts_dir)}}
    yield table_result(h, "candidates", {
        "prompts": MetadataValue.int(n_prompts),
        "n": MetadataValue.int(settings.n),
        "policy": MetadataValue.text(policy.model),
        "policy_revision": MetadataValue.text(revision),
        "generated_tokens": MetadataValue.int(tokens),
        "stopped_at_eos_share": MetadataValue.float(stop / max(1, count)),
        "logprob_mean_quantiles": MetadataValue.json(quantiles(means)),
        "seconds": MetadataValue.float(seconds),
        "candidates_per_s": MetadataValue.float(count / seconds),
        "tokens_per_s": MetadataValue.float(tokens / seconds),
        "beam_counters": MetadataValue.json(stats),
        **error_summary(h, "candidate_errors", partition=key),
    }, context=context, partition=key, inputs=inputs,
        facts={"policy": policy.model, "policy_revision": revision, "n": settings.n, "seed": settings.seed,
               "temperature": settings.temperature, "top_p": settings.top_p, "max_new_tokens": settings.max_new_tokens})
    yield error_result(h, "candidate_errors", context=context, partition=key, inputs=inputs)


def _sampling_summary(h, key: str) -> tuple[int, int, int, np.ndarray, str]:
    """A batch's candidates, those stopped at EOS, generated tokens, each candidate's logprob_mean and the
    policy revision: one file at a time, the columns the metadata reads (10^6 prompts: 2M candidates)."""
    count = stop = tokens = 0
    means, revision = [], ""
    for rows in read_files(h, "candidates", key, columns=["finish_reason", "num_tokens", "logprob_mean",
                                                           "policy_revision"]):
        count += rows.num_rows
        stop += pc.sum(pc.equal(rows.column("finish_reason"), "stop")).as_py() or 0
        tokens += pc.sum(rows.column("num_tokens")).as_py() or 0
        means.append(rows.column("logprob_mean").to_numpy())
        revision = revision or (rows.column("policy_revision")[0].as_py() if rows.num_rows else "")
    return count, stop, tokens, np.concatenate(means) if means else np.zeros(0), revision


def content_hash_of_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def score_with(context: AssetExecutionContext, settings: WofnSettings, reward_models: RewardModelResource,
               beam_runner: BeamRunnerResource, candidates: Path | str, model_dir: Path, into,
               errors_into) -> tuple[dict, float]:
    """Run the scoring Beam job over `candidates` (a folder, file or glob) with `model_dir`, writing into
    the staging folders that `into` and `errors_into` (the candidates it could not score) yield
    (`staged(folder)`, or `staged_partition(...)` for one batch)."""
    started = time.monotonic()
    with no_retry_on_bad_input(), forward_logs(context, "beam_jobs"), into as staging, errors_into as errors_staging:
        stats = score_candidates.run(stages.scoring_argv(run_settings(settings, reward_models=reward_models),
                                                         candidates, staging, errors_staging, model_dir,
                                                         beam_runner.args()),
                                     save_main_session=False)
    return stats, time.monotonic() - started


def _reward_histogram(rewards: list[float], title: str) -> MetadataValue:
    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    ax.hist(rewards, bins=40)
    ax.set_xlabel("reward")
    ax.set_ylabel("candidates")
    ax.set_title(title)
    return png_markdown(fig)


_JUDGED = ["candidates", "base_reward_model"]


_SCORED_DOC = ("The base reward model's reward for each candidate of one prompt batch (pointwise teacher; "
               "empty under a pairwise one)")
_TOURNAMENT_DOC = ("The knockout-tournament best and worst candidate of each prompt of one batch (pairwise teacher; "
                   "empty under a pointwise one)")


@multi_asset(name="candidate_scores", partitions_def=prompt_batches, retry_policy=INFERENCE_RETRY, can_subset=False,
             specs=[_inference_spec("candidate_scores", _JUDGED, _SCORING_CODE, _SCORED_DOC),
                    _inference_spec("tournament_pairs", _JUDGED, _SCORING_CODE, _TOURNAMENT_DOC),
                    _inference_spec("score_errors", _JUDGED, _SCORING_CODE, "The candidates the scoring job could "
                                    "not score (dead letters), each with its reason")])
def candidate_scores(context: AssetExecutionContext, settings: WofnSettings, home: WofnHomeResource,
                     reward_models: RewardModelResource, beam_runner: BeamRunnerResource):
    """The base reward model's judgement of one prompt batch's candidates, by the scoring Beam job: a reward
    each (pointwise teacher, candidate_scores), or the knockout-tournament best and worst of each prompt
    (pairwise teacher, tournament_pairs); the other table of the two gets an empty batch."""
    h = home.home
    key = context.partition_key
    model_dir = h.model_dir("base_reward_model")
    is_pairwise = pairwise.is_pairwise(str(model_dir))
    table, other = ("tournament_pairs", "candidate_scores") if is_pairwise else ("candidate_scores", "tournament_pairs")
    candidates_dir = h.partition_dir("candidates", key)
    # a retry (or a rerun after a crash) with the same inputs and settings resumes the scoring job's shards
    # (the pairwise tournaments restart)
    resume = None if is_pairwise else content_hash_of_text(json.dumps(
        [content_hash(candidates_dir), models.read_manifest(str(model_dir)).get("revision"),
         [reward_models.score_dtype, reward_models.score_batch_size], _SCORING_CODE]))
    stats, seconds = score_with(context, settings, reward_models, beam_runner, candidates_dir, model_dir,
                                into=staged_partition(h, table, key, context.log, resume_key=resume),
                                errors_into=staged_partition(h, "score_errors", key, context.log, resume_key=resume))
    errors = error_summary(h, "score_errors", partition=key)
    teacher_revision = models.read_manifest(str(model_dir)).get("revision")
    lineage = {"context": context, "partition": key,
               "inputs": {"candidates": {key: content_hash(candidates_dir)},
                          "base_reward_model": teacher_revision or ""},
               "facts": {"reward_model": str(model_dir), "reward_model_revision": teacher_revision}}
    if table == "tournament_pairs":
        confidences = read_table(h, table, key, columns=["confidence"]).column("confidence").to_pylist()
        context.log.info(f"judged {stats.get('prompts_judged', 0)} prompts with "
                         f"{stats.get('comparisons', 0)} pairwise comparisons in {seconds:.0f}s")
        yield table_result(h, table, {
            "teacher": MetadataValue.text("pairwise"),
            "reward_model": MetadataValue.path(str(model_dir)),
            "confidence_quantiles": MetadataValue.json(quantiles(confidences)),
            "seconds": MetadataValue.float(seconds),
            "beam_counters": MetadataValue.json(stats),
            **errors,
        }, **lineage)
    else:
        rewards = read_table(h, table, key, columns=["reward"]).column("reward").to_numpy(zero_copy_only=False)
        finite = rewards[np.isfinite(rewards)]
        context.log.info("scored %d candidates in %.0fs", len(rewards), seconds)
        yield table_result(h, table, {
            "teacher": MetadataValue.text("pointwise"),
            "reward_model": MetadataValue.path(str(model_dir)),
            "reward_quantiles": MetadataValue.json(quantiles(finite)),
            "non_finite_rewards": MetadataValue.int(len(rewards) - len(finite)),
            "seconds": MetadataValue.float(seconds),
            "candidates_per_s": MetadataValue.float(len(rewards) / seconds),
            "reward_histogram": _reward_histogram(finite, f"batch {key}: base rewards"),
            "beam_counters": MetadataValue.json(stats),
            **errors,
        }, **lineage)
    yield empty_result(h, other, f"the base reward model is {'pairwise' if is_pairwise else 'pointwise'}: "
                       f"it writes {table}", context=context, partition=key, inputs=lineage["inputs"])
    yield error_result(h, "score_errors", context=context, partition=key, inputs=lineage["inputs"])
