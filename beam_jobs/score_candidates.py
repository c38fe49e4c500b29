"""Score every candidate with a reward model (Beam job).

    python -m beam_jobs.score_candidates --candidates PATH --output DIR --reward-model MODEL \
        [--max-length L] [Beam pipeline options such as --runner]

PATH is a Parquet file or folder of wofn.schemas.CANDIDATES rows. MODEL is a trained reward-model
folder, a HF sequence-classification model, or a backbone name (an untrained scalar head, for
smoke tests and benchmarks). Writes wofn.schemas.CANDIDATE_SCORES shards to DIR.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any, Iterable, Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

from beam_jobs.io import WriteShards, count_rows, counters, input_pattern
from wofn import evaluation, models, schemas, scoring
from wofn.progress import Progress

log = logging.getLogger(__name__)


class RewardHandler(ModelHandler[dict, dict, models.LoadedModel]):
    """Loads the reward model once per worker; candidate rows in, score rows out."""

    def __init__(self, reward_model: str, max_length: int | None = None, device: str = "cpu",
                 dtype: str = "float32", torch_threads: int = 0, batch_size: int = 64,
                 token_budget: int = 8192, trust_remote_code: bool = False,
                 expected_candidates: int | None = None):
        super().__init__()
        self._expected = expected_candidates
        self._progress: Progress | None = None
        self._reward_model = reward_model
        self._max_length = max_length
        self._device = device
        self._dtype = dtype
        self._torch_threads = torch_threads
        self._batch_size = batch_size
        self._token_budget = token_budget
        self._trust_remote_code = trust_remote_code

    def load_model(self) -> models.LoadedModel:
        models.set_torch_threads(self._torch_threads)
        self._progress = Progress("score_candidates", self._expected, "candidates", log)
        return models.load_reward_model(self._reward_model, device=self._device, dtype=self._dtype,
                                        trust_remote_code=self._trust_remote_code)

    def run_inference(self, batch: Sequence[dict], model: models.LoadedModel,
                      inference_args: dict[str, Any] | None = None) -> Iterable[dict]:
        max_length = self._max_length or models.read_manifest(model.path).get(
            "max_length", evaluation.DEFAULT_MAX_LENGTH)
        rewards = scoring.score(model, [r["prompt"] for r in batch], [r["response"] for r in batch],
                                max_length, self._token_budget)
        beam.metrics.Metrics.counter("wofn", "candidates_scored").inc(len(batch))
        if self._progress is not None:
            self._progress.update(len(batch))
        return [
            {"prompt_id": r["prompt_id"], "candidate_idx": r["candidate_idx"], "reward": reward,
             "reward_model": model.name, "reward_model_revision": model.revision}
            for r, reward in zip(batch, rewards)
        ]

    def batch_elements_kwargs(self) -> dict:
        return {"min_batch_size": self._batch_size, "max_batch_size": self._batch_size}


class ScoreCandidates(beam.PTransform):
    """Candidate rows in; one score row (wofn.schemas.CANDIDATE_SCORES) per candidate out."""

    def __init__(self, handler: RewardHandler):
        super().__init__()
        self._handler = handler

    def expand(self, candidate_rows):
        return candidate_rows | "RunRewardModel" >> RunInference(self._handler)


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", required=True, help="Parquet file or folder of candidates")
    parser.add_argument("--output", required=True, help="folder for the score shards")
    parser.add_argument("--reward-model", required=True, help="RM folder, HF id, or backbone name")
    parser.add_argument("--max-length", type=int, default=None, help="default: the RM manifest's, else 256")
    parser.add_argument("--batch-size", type=int, default=64, help="candidates per inference call")
    parser.add_argument("--token-budget", type=int, default=8192, help="padded tokens per forward pass")
    parser.add_argument("--num-shards", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--torch-threads", type=int, default=0, help="0 = all cores; use 1 per worker in multi_processing mode")
    parser.add_argument("--trust-remote-code", action="store_true")
    return parser.parse_known_args(argv)


def run(argv=None, save_main_session: bool = True) -> dict[str, int]:
    known, pipeline_args = parse_args(argv)
    handler = RewardHandler(known.reward_model, known.max_length, known.device, known.dtype,
                            known.torch_threads, known.batch_size, known.token_budget,
                            known.trust_remote_code, count_rows(known.candidates))
    options = PipelineOptions(pipeline_args)
    options.view_as(SetupOptions).save_main_session = save_main_session
    pipeline = beam.Pipeline(options=options)
    _ = (
        pipeline
        | "ReadCandidates" >> beam.io.ReadFromParquet(
            input_pattern(known.candidates), columns=["prompt_id", "candidate_idx", "prompt", "response"])
        | "ScoreCandidates" >> ScoreCandidates(handler)
        | "WriteScores" >> WriteShards(known.output, schemas.CANDIDATE_SCORES, known.num_shards)
    )
    result = pipeline.run()
    result.wait_until_finish()
    stats = counters(result)
    log.info("score_candidates: %s", stats)
    return stats


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run()
