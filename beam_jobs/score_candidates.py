"""Score every candidate with a reward model, or judge them by tournaments (Beam job).

    python -m beam_jobs.score_candidates --candidates PATH --output DIR --reward-model MODEL \
        [--teacher-kind auto|pointwise|pairwise] [--max-length L] [--prompts-per-batch P] \
        [Beam pipeline options such as --runner]

PATH is a Parquet file or folder of wofn.schemas.CANDIDATES rows. MODEL is a trained reward-model
folder, a HF sequence-classification model, or a backbone name (an untrained scalar head, for
smoke tests and benchmarks).

Pointwise teacher (a scalar reward model): writes wofn.schemas.CANDIDATE_SCORES shards to DIR,
one row per candidate with a finite reward (a teacher ensemble, `wofn.reward_ensemble`: the
members' mean, and each member's in member_rewards); a candidate that could not be scored (a non-finite
reward, an error in its batch that recurs when it is scored alone) gets a wofn.schemas.ERRORS
row in the errors folder (`--errors`, default DIR + "_errors") instead.

The pointwise job is cut into shards by a hash of prompt_id (`--candidates-per-shard`, default
512, or `--num-shards`), like the sampling job: a shard is scored, then its errors file and its
scores file are written (temporary name, then renamed), so a killed job keeps the shards it
finished; rerun with the same arguments, it scores only the missing shards, with the same rows
(a shard's candidates are sorted by length and cut into calls the same way each time), and
nothing twice. The folder records what its scores depend on (`_scoring_job.json`, the reward
model's content hash included); a rerun with other settings or another model is refused. A call
that runs out of memory is halved, down to one candidate. On the DirectRunner the shards run in
waves of about `--wave-rows` candidates (default 100,000), one pipeline each, so the job's memory
is a wave's however many candidates there are (`beam_jobs.io.run_sharded`).

Pairwise teacher (a preference model, `wofn.pairwise`): candidates are grouped by prompt_id and
the best and worst of each prompt are found by knockout tournaments (`wofn.tournament`, every
round of a batch of prompts is one batched model call); writes wofn.schemas.TOURNAMENT_PAIRS
shards to DIR, one row per prompt that has a pair (N >= 2). `--teacher-kind auto` (default)
picks pairwise when the model folder's manifest kind is "pairwise_preference_model".
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
from typing import Any, Iterable, Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from beam_jobs import inference
from beam_jobs.inference import Runtime, WofnModelHandler, add_runtime_args, runtime_from_args
from beam_jobs.io import (
    ShardedInference,
    WriteShards,
    add_wave_arg,
    count_rows,
    input_pattern,
    new_pipeline,
    require_columns,
    resume,
    run_sharded,
    run_to_completion,
    shard_count,
)
from wofn import evaluation, models, pairwise, schemas, scoring, tournament
from wofn.settings import TEACHERS, Settings, setting_help

log = logging.getLogger(__name__)
JOB_RECORD = "_scoring_job.json"


class _TeacherHandler(WofnModelHandler):
    """Loads a reward model (pointwise or pairwise) and knows its input length."""

    def __init__(self, reward_model: str, runtime: Runtime, max_length: int | None = None,
                 token_budget: int | None = None, expected: int | None = None):
        super().__init__(reward_model, runtime, expected)
        self._max_length = max_length
        self._token_budget = token_budget

    def _load(self) -> models.LoadedModel:
        rt = self._runtime
        return models.load_reward_model(self._model, device=self.device, dtype=rt.dtype,
                                        trust_remote_code=rt.trust_remote_code, allow_pickle=rt.allow_pickle)

    def _length(self, model: models.LoadedModel) -> int:
        """--max-length, else the model manifest's, else evaluation.DEFAULT_MAX_LENGTH."""
        return self._max_length or models.read_manifest(model.path).get("max_length", evaluation.DEFAULT_MAX_LENGTH)


