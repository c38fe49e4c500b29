"""Sample N responses per prompt from a causal-LM policy (Beam job).

    python -m beam_jobs.sample_candidates --prompts PATH --output DIR --policy MODEL --n N \
        --max-new-tokens M [--temperature T] [--seed S] [--engine torch|vllm] [--device cuda --dtype bfloat16]
        [--errors DIR] [--prompts-per-shard K | --num-shards S] [Beam pipeline options such as --runner]

PATH is a Parquet file or folder with columns `prompt_id, prompt` (wofn.schemas.PROMPTS); a file
with only `prompt` gets the prompt_id the `prompts` asset would give (`wofn.data.prompt_id`).
Writes wofn.schemas.CANDIDATES shards to DIR, and the prompts or candidates that failed to
wofn.schemas.ERRORS shards in the errors folder (default DIR + "_errors"): every input prompt
ends up with its candidates or with a row there.

Work is cut into shards by a hash of prompt_id (`--prompts-per-shard`, default 64 prompts per
shard, or `--num-shards`). A shard is sampled and then written at once (temporary name, then
renamed), so a job that is killed keeps the shards it finished. Run it again with the same
arguments and it samples only the missing shards: seeds are per (prompt, sample), so a redone
shard has the same rows, and nothing is duplicated. The output folder records the settings it
was written with (`_sampling_job.json`); a rerun with other settings is refused. On the
DirectRunner the shards run in waves of about `--wave-rows` prompts (default 100,000), one
pipeline each, so the job's memory is a wave's however many prompts there are.

Inside a shard, prompts are sorted by length, the longest first. The torch engine samples the
shard in one call that decodes `--slots` rows (prompt x sample) at once, a row that ends handing
its slot to the next waiting one (continuous batching, `wofn.generation`); where the policy cannot
decode in slots (sliding-window or recurrent layers), and with vllm, the prompts are cut into
batches of `--batch-size`, so a batch's prompts pad to nearly the same width. A call that runs out
of memory is halved and retried, down to one prompt (counted as `oom_halvings`); a call that
fails otherwise is retried one prompt at a time, so one bad prompt fails alone.

`--device cuda` on a node of several GPUs: one worker process per GPU (`--gpus`, default all;
the DirectRunner runs in multi_processing mode), each loading one model copy on its own GPU.
"""

from __future__ import annotations

import argparse
import logging
import math
from typing import Any, Iterable, Sequence

import apache_beam as beam

from beam_jobs import failpoints
from beam_jobs.inference import (
    Runtime,
    WofnModelHandler,
    add_runtime_args,
    is_out_of_memory,
    run_halving,
    runtime_from_args,
    worker_options,
)
from beam_jobs.io import (
    ShardedInference,
    add_wave_arg,
    count_rows,
    input_pattern,
    missing_columns,
    new_pipeline,
    require_columns,
    resume,
    run_sharded,
    shard_count,
)
from wofn import data, generation, models, schemas, settings, vllm_sampling
from wofn.settings import Settings, setting_help

log = logging.getLogger(__name__)
ENGINES = settings.ENGINES
JOB_RECORD = "_sampling_job.json"


def by_length(rows: list[dict]) -> list[dict]:
    """Prompt rows sorted by length (then prompt_id), the shortest first."""
    return sorted(rows, key=lambda r: (len(r["prompt"]), r["prompt_id"]))


def length_sorted_batches(rows: list[dict], batch_size: int) -> list[list[dict]]:
    """Prompt rows sorted by length (then prompt_id), cut into batches of `batch_size`."""
    rows = by_length(rows)
    return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]


def error_row(stage: str, reason: str, detail: str, prompt_id: str | None = None,
              candidate_idx: int | None = None) -> dict:
    return {"stage": stage, "reason": reason, "prompt_id": prompt_id, "candidate_idx": candidate_idx,
            "source": None, "row": None, "detail": detail[:2000]}


def _failure_reason(exc: BaseException) -> str:
    return "out_of_memory" if is_out_of_memory(exc) else "sampling_error"


