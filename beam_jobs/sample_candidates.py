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
from apache_beam.ml.inference.base import ModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

from beam_jobs.io import WriteShards, count_rows, counters, input_pattern
from wofn import generation, models, schemas
from wofn.progress import Progress

log = logging.getLogger(__name__)


class PolicyHandler(ModelHandler[dict, list, models.LoadedModel]):
    """Loads the policy once per worker; a batch of prompt rows in, N candidate rows per prompt out."""

    def __init__(self, policy: str, params: generation.SamplingParams, device: str = "cpu",
                 dtype: str = "float32", torch_threads: int = 0, batch_size: int = 8,
                 trust_remote_code: bool = False, expected_prompts: int | None = None):
        super().__init__()
        self._expected = expected_prompts
        self._progress: Progress | None = None
        self._policy = policy
        self._params = params
        self._device = device
        self._dtype = dtype
        self._torch_threads = torch_threads
        self._batch_size = batch_size
        self._trust_remote_code = trust_remote_code

    def load_model(self) -> models.LoadedModel:
        models.set_torch_threads(self._torch_threads)
        self._progress = Progress("sample_candidates", self._expected, "prompts", log)
        return models.load_policy(self._policy, device=self._device, dtype=self._dtype,
                                  trust_remote_code=self._trust_remote_code)

    def run_inference(self, batch: Sequence[dict], model: models.LoadedModel,
                      inference_args: dict[str, Any] | None = None) -> Iterable[list]:
        rows = generation.sample(model, [(r["prompt_id"], r["prompt"]) for r in batch], self._params)
        beam.metrics.Metrics.counter("wofn", "prompts_sampled").inc(len(batch))
        beam.metrics.Metrics.counter("wofn", "candidates").inc(len(rows))
        beam.metrics.Metrics.counter("wofn", "generated_tokens").inc(sum(r["num_tokens"] for r in rows))
        if self._progress is not None:
            self._progress.update(len(batch), sum(r["num_tokens"] for r in rows))
        n = self._params.n
        return [rows[i * n : (i + 1) * n] for i in range(len(batch))]

    def batch_elements_kwargs(self) -> dict:
        return {"min_batch_size": self._batch_size, "max_batch_size": self._batch_size}

    def share_model_across_processes(self) -> bool:
        return False


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
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generation batch")
    parser.add_argument("--num-shards", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--torch-threads", type=int, default=0, help="0 = all cores; use 1 per worker in multi_processing mode")
    parser.add_argument("--trust-remote-code", action="store_true")
    return parser.parse_known_args(argv)


def run(argv=None, save_main_session: bool = True) -> dict[str, int]:
    known, pipeline_args = parse_args(argv)
    params = generation.SamplingParams(
        n=known.n, max_new_tokens=known.max_new_tokens, temperature=known.temperature,
        top_p=known.top_p, seed=known.seed, max_prompt_tokens=known.max_prompt_tokens,
    )
    handler = PolicyHandler(known.policy, params, known.device, known.dtype, known.torch_threads,
                            known.batch_size, known.trust_remote_code, count_rows(known.prompts))
    options = PipelineOptions(pipeline_args)
    options.view_as(SetupOptions).save_main_session = save_main_session
    pipeline = beam.Pipeline(options=options)
    _ = (
        pipeline
        | "ReadPrompts" >> beam.io.ReadFromParquet(input_pattern(known.prompts), columns=["prompt_id", "prompt"])
        | "SampleCandidates" >> SampleCandidates(handler)
        | "WriteCandidates" >> WriteShards(known.output, schemas.CANDIDATES, known.num_shards)
    )
    result = pipeline.run()
    result.wait_until_finish()
    stats = counters(result)
    log.info("sample_candidates: %s", stats)
    return stats


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run()