class RewardHandler(_TeacherHandler):
    """(shard, candidate rows) in, one element at a time; (shard, score rows, error rows) out.
    Inside a shard, candidates are sorted by length and cut into calls of `batch_size`, the longest
    first; a call that runs out of memory is halved, down to one candidate."""

    label = "score_candidates"
    unit = "candidates"

    def batch_elements_kwargs(self) -> dict:
        return {"min_batch_size": 1, "max_batch_size": 1}  # one shard per call; it batches inside

    def run_inference(self, batch: Sequence[tuple[int, list[dict]]], model: models.LoadedModel,
                      inference_args: dict[str, Any] | None = None) -> Iterable[tuple[int, list, list]]:
        return [(shard, *self._score_shard(model, rows)) for shard, rows in batch]

    def _score_shard(self, model: models.LoadedModel, rows: list[dict]) -> tuple[list[dict], list[dict]]:
        max_length = self._length(model)
        rows = sorted(rows, key=lambda r: (len(r["prompt"]) + len(r["response"]), r["prompt_id"], r["candidate_idx"]))
        size = self._runtime.batch_size
        scores, errors = [], []
        for chunk in reversed([rows[i : i + size] for i in range(0, len(rows), size)]):
            done, failed = inference.run_halving(
                chunk, lambda part: scoring.score_members(model, [r["prompt"] for r in part],
                                                          [r["response"] for r in part], max_length,
                                                          self._token_budget), "candidates")
            results = [(r, reward) for part, rewards in done for r, reward in zip(part, rewards)] + failed
            for r, reward in results:
                row = {"prompt_id": r["prompt_id"], "candidate_idx": r["candidate_idx"],
                       "reward": reward[0] if isinstance(reward, tuple) else reward,
                       "reward_model": model.name, "reward_model_revision": model.revision,
                       "member_rewards": reward[1] if isinstance(reward, tuple) else None}
                failure = _failure(row)
                (errors if failure else scores).append(failure or row)
            beam.metrics.Metrics.counter("wofn", "candidates_scored").inc(len(chunk))
            self._report(len(chunk))
        beam.metrics.Metrics.counter("wofn", "errors").inc(len(errors))
        return scores, errors


def _failure(row: dict) -> dict | None:
    """The wofn.schemas.ERRORS row for a score row without a finite reward, else None."""
    reward = row["reward"]
    if isinstance(reward, BaseException):
        reason = "out_of_memory" if inference.is_out_of_memory(reward) else "scoring_error"
        detail = f"{type(reward).__name__}: {reward}"
    elif reward is None or not math.isfinite(reward):
        reason, detail = "non_finite_reward", f"reward {reward}"
    else:
        return None
    return {"stage": "scoring", "reason": reason, "prompt_id": row["prompt_id"],
            "candidate_idx": row["candidate_idx"], "source": None, "row": None, "detail": detail[:2000]}


class ScoreCandidates(ShardedInference):
    """Candidate rows in; per shard (a hash of prompt_id) one (shard, score rows, error rows) out: a
    wofn.schemas.CANDIDATE_SCORES row per candidate with a finite reward, a wofn.schemas.ERRORS row
    per other candidate. Arguments as ShardedInference's, with a RewardHandler."""


