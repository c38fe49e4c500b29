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
from apache_beam.ml.inference.base import RunInference

from beam_jobs.inference import Runtime, WofnModelHandler, add_runtime_args, runtime_from_args
from beam_jobs.io import WriteShards, count_rows, input_pattern, new_pipeline, run_to_completion
from wofn import evaluation, models, schemas, scoring

log = logging.getLogger(__name__)


class RewardHandler(WofnModelHandler):
    """Candidate rows in, one score row per candidate out."""

    label = "score_candidates"
    unit = "candidates"

    def __init__(self, reward_model: str, runtime: Runtime, max_length: int | None = None,
                 token_budget: int = 8192, expected_candidates: int | None = None):
        super().__init__(reward_model, runtime, expected_candidates)
        self._max_length = max_length
        self._token_budget = token_budget

    def _load(self) -> models.LoadedModel:
        rt = self._runtime
        return models.load_reward_model(self._model, device=rt.device, dtype=rt.dtype,
                                        trust_remote_code=rt.trust_remote_code)

    def run_inference(self, batch: Sequence[dict], model: models.LoadedModel,
                      inference_args: dict[str, Any] | None = None) -> Iterable[dict]:
        max_length = self._max_length or models.read_manifest(model.path).get(
            "max_length", evaluation.DEFAULT_MAX_LENGTH)
        rewards = scoring.score(model, [r["prompt"] for r in batch], [r["response"] for r in batch],
                                max_length, self._token_budget)
        beam.metrics.Metrics.counter("wofn", "candidates_scored").inc(len(batch))
        self._report(len(batch))
        return [
            {"prompt_id": r["prompt_id"], "candidate_idx": r["candidate_idx"], "reward": reward,
             "reward_model": model.name, "reward_model_revision": model.revision}
            for r, reward in zip(batch, rewards)
        ]


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
    parser.add_argument("--token-budget", type=int, default=8192, help="padded tokens per forward pass")
    add_runtime_args(parser, batch_size=64, batch_help="candidates per inference call")
    return parser.parse_known_args(argv)


def run(argv=None, save_main_session: bool = True) -> dict[str, int]:
    known, pipeline_args = parse_args(argv)
    handler = RewardHandler(known.reward_model, runtime_from_args(known), known.max_length,
                            known.token_budget, count_rows(known.candidates))
    pipeline = new_pipeline(pipeline_args, save_main_session)
    _ = (
        pipeline
        | "ReadCandidates" >> beam.io.ReadFromParquet(
            input_pattern(known.candidates), columns=["prompt_id", "candidate_idx", "prompt", "response"])
        | "ScoreCandidates" >> ScoreCandidates(handler)
        | "WriteScores" >> WriteShards(known.output, schemas.CANDIDATE_SCORES, known.num_shards)
    )
    return run_to_completion(pipeline, log)


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run()
