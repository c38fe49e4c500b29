"""`python -m bench.scale` (the documented scale run) at a tiny size: every stage is a real Dagster
materialization in a process of its own, measured, recorded as it ends, and skipped when rerun."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from bench import scale

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.scale", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_scale_run_measures_every_stage_and_resumes_from_its_records(tmp_path):
    out = tmp_path / "scale.jsonl"
    done = _run("--prompts", "30", "--root", str(tmp_path / "root"), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["stage"] for r in records] == [*scale.SETUP, *scale.STAGES]
    by_stage = {r["stage"]: r for r in records}
    assert by_stage["prompts"]["rows"] == 30 and by_stage["candidates"]["rows"] == 30 * scale.SETTINGS["n"]
    assert 0 < by_stage["west_of_n_pairs"]["rows"] <= 30 and 0 < by_stage["filtered_pairs"]["rows"]
    assert all(r["peak_rss_mb"] > 100 and r["seconds"] > 0 for r in records)
    home = tmp_path / "root" / "prompts-30"
    assert pq.read_table(home / "scale_30.parquet").num_rows == 30
    # a rerun finds every stage recorded: nothing runs, nothing is appended
    again = _run("--prompts", "30", "--root", str(tmp_path / "root"), "--out", str(out))
    assert again.returncode == 0 and len(out.read_text().splitlines()) == len(records)


def test_compare_takes_the_largest_size_over_the_smallest():
    def records(n, rss, seconds):
        return [{"prompts": n, "stage": s, "peak_rss_mb": rss + k, "seconds": seconds} for k, s in
                enumerate((*scale.SETUP, *scale.STAGES))]
    result = scale.compare({10: records(10, 500, 2.0), 100: records(100, 600, 20.0)})
    top = len(scale.SETUP) + len(scale.STAGES) - 1
    assert result["peak_rss_mb"] == {10: 500 + top, 100: 600 + top}
    assert result["peak_rss_ratio"] == round((600 + top) / (500 + top), 2)
    assert result["stages"]["prompts"] == {"peak_rss_ratio": round(603 / 503, 2), "time_ratio": 10.0}


def test_the_prompts_are_distinct_and_short():
    table = scale.prompt_table(1000)
    prompts = table.column("prompt").to_pylist()
    assert len(set(prompts)) == 1000 and max(map(len, prompts)) < 80


def test_a_record_skips_its_stage_only_while_the_home_has_what_it_wrote(tmp_path):
    """The repository's bench/scale.jsonl holds the published run's records: on a fresh machine (no home)
    they skip nothing; where the home has the stage's table, the newest record stands for it."""
    out, home = tmp_path / "scale.jsonl", tmp_path / "prompts-10"
    out.write_text("".join(json.dumps({"prompts": 10, "stage": "candidates", "seconds": s}) + "\n" for s in (1, 2)))
    assert scale._done(out, home, 10, "candidates") is None
    (home / "tables" / "candidates").mkdir(parents=True)
    assert scale._done(out, home, 10, "candidates") is None, "an empty folder is not a written table"
    (home / "tables" / "candidates" / "batch=b").mkdir()
    assert scale._done(out, home, 10, "candidates")["seconds"] == 2
    assert scale._done(out, home, 100, "candidates") is None
    (home / "models" / "base_reward_model").mkdir(parents=True)
    assert scale._done(out, home, 10, "base_reward_model") is None, "no record of it"