class TournamentHandler(_TeacherHandler):
    """Prompt groups in (prompt_id, prompt, candidates: [(candidate_idx, response)]); per group a
    list with one wofn.schemas.TOURNAMENT_PAIRS row (empty when the prompt has no pair)."""

    label = "score_candidates (pairwise)"
    unit = "prompts"

    def run_inference(self, batch: Sequence[dict], model: models.LoadedModel,
                      inference_args: dict[str, Any] | None = None) -> Iterable[list]:
        if len({g["prompt_id"] for g in batch}) != len(batch):
            raise ValueError("a batch holds the same prompt_id twice; group candidates by prompt_id first")
        done, failed = inference.run_halving(batch, lambda groups: self._judge(groups, model), "prompts")
        if failed:
            raise failed[0][1]
        return [rows for _, out in done for rows in out]

    def _judge(self, batch: list[dict], model: models.LoadedModel) -> list[list]:
        max_length = self._length(model)
        prompts = {g["prompt_id"]: g["prompt"] for g in batch}
        responses = {g["prompt_id"]: dict(g["candidates"]) for g in batch}

        def judge(matches: list[tournament.Match]) -> list[float]:
            return pairwise.compare(
                model, [prompts[p] for p, _, _ in matches], [responses[p][i] for p, i, _ in matches],
                [responses[p][j] for p, _, j in matches], max_length, self._token_budget)

        results = tournament.knockout({p: sorted(r) for p, r in responses.items()}, judge)
        comparisons = sum(r.comparisons for r in results.values())
        beam.metrics.Metrics.counter("wofn", "comparisons").inc(comparisons)
        beam.metrics.Metrics.counter("wofn", "prompts_judged").inc(len(batch))
        beam.metrics.Metrics.counter("wofn", "candidates_judged").inc(sum(len(r) for r in responses.values()))
        beam.metrics.Metrics.counter("wofn", "prompts_without_pair").inc(
            sum(1 for r in results.values() if not r.has_pair))
        self._report(len(batch))
        out = []
        for group in batch:
            result = results[group["prompt_id"]]
            out.append([{
                "prompt_id": group["prompt_id"], "chosen_idx": result.best_idx, "rejected_idx": result.worst_idx,
                "logit": result.logit, "confidence": result.confidence, "comparisons": result.comparisons,
                "n_candidates": result.n_candidates, "reward_model": model.name,
                "reward_model_revision": model.revision,
            }] if result.has_pair else [])
        return out


def _key_by_prompt(row: dict) -> tuple[str, dict]:
    return row["prompt_id"], row


def _group_of(element: tuple[str, Iterable[dict]]) -> dict:
    """(prompt_id, candidate rows) -> {prompt_id, prompt, candidates: [(candidate_idx, response)]}."""
    prompt_id, rows = element
    rows = sorted(rows, key=lambda r: r["candidate_idx"])
    candidates: dict[int, str] = {}
    for row in rows:
        idx = int(row["candidate_idx"])
        if idx in candidates and candidates[idx] != row["response"]:
            raise ValueError(f"prompt {prompt_id!r}: two different candidates with candidate_idx {idx}")
        candidates[idx] = row["response"]
    return {"prompt_id": prompt_id, "prompt": rows[0]["prompt"], "candidates": sorted(candidates.items())}


def _rows(rows: list) -> list:
    return rows


class JudgeCandidates(beam.PTransform):
    """Candidate rows in; one wofn.schemas.TOURNAMENT_PAIRS row per prompt with a pair out."""

    def __init__(self, handler: TournamentHandler):
        super().__init__()
        self._handler = handler

    def expand(self, candidate_rows):
        return (
            candidate_rows
            | "KeyByPrompt" >> beam.Map(_key_by_prompt)
            | "GroupByPrompt" >> beam.GroupByKey()
            | "ToGroup" >> beam.Map(_group_of)
            | "RunTournaments" >> RunInference(self._handler)
            | "FlattenPairs" >> beam.FlatMap(_rows)
        )


def teacher_kind(reward_model: str, requested: str = "auto") -> str:
    """"pointwise" or "pairwise": `requested`, or for "auto" the model folder's manifest kind."""
    if requested not in ("auto", *TEACHERS):
        raise ValueError(f"teacher kind {requested!r}: expected auto, pointwise or pairwise")
    if requested != "auto":
        return requested
    return "pairwise" if pairwise.is_pairwise(reward_model) else "pointwise"


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", required=True, help="Parquet file or folder of candidates")
    parser.add_argument("--output", required=True, help="folder for the score shards")
    parser.add_argument("--reward-model", required=True, help="RM folder, HF id, or backbone name")
    parser.add_argument("--errors", default=None,
                        help="pointwise: folder for candidates that could not be scored (default: OUTPUT + '_errors')")
    parser.add_argument("--max-length", type=int, default=None, help="default: the RM manifest's, else 256")
    parser.add_argument("--token-budget", type=int, default=None,
                        help="padded tokens per forward pass (default: 2048 on CPU, 16384 on GPU)")
    parser.add_argument("--teacher-kind", choices=["auto", *TEACHERS], default="auto",
                        help="pointwise: score each candidate; pairwise: knockout tournaments per prompt; "
                             "auto: pairwise when the model's manifest kind is pairwise_preference_model")
    parser.add_argument("--prompts-per-batch", type=int, default=16,
                        help="pairwise: prompts whose tournaments share the batched model calls")
    add_wave_arg(parser)
    parser.add_argument("--candidates-per-shard", type=int, default=512,
                        help="shard size when --num-shards is not given: the unit of resuming and of parallelism")
    add_runtime_args(parser, batch_size=Settings.score_batch_size,
                     batch_help="pointwise: " + setting_help("score_batch_size") + " (sorted by length in a shard)",
                     num_shards=None, shards_help="output shards (default: from --candidates-per-shard)")
    return parser.parse_known_args(argv)


