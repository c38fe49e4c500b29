"""Both Beam jobs on the DirectRunner with tiny real models."""

from __future__ import annotations

import math

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs import io as beam_io
from beam_jobs import sample_candidates, score_candidates
from beam_jobs.inference import Runtime
from wofn import generation, schemas


def _read_dir(path):
    files = sorted(path.glob("*.parquet"))
    assert files, f"no shards in {path}"
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def _counts_per_prompt(rows):
    counts = {}
    for row in rows:
        counts[row["prompt_id"]] = counts.get(row["prompt_id"], 0) + 1
    return sorted(counts.items())


def test_sample_transform_gives_n_valid_candidates_per_prompt():
    prompts = [{"prompt_id": f"p{i}", "prompt": f"\n\nHuman: question {i}?\n\nAssistant:"} for i in range(3)]
    params = generation.SamplingParams(n=3, max_new_tokens=5, seed=7)
    handler = sample_candidates.PolicyHandler("tiny-llama", params, Runtime(batch_size=2))
    with test_pipeline.TestPipeline() as p:
        shards = p | beam.Create(prompts) | sample_candidates.SampleCandidates(handler, num_shards=2)
        assert_that(shards | "Errors" >> beam.FlatMap(lambda s: s[2]), equal_to([]), label="NoErrors")
        rows = shards | "Rows" >> beam.FlatMap(lambda s: s[1])
        assert_that(rows | "Key" >> beam.Map(lambda r: (r["prompt_id"], 1)) | beam.CombinePerKey(sum),
                    equal_to([("p0", 3), ("p1", 3), ("p2", 3)]), label="ThreePerPrompt")
        assert_that(rows | "Idx" >> beam.Map(lambda r: (r["prompt_id"], r["candidate_idx"])),
                    equal_to([(f"p{i}", k) for i in range(3) for k in range(3)]), label="Indices")
        assert_that(
            rows | "Valid" >> beam.Map(
                lambda r: 1 <= r["num_tokens"] <= 5 and r["logprob_sum"] < 0
                and math.isclose(r["logprob_mean"], r["logprob_sum"] / r["num_tokens"])
                and r["finish_reason"] in ("stop", "length") and r["policy"] == "tiny-llama"
                and r["policy_revision"].startswith("sha256:")),
            equal_to([True] * 9), label="RowsValid")


def test_prompts_are_batched_with_prompts_of_similar_length():
    short = [{"prompt_id": f"s{i}", "prompt": f"\n\nHuman: hi {i}\n\nAssistant:"} for i in range(5)]
    long = [{"prompt_id": f"l{i}", "prompt": f"\n\nHuman: {'a long question ' * 20}{i}\n\nAssistant:"}
            for i in range(3)]
    interleaved = [row for pair in zip(short, long) for row in pair] + short[3:]
    batches = sample_candidates.length_sorted_batches(interleaved, batch_size=2)
    assert [tuple(r["prompt_id"] for r in b) for b in batches] == \
        [("s0", "s1"), ("s2", "s3"), ("s4", "l0"), ("l1", "l2")]


def test_sample_job_writes_schema_conforming_shards(tmp_path, prompts_file):
    out = tmp_path / "candidates"
    stats = sample_candidates.run([
        "--prompts", str(prompts_file), "--output", str(out), "--policy", "tiny-llama",
        "--n", "2", "--max-new-tokens", "4", "--seed", "3", "--num-shards", "3",
    ], save_main_session=False)
    rows = _read_dir(out)
    assert stats["candidates"] == 10 and stats["rows_written"] == 10
    assert [c for _, c in _counts_per_prompt(rows)] == [2] * 5
    names = sorted(p.name for p in out.iterdir() if p.name != sample_candidates.JOB_RECORD)
    assert all(n.startswith("part-") and n.endswith("-of-00003.parquet") for n in names), names
    for f in out.glob("*.parquet"):
        assert pq.read_schema(f).remove_metadata().equals(schemas.CANDIDATES, check_metadata=False)
    # A rerun with the same seed reproduces the same rows in the same shard files.
    again = tmp_path / "again"
    sample_candidates.run([
        "--prompts", str(prompts_file), "--output", str(again), "--policy", "tiny-llama",
        "--n", "2", "--max-new-tokens", "4", "--seed", "3", "--num-shards", "3",
    ], save_main_session=False)
    assert _read_dir(again) == rows


def test_score_transform_and_job(tmp_path, prompts_file):
    cands = tmp_path / "candidates"
    sample_candidates.run(["--prompts", str(prompts_file), "--output", str(cands), "--policy", "tiny-llama",
                           "--n", "2", "--max-new-tokens", "4"], save_main_session=False)
    rows = _read_dir(cands)
    handler = score_candidates.RewardHandler("tiny-bert", Runtime(batch_size=4), max_length=64)
    with test_pipeline.TestPipeline() as p:
        shards = p | beam.Create(rows) | score_candidates.ScoreCandidates(handler, num_shards=2)
        assert_that(shards | "Errors" >> beam.FlatMap(lambda s: s[2]), equal_to([]), label="NoErrors")
        scores = shards | "Scores" >> beam.FlatMap(lambda s: s[1])
        assert_that(scores | beam.Map(lambda s: (s["prompt_id"], s["candidate_idx"], math.isfinite(s["reward"]))),
                    equal_to([(r["prompt_id"], r["candidate_idx"], True) for r in rows]))
    out = tmp_path / "scores"
    stats = score_candidates.run(["--candidates", str(cands), "--output", str(out),
                                  "--reward-model", "tiny-bert", "--max-length", "64"], save_main_session=False)
    scored = _read_dir(out)
    assert stats["candidates_scored"] == len(rows) == len(scored)
    assert ({(s["prompt_id"], s["candidate_idx"]) for s in scored}
            == {(r["prompt_id"], r["candidate_idx"]) for r in rows})
    assert all(s["reward_model"] == "tiny-bert" and math.isfinite(s["reward"]) for s in scored)
    assert len({round(s["reward"], 6) for s in scored}) > 1, "an untrained head still separates texts"


def test_shard_of_is_stable():
    assert beam_io.shard_of("abc", 4) == beam_io.shard_of("abc", 4)
    assert {beam_io.shard_of(f"p{i}", 4) for i in range(50)} == {0, 1, 2, 3}
    assert beam_io.input_pattern("/x/dir") == "/x/dir/*.parquet"
    assert beam_io.input_pattern("/x/f.parquet") == "/x/f.parquet"


def test_sample_job_in_multi_processing_mode_matches_in_memory(tmp_path, prompts_file):
    """The DirectRunner's multi_processing mode (one torch thread per worker) writes the same rows."""
    args = ["--prompts", str(prompts_file), "--policy", "tiny-llama", "--n", "2", "--max-new-tokens", "6",
            "--seed", "9", "--batch-size", "2", "--torch-threads", "1"]
    sample_candidates.run(args + ["--output", str(tmp_path / "memory")], save_main_session=False)
    sample_candidates.run(args + ["--output", str(tmp_path / "processes"), "--direct_running_mode=multi_processing",
                                  "--direct_num_workers=2"], save_main_session=False)
    assert _read_dir(tmp_path / "processes") == _read_dir(tmp_path / "memory")
