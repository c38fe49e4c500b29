"""Sample N responses per prompt from a causal-LM policy (Beam job).

    python -m beam_jobs.sample_candidates --prompts PATH --output DIR --policy MODEL --n N \
        --max-new-tokens M [--temperature T] [--seed S] [--engine torch|vllm] [--device cuda --dtype bfloat16]
        [Beam pipeline options such as --runner]

PATH is a Parquet file or folder with columns `prompt_id, prompt` (wofn.schemas.PROMPTS).
Writes wofn.schemas.CANDIDATES shards to DIR.

Prompts are batched by length: they are grouped into length classes (prompt characters, classes
a factor sqrt(2) apart; `--length-groups-per-class` spreads each over several groups), sorted by length inside a
group and cut into batches of `--batch-size`, so a batch's prompts pad to nearly the same width.
On the HH prompts this cuts the prefill tokens of 8-prompt batches from 2.4x the real tokens
to 1.1x. A batch depends only on the input, not on how the runner bundles elements, so every
runner forms the same batches.
"""

from __future__ import annotations

import argparse
import logging
import math
from typing import Any, Iterable, Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from beam_jobs.inference import Runtime, WofnModelHandler, add_runtime_args, runtime_from_args
from beam_jobs.io import WriteShards, count_rows, input_pattern, new_pipeline, run_to_completion, shard_of
from wofn import generation, models, schemas, vllm_sampling

log = logging.getLogger(__name__)
ENGINES = ("torch", "vllm")


class PolicyHandler(WofnModelHandler):
    """A length-sorted batch of prompt rows in (one element), a list of N candidate rows per prompt out."""

    label = "sample_candidates"
    unit = "prompts"

    def __init__(self, policy: str, params: generation.SamplingParams, runtime: Runtime,
                 expected_prompts: int | None = None, engine: str = "torch"):
        super().__init__(policy, runtime, expected_prompts)
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r}: expected one of {ENGINES}")
        self._params = params
        self._engine = engine

    def _load(self):
        rt = self._runtime
        if self._engine == "vllm":
            return vllm_sampling.load(self._model, dtype=rt.dtype, trust_remote_code=rt.trust_remote_code)
        return models.load_policy(self._model, device=rt.device, dtype=rt.dtype, trust_remote_code=rt.trust_remote_code)

    def batch_elements_kwargs(self) -> dict:
        return {"min_batch_size": 1, "max_batch_size": 1}  # each element already is a batch

    def run_inference(self, batch: Sequence[list[dict]], model: models.LoadedModel,
                      inference_args: dict[str, Any] | None = None) -> Iterable[list]:
        prompt_rows = [row for group in batch for row in group]
        sampler = vllm_sampling.sample if self._engine == "vllm" else generation.sample
        rows = sampler(model, [(r["prompt_id"], r["prompt"]) for r in prompt_rows], self._params)
        tokens = sum(r["num_tokens"] for r in rows)
        beam.metrics.Metrics.counter("wofn", "prompts_sampled").inc(len(prompt_rows))
        beam.metrics.Metrics.counter("wofn", "candidates").inc(len(rows))
        beam.metrics.Metrics.counter("wofn", "generated_tokens").inc(tokens)
        beam.metrics.Metrics.counter("wofn", "generation_batches").inc()
        self._report(len(prompt_rows), tokens)
        per_group, start = [], 0
        for group in batch:  # one result (a list of candidate rows) per element
            end = start + len(group) * self._params.n
            per_group.append(rows[start:end])
            start = end
        return per_group


def length_class(prompt: str) -> int:
    """Classes a factor sqrt(2) apart in prompt characters (a tokenizer-free proxy for tokens)."""
    return int(2 * math.log2(max(1, len(prompt))))


def _key_by_length(row: dict, spread: int) -> tuple[tuple[int, int], dict]:
    return (length_class(row["prompt"]), shard_of(row["prompt_id"], spread)), row


def _length_sorted_batches(element: tuple[tuple[int, int], Iterable[dict]], batch_size: int) -> list[list[dict]]:
    _, rows = element
    rows = sorted(rows, key=lambda r: (len(r["prompt"]), r["prompt_id"]))
    return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]


def _candidates(rows: list) -> list:
    return rows