def job_record(known: argparse.Namespace, num_shards: int) -> dict:
    """What a shard's scores depend on; a resumed run must match it."""
    return {"candidates": known.candidates, "reward_model": known.reward_model,
            "reward_model_revision": models.revision(models.resolve(known.reward_model)),
            "max_length": known.max_length, "token_budget": known.token_budget, "num_shards": num_shards,
            "dtype": models.resolve_dtype(known.dtype, known.device)}


CANDIDATE_COLUMNS = ("prompt_id", "candidate_idx", "prompt", "response")


def _read_candidates(pipeline: beam.Pipeline, path: str):
    """The candidate columns a teacher reads, from a Parquet file or folder."""
    return pipeline | "ReadCandidates" >> beam.io.ReadFromParquet(input_pattern(path), columns=list(CANDIDATE_COLUMNS))


def run(argv=None, save_main_session: bool = True) -> dict[str, int]:
    known, pipeline_args = parse_args(argv)
    require_columns(known.candidates, CANDIDATE_COLUMNS, "a candidates file (wofn.schemas.CANDIDATES)")
    n_candidates = count_rows(known.candidates)
    num_shards = shard_count(known.num_shards, n_candidates, known.candidates_per_shard, "--candidates-per-shard")
    if teacher_kind(known.reward_model, known.teacher_kind) == "pairwise":
        return _run_pairwise(known, pipeline_args, save_main_session, num_shards)
    start = resume(known.output, known.errors, JOB_RECORD, job_record(known, num_shards), num_shards, n_candidates,
                   log)
    handler = RewardHandler(known.reward_model, runtime_from_args(known), known.max_length, known.token_budget,
                            start.expected)
    options = inference.worker_options(handler.runtime, pipeline_args)
    return run_sharded(lambda: new_pipeline(options, save_main_session),
                       lambda pipeline: _read_candidates(pipeline, known.candidates), "ScoreCandidates",
                       ScoreCandidates(handler, num_shards, start.done), known.output, start, num_shards,
                       schemas.CANDIDATE_SCORES, log, n_candidates, known.wave_rows)


def _run_pairwise(known: argparse.Namespace, pipeline_args: list[str], save_main_session: bool,
                  num_shards: int) -> dict[str, int]:
    if known.prompts_per_batch < 1:
        raise ValueError(f"--prompts-per-batch must be >= 1, got {known.prompts_per_batch}")
    runtime = dataclasses.replace(runtime_from_args(known), batch_size=known.prompts_per_batch)
    handler = TournamentHandler(known.reward_model, runtime, known.max_length, known.token_budget)
    pipeline = new_pipeline(inference.worker_options(handler.runtime, pipeline_args), save_main_session)
    _ = (
        _read_candidates(pipeline, known.candidates)
        | "JudgeCandidates" >> JudgeCandidates(handler)
        | "WriteTournamentPairs" >> WriteShards(known.output, schemas.TOURNAMENT_PAIRS, num_shards,
                                                sort_keys=("prompt_id",))
    )
    return run_to_completion(pipeline, log)


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run()
