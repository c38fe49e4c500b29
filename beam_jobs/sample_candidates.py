"""Sample N responses per prompt from a causal-LM policy (Beam job).

    python -m beam_jobs.sample_candidates --prompts PATH --output DIR --policy MODEL --n N \
        --max-new-tokens M [--temperature T] [--seed S] [Beam pipeline options such as --runner]

PATH is a Parquet file or folder with columns `prompt_id, prompt` (wofn.schemas.PROMPTS).
Writes wofn.schemas.CANDIDATES shards to DIR.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any, Iterable, Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from beam_jobs.inference import Runtime, WofnModelHandler, add_runtime_args, runtime_from_args
from beam_jobs.io import WriteShards, count_rows, input_pattern, new_pipeline, run_to_completion
from wofn import generation, models, schemas

log = logging.getLogger(__name__)


class PolicyHandler(WofnModelHandler):
    """A batch of prompt rows in, a list of N candidate rows per prompt out."""

    label = "sample_candidates"
    unit = "prompts"

    def __init__(self, policy: str, params: generation.SamplingParams, runtime: Runtime,
                 expected_prompts: int | None = None):
        super().__init__(policy, runtime, expected_prompts)
        self._params = params

    def _load(self) -> models.LoadedModel:
        rt = self._runtime
        return models.load_policy(self._model, device=rt.device, dtype=rt.dtype, trust_remote_code=rt.trust_remote_code)

    def run_inference(self, batch: Sequence[dict], model: models.LoadedModel,
                      inference_args: dict[str, Any] | None = None) -> Iterable[list]:
        rows = generation.sample(model, [(r["prompt_id"], r["prompt"]) for r in batch], self._params)
        tokens = sum(r["num_tokens"] for r in rows)
        beam.metrics.Metrics.counter("wofn", "prompts_sampled").inc(len(batch))
        beam.metrics.Metrics.counter("wofn", "candidates").inc(len(rows))
        beam.metrics.Metrics.counter("wofn", "generated_tokens").inc(tokens)
        self._report(len(batch), tokens)
        n = self._params.n
        return [rows[i * n : (i + 1) * n] for i in range(len(batch))]


def _candidates(rows: list) -> list:
    return rows


class SampleCandidates(beam.PTransform):
    """Prompt rows (prompt_id, prompt) in; N candidate rows (wofn.schemas.CANDIDATES) per prompt out."""

    def __init__(self, handler: PolicyHandler):
        super().__init__()
        self._handler = handler

    def expand(self, prompt_rows):
        return (
            prompt_rows
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
    add_runtime_args(parser, batch_size=8, batch_help="prompts per generation batch")
    return parser.parse_known_args(argv)


def run(argv=None, save_main_session: bool = True) -> dict[str, int]:
    known, pipeline_args = parse_args(argv)
    params = generation.SamplingParams(
        n=known.n, max_new_tokens=known.max_new_tokens, temperature=known.temperature,
        top_p=known.top_p, seed=known.seed, max_prompt_tokens=known.max_prompt_tokens,
    )
    handler = PolicyHandler(known.policy, params, runtime_from_args(known), count_rows(known.prompts))
    pipeline = new_pipeline(pipeline_args, save_main_session)
    _ = (
        pipeline
        | "ReadPrompts" >> beam.io.ReadFromParquet(input_pattern(known.prompts), columns=["prompt_id", "prompt"])
        | "SampleCandidates" >> SampleCandidates(handler)
        | "WriteCandidates" >> WriteShards(known.output, schemas.CANDIDATES, known.num_shards)
    )
    return run_to_completion(pipeline, log)


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run()