class PolicyHandler(WofnModelHandler):
    """(shard, prompt rows) in; (shard, candidate rows, error rows) out, one element at a time."""

    label = "sample_candidates"
    unit = "prompts"

    def __init__(self, policy: str, params: generation.SamplingParams, runtime: Runtime,
                 expected_prompts: int | None = None, engine: str = "torch", slots: int | None = None):
        super().__init__(policy, runtime, expected_prompts)
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r}: expected one of {ENGINES}")
        self._params = params
        self._engine = engine
        self._slots = Settings.sample_slots if slots is None else slots

    def _load(self):
        rt = self._runtime
        if self._engine == "vllm":
            return vllm_sampling.load(self._model, dtype=models.resolve_dtype(rt.dtype, self.device),
                                      trust_remote_code=rt.trust_remote_code, device=self.device)
        return models.load_policy(self._model, device=self.device, dtype=rt.dtype,
                                  trust_remote_code=rt.trust_remote_code, allow_pickle=rt.allow_pickle)

    def batch_elements_kwargs(self) -> dict:
        return {"min_batch_size": 1, "max_batch_size": 1}  # one shard per call; it batches inside

    def run_inference(self, batch: Sequence[tuple[int, list[dict]]], model,
                      inference_args: dict[str, Any] | None = None) -> Iterable[tuple[int, list, list]]:
        return [(shard, *self._sample_shard(model, prompt_rows)) for shard, prompt_rows in batch]

    def _sample_shard(self, model, prompt_rows: list[dict]) -> tuple[list[dict], list[dict]]:
        failpoints.hit("before_sample")
        sampler = vllm_sampling.sample if self._engine == "vllm" else generation.sample
        rows, errors, usable = [], [], []
        for row in _unique(prompt_rows, errors):
            problem = self._check_prompt(model, row)
            if problem:
                errors.append(problem)
            else:
                usable.append(row)
        continuous = self._engine == "torch" and generation.slot_engine_supported(model.model)
        if continuous:  # the whole shard in one call, the longest prompts first; it reports as prompts finish
            chunks = [by_length(usable)[::-1]] if usable else []

            def call(part):
                return generation.sample(model, [(r["prompt_id"], r["prompt"]) for r in part], self._params,
                                         slots=self._slots, progress=self._report)
        else:  # the longest batch first: a run that cannot fit fails (or halves) in its first minute
            chunks = list(reversed(length_sorted_batches(usable, self._runtime.batch_size)))

            def call(part):
                return sampler(model, [(r["prompt_id"], r["prompt"]) for r in part], self._params)
        for chunk in chunks:
            done, failed = run_halving(chunk, call, "prompts")
            got = [candidate for _, candidates in done for candidate in candidates]
            for r, exc in failed:
                errors.append(error_row("sampling", _failure_reason(exc), f"{type(exc).__name__}: {exc}",
                                        r["prompt_id"]))
            for candidate in got:
                if math.isfinite(candidate["logprob_sum"]):
                    rows.append(candidate)
                else:
                    errors.append(error_row("sampling", "non_finite_logprob",
                                            f"log-probability {candidate['logprob_sum']}",
                                            candidate["prompt_id"], candidate["candidate_idx"]))
            tokens = sum(c["num_tokens"] for c in got)
            beam.metrics.Metrics.counter("wofn", "prompts_sampled").inc(len(chunk))
            beam.metrics.Metrics.counter("wofn", "generated_tokens").inc(tokens)
            if not continuous:
                self._report(len(chunk), tokens)
        beam.metrics.Metrics.counter("wofn", "candidates").inc(len(rows))
        beam.metrics.Metrics.counter("wofn", "errors").inc(len(errors))
        return rows, errors

    def _check_prompt(self, model, row: dict) -> dict | None:
        if not row["prompt"] or not row["prompt"].strip():
            return error_row("sampling", "empty_prompt", "the prompt is empty", row["prompt_id"])
        if "\x00" in row["prompt"]:
            return error_row("sampling", "nul_bytes", "the prompt holds a NUL byte", row["prompt_id"])
        try:
            generation.encode_prompt(model.tokenizer, row["prompt"], self._params.max_prompt_tokens)
        except Exception as exc:  # noqa: BLE001 - recorded in the errors table, with the message
            return error_row("sampling", "tokenizer_error", f"{type(exc).__name__}: {exc}", row["prompt_id"])
        return None


def _unique(prompt_rows: list[dict], errors: list[dict]) -> list[dict]:
    """One row per prompt_id (the first by prompt text); repeats become error rows."""
    seen: dict[str, dict] = {}
    for row in sorted(prompt_rows, key=lambda r: (r["prompt_id"], r["prompt"] or "")):
        if row["prompt_id"] in seen:
            errors.append(error_row("sampling", "duplicate_prompt", "prompt_id appears more than once in the input",
                                    row["prompt_id"]))
        else:
            seen[row["prompt_id"]] = row
    return list(seen.values())