class LengthBatches(beam.PTransform):
    """Prompt rows in; lists of at most `batch_size` prompt rows of similar length out.

    `groups_per_class` > 1 spreads each length class over that many groups (by prompt_id), for
    inputs so large that one class should not be sorted on one worker; batches then fill a little
    less evenly."""

    def __init__(self, batch_size: int, groups_per_class: int = 1):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if groups_per_class < 1:
            raise ValueError(f"groups_per_class must be >= 1, got {groups_per_class}")
        self._batch_size = batch_size
        self._groups_per_class = groups_per_class

    def expand(self, prompt_rows):
        return (
            prompt_rows
            | "KeyByLength" >> beam.Map(_key_by_length, self._groups_per_class)
            | "GroupByLength" >> beam.GroupByKey()
            | "LengthSortedBatches" >> beam.FlatMap(_length_sorted_batches, self._batch_size)
        )


def _key_by_first_prompt(batch: list[dict], keys: int) -> tuple[int, list[dict]]:
    return shard_of(batch[0]["prompt_id"], keys), batch


def _values(element: tuple[int, Iterable[list[dict]]]) -> Iterable[list[dict]]:
    return element[1]


class SpreadBatches(beam.PTransform):
    """Batches in, the same batches out, spread over workers by a hash key (a deterministic
    Reshuffle): the batches of one length class come out of one GroupByKey group, and would
    otherwise all run on the worker that formed them."""

    def __init__(self, keys: int = 1024):
        super().__init__()
        self._keys = keys

    def expand(self, batches):
        return (
            batches
            | "KeyByFirstPrompt" >> beam.Map(_key_by_first_prompt, self._keys)
            | "GroupByKey" >> beam.GroupByKey()
            | "Values" >> beam.FlatMap(_values)
        )


class SampleCandidates(beam.PTransform):
    """Prompt rows (prompt_id, prompt) in; N candidate rows (wofn.schemas.CANDIDATES) per prompt out."""

    def __init__(self, handler: PolicyHandler, batch_size: int, groups_per_class: int = 1):
        super().__init__()
        self._handler = handler
        self._batches = LengthBatches(batch_size, groups_per_class)

    def expand(self, prompt_rows):
        return (
            prompt_rows
            | "LengthBatches" >> self._batches
            | "SpreadBatches" >> SpreadBatches()  # one length class must not stay on one worker
            | "RunPolicy" >> RunInference(self._handler)
            | "FlattenCandidates" >> beam.FlatMap(_candidates)
        )


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", required=True, help="Parquet file or folder of prompts")
    parser.add_argument("--output", required=True, help="folder for the candidate shards")
    parser.add_argument("--policy", required=True, help="shipped name, local folder or HF model id")
    parser.add_argument("--n", type=int, required=True, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, required=True)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="global seed; each (prompt, sample) derives its own")
    parser.add_argument("--max-prompt-tokens", type=int, default=1024, help="longer prompts are cut from the left")
    parser.add_argument("--engine", choices=ENGINES, default="torch",
                        help="torch: wofn's batched sampler (CPU or GPU); vllm: vLLM on GPU workers (pip install vllm)")
    parser.add_argument("--length-groups-per-class", type=int, default=1,
                        help="spread each prompt-length class over this many groups (for very large inputs)")
    add_runtime_args(parser, batch_size=8, batch_help="prompts per generation batch (formed by prompt length)")
    return parser.parse_known_args(argv)


def run(argv=None, save_main_session: bool = True) -> dict[str, int]:
    known, pipeline_args = parse_args(argv)
    params = generation.SamplingParams(
        n=known.n, max_new_tokens=known.max_new_tokens, temperature=known.temperature,
        top_p=known.top_p, seed=known.seed, max_prompt_tokens=known.max_prompt_tokens,
    )
    if known.engine == "vllm":
        vllm_sampling.require_vllm()  # fail before the pipeline starts, with the install hint
    handler = PolicyHandler(known.policy, params, runtime_from_args(known), count_rows(known.prompts), known.engine)
    pipeline = new_pipeline(pipeline_args, save_main_session)
    _ = (
        pipeline
        | "ReadPrompts" >> beam.io.ReadFromParquet(input_pattern(known.prompts), columns=["prompt_id", "prompt"])
        | "SampleCandidates" >> SampleCandidates(handler, known.batch_size, known.length_groups_per_class)
        | "WriteCandidates" >> WriteShards(known.output, schemas.CANDIDATES, known.num_shards)
    )
    return run_to_completion(pipeline, log)


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run()
