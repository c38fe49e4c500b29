"""The sampling job killed with SIGKILL at three points, then rerun: every prompt ends with
exactly N candidates, no row twice, no partial file, and the same rows as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from beam_jobs import failpoints, sample_candidates, score_candidates
from wofn import data
from wofn.paths import DATA_DIR, REPO_ROOT

N = 2
PROMPTS = 12


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.parquet"
    pq.write_table(data.load_prompts(DATA_DIR / "prompts_unlabeled.parquet", limit=PROMPTS), path)
    return path


def _args(prompts: Path, output: Path) -> list[str]:
    # 3 shards of 4 prompts; each shard writes its errors file, then its candidates file
    return ["--prompts", str(prompts), "--output", str(output), "--policy", "tiny-llama", "--n", str(N),
            "--max-new-tokens", "6", "--seed", "4", "--prompts-per-shard", "4", "--batch-size", "2"]


def _rows(folder: Path) -> list[dict]:
    return sorted((row for f in sorted(folder.glob("*.parquet")) for row in pq.read_table(f).to_pylist()),
                  key=lambda r: (r["prompt_id"], r["candidate_idx"]))


def _final_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".parquet"))


@pytest.fixture(scope="module")
def reference(prompts, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("reference") / "candidates"
    sample_candidates.run(_args(prompts, out), save_main_session=False)
    return _rows(out)


@pytest.mark.parametrize("failpoint, shards_done_before_rerun", [
    ("before_sample:1", 0),  # before the first shard
    ("after_rename:2", 1),  # mid-run: the first shard complete (errors file, then candidates file)
    ("before_rename:6", 2),  # during the last write: the last candidates file not yet renamed
])
def test_killed_sampling_job_resumes_without_loss_or_duplicates(prompts, reference, tmp_path, failpoint,
                                                                shards_done_before_rerun):
    out = tmp_path / "candidates"
    env = {**os.environ, "WOFN_FAILPOINT": failpoint, "PYTHONPATH": str(REPO_ROOT)}
    killed = subprocess.run([sys.executable, "-m", "beam_jobs.sample_candidates", *_args(prompts, out)],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert len(_final_files(out)) == shards_done_before_rerun  # only complete shards carry final names
    for f in out.glob("*.parquet"):
        assert pq.read_table(f).num_rows > 0  # complete files only

    stats = sample_candidates.run(_args(prompts, out), save_main_session=False)

    assert stats["shards_skipped"] == shards_done_before_rerun
    rows = _rows(out)
    keys = [(r["prompt_id"], r["candidate_idx"]) for r in rows]
    assert len(keys) == len(set(keys)) == PROMPTS * N
    assert rows == reference
    assert _final_files(out) == [f"part-0000{i}-of-00003.parquet" for i in range(3)]
    leftovers = [p.name for d in (out, Path(f"{out}_errors")) for p in d.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers
    assert _rows(Path(f"{out}_errors")) == []


def test_rerun_with_other_settings_is_refused(prompts, tmp_path):
    out = tmp_path / "candidates"
    sample_candidates.run(_args(prompts, out), save_main_session=False)
    with pytest.raises(ValueError, match="other settings.*seed"):
        sample_candidates.run([*_args(prompts, out), "--seed", "5"], save_main_session=False)


def test_resumable_staging_keeps_work_across_a_failed_attempt(tmp_path):
    from wofn_dagster.assets.tables import staged

    final = tmp_path / "tables" / "candidates" / "batch=a"
    with pytest.raises(RuntimeError):
        with staged(final, resume_key="k1") as staging:
            (staging / "part-00000-of-00002.parquet").write_text("shard 0")
            raise RuntimeError("killed mid-run")
    assert not final.exists()
    with staged(final, resume_key="k1") as staging:  # the retry finds shard 0 and adds shard 1
        assert [p.name for p in staging.iterdir()] == ["part-00000-of-00002.parquet"]
        (staging / "part-00001-of-00002.parquet").write_text("shard 1")
    assert sorted(p.name for p in final.iterdir()) == ["part-00000-of-00002.parquet", "part-00001-of-00002.parquet"]
    with pytest.raises(RuntimeError):
        with staged(final, resume_key="k2") as staging:
            raise RuntimeError("other settings")
    with staged(final, resume_key="k3") as staging:  # a new key starts empty; k2's leftovers are removed
        assert not list(staging.iterdir())
    assert not list(final.parent.glob(".batch=a.resume-*"))


def test_a_full_disk_fails_the_job_clearly_and_a_rerun_resumes(prompts, reference, tmp_path, monkeypatch):
    """ENOSPC half-way through the third file write (the second sampled shard's errors file): the job fails
    naming the shard file and the cause; only complete shards carry final names, no temporary file
    is left; rerun with space, it finishes with the rows of an uninterrupted run."""
    out = tmp_path / "candidates"
    monkeypatch.setenv(failpoints.DISK_FULL_ENV, "3")
    with pytest.raises(Exception, match=r"part-0000[0-2]-of-00003\.parquet: the shard could not be written "
                                        r"\(No space left on device\)") as info:
        sample_candidates.run(_args(prompts, out), save_main_session=False)
    assert "rerun" in str(info.value)
    assert len(_final_files(out)) == 1 and all(pq.read_table(f).num_rows > 0 for f in out.glob("*.parquet"))
    assert not [p.name for d in (out, Path(f"{out}_errors")) for p in d.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.delenv(failpoints.DISK_FULL_ENV)
    stats = sample_candidates.run(_args(prompts, out), save_main_session=False)
    assert stats["shards_skipped"] == 1 and _rows(out) == reference


@pytest.fixture(scope="module")
def candidates_dir(prompts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("candidates") / "candidates"
    sample_candidates.run(_args(prompts, out), save_main_session=False)
    return out


def _score_args(candidates: Path, output: Path) -> list[str]:
    # 24 candidates in 3 shards; each shard writes its errors file, then its scores file
    return ["--candidates", str(candidates), "--output", str(output), "--reward-model", "tiny-bert",
            "--max-length", "64", "--candidates-per-shard", "8", "--batch-size", "3"]


@pytest.mark.parametrize("failpoint, shards_done_before_rerun", [("after_rename:2", 1), ("before_rename:6", 2)])
def test_killed_scoring_job_resumes_without_loss_or_duplicates(candidates_dir, tmp_path, failpoint,
                                                               shards_done_before_rerun):
    reference = tmp_path / "reference"
    score_candidates.run(_score_args(candidates_dir, reference), save_main_session=False)
    out = tmp_path / "scores"
    env = {**os.environ, "WOFN_FAILPOINT": failpoint, "PYTHONPATH": str(REPO_ROOT)}
    killed = subprocess.run([sys.executable, "-m", "beam_jobs.score_candidates", *_score_args(candidates_dir, out)],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert len(_final_files(out)) == shards_done_before_rerun

    stats = score_candidates.run(_score_args(candidates_dir, out), save_main_session=False)

    assert stats["shards_skipped"] == shards_done_before_rerun
    rows = _rows(out)
    assert len({(r["prompt_id"], r["candidate_idx"]) for r in rows}) == len(rows) == PROMPTS * N
    assert rows == _rows(reference)  # the same rewards, to the bit: a shard's calls are cut the same way
    assert not [p.name for d in (out, Path(f"{out}_errors")) for p in d.iterdir() if p.name.endswith(".tmp")]


def test_scoring_rerun_with_other_settings_is_refused(candidates_dir, tmp_path):
    out = tmp_path / "scores"
    score_candidates.run(_score_args(candidates_dir, out), save_main_session=False)
    args = _score_args(candidates_dir, out)
    args[args.index("--max-length") + 1] = "32"
    with pytest.raises(ValueError, match=r"other settings \{'max_length': \(64, 32\)\}"):
        score_candidates.run(args, save_main_session=False)


def test_sampling_in_waves_writes_the_rows_of_one_pipeline(prompts, reference, tmp_path, caplog):
    # 12 prompts in 3 shards, waves of about 4 prompts: three pipelines, one shard each
    out = tmp_path / "candidates"
    with caplog.at_level("INFO", logger="beam_jobs.sample_candidates"):
        stats = sample_candidates.run([*_args(prompts, out), "--wave-rows", "4"], save_main_session=False)
    assert "wave 3 of 3: 1 shards, about 4 rows; the job's ETA" in caplog.text
    assert _rows(out) == reference
    assert stats["candidates"] == PROMPTS * N and stats["shards_written"] == 3  # summed over the waves


def test_scoring_in_waves_writes_the_rows_of_one_pipeline(candidates_dir, tmp_path, caplog):
    reference = tmp_path / "reference"
    score_candidates.run(_score_args(candidates_dir, reference), save_main_session=False)
    out = tmp_path / "scores"
    with caplog.at_level("INFO", logger="beam_jobs.score_candidates"):
        score_candidates.run([*_score_args(candidates_dir, out), "--wave-rows", "16"], save_main_session=False)
    # 24 candidates in 3 shards of 8: waves of 2 shards, then 1
    assert "wave 2 of 2: 1 shards, about 8 rows" in caplog.text
    assert _rows(out) == _rows(reference)