class SampleCandidates(ShardedInference):
    """Prompt rows (prompt_id, prompt) in; per shard one (shard, candidate rows, error rows) out.
    Arguments as ShardedInference's, with a PolicyHandler."""


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", required=True, help="Parquet file or folder of prompts")
    parser.add_argument("--output", required=True, help="folder for the candidate shards")
    parser.add_argument("--errors", default=None, help="folder for the error shards (default: OUTPUT + '_errors')")
    # the flags that are settings take their defaults and help from wofn/settings.py
    parser.add_argument("--policy", required=True, help=setting_help("policy"))
    parser.add_argument("--n", type=int, required=True, help=setting_help("n"))
    parser.add_argument("--max-new-tokens", type=int, required=True, help=setting_help("max_new_tokens"))
    parser.add_argument("--temperature", type=float, default=Settings.temperature, help=setting_help("temperature"))
    parser.add_argument("--top-p", type=float, default=Settings.top_p, help=setting_help("top_p"))
    parser.add_argument("--seed", type=int, default=Settings.seed,
                        help="global seed; each (prompt, sample) derives its own")
    parser.add_argument("--max-prompt-tokens", type=int, default=1024, help="longer prompts are cut from the left")
    parser.add_argument("--engine", choices=ENGINES, default=Settings.sampling_engine,
                        help=setting_help("sampling_engine"))
    parser.add_argument("--slots", type=int, default=Settings.sample_slots, help=setting_help("sample_slots"))
    parser.add_argument("--prompts-per-shard", type=int, default=64,
                        help="shard size when --num-shards is not given: the unit of resuming and of parallelism")
    add_wave_arg(parser)
    parser.add_argument("--max-error-fraction", type=float, default=0.5,
                        help="fail the job when more than this share of the prompts ends in the errors table")
    add_runtime_args(parser, batch_size=Settings.sample_batch_size,
                     batch_help=setting_help("sample_batch_size") + " (sorted by length in a shard)",
                     num_shards=None, shards_help="output shards (default: from --prompts-per-shard)")
    return parser.parse_known_args(argv)


def job_record(known: argparse.Namespace, num_shards: int) -> dict:
    """What a shard's rows depend on; a resumed run must match it."""
    return {"prompts": known.prompts, "policy": known.policy, "engine": known.engine, "n": known.n,
            "max_new_tokens": known.max_new_tokens, "temperature": known.temperature, "top_p": known.top_p,
            "seed": known.seed, "max_prompt_tokens": known.max_prompt_tokens, "num_shards": num_shards,
            "dtype": models.resolve_dtype(known.dtype, known.device)}


def _with_prompt_id(row: dict) -> dict:
    return {"prompt_id": data.prompt_id(row["prompt"] or ""), "prompt": row["prompt"]}


def read_prompts(pipeline: beam.Pipeline, path: str, derive_ids: bool):
    """The prompt rows of `path` (it has a `prompt` column); with `derive_ids` (a file of it has no
    prompt_id column), each gets the id the `prompts` asset gives its text."""
    if derive_ids:
        log.info("%s has no prompt_id column: each prompt gets the id of its text (wofn.data.prompt_id)", path)
        return (pipeline | "ReadPrompts" >> beam.io.ReadFromParquet(input_pattern(path), columns=["prompt"])
                | "DerivePromptIds" >> beam.Map(_with_prompt_id))
    return pipeline | "ReadPrompts" >> beam.io.ReadFromParquet(input_pattern(path), columns=["prompt_id", "prompt"])


def run(argv=None, save_main_session: bool = True) -> dict[str, int]:
    known, pipeline_args = parse_args(argv)
    params = generation.SamplingParams(
        n=known.n, max_new_tokens=known.max_new_tokens, temperature=known.temperature,
        top_p=known.top_p, seed=known.seed, max_prompt_tokens=known.max_prompt_tokens,
    )
    if known.engine == "vllm":
        vllm_sampling.require_vllm()  # fail before the pipeline starts, with the install hint
    require_columns(known.prompts, ("prompt",), "a prompt file")  # before anything is written
    derive_ids = missing_columns(known.prompts, ("prompt_id",)) is not None
    n_prompts = count_rows(known.prompts)
    num_shards = shard_count(known.num_shards, n_prompts, known.prompts_per_shard, "--prompts-per-shard")
    start = resume(known.output, known.errors, JOB_RECORD, job_record(known, num_shards), num_shards, n_prompts, log)
    handler = PolicyHandler(known.policy, params, runtime_from_args(known), start.expected, known.engine, known.slots)
    options = worker_options(handler.runtime, pipeline_args)
    stats = run_sharded(lambda: new_pipeline(options, save_main_session),
                        lambda pipeline: read_prompts(pipeline, known.prompts, derive_ids), "SampleCandidates",
                        SampleCandidates(handler, num_shards, start.done), known.output, start, num_shards,
                        schemas.CANDIDATES, log, n_prompts, known.wave_rows)
    _check_error_share(start.errors_dir, n_prompts, known.max_error_fraction)
    return stats


def _check_error_share(errors_dir: str, n_prompts: int | None, max_fraction: float) -> None:
    failed = count_rows(errors_dir) or 0
    if n_prompts and failed / n_prompts > max_fraction:
        raise RuntimeError(f"{failed} of {n_prompts} prompts or candidates failed (> {max_fraction:.0%}); "
                           f"see the errors table in {errors_dir}")


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run()
