"""Both Beam jobs on Beam's DaskRunner against a local dask.distributed cluster: same shards as DirectRunner."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from beam_jobs import sample_candidates, score_candidates
from wofn import data
from wofn.paths import DATA_DIR

distributed = pytest.importorskip("distributed")

DASK_RUNNER = "--runner=apache_beam.runners.dask.dask_runner.DaskRunner"


@pytest.fixture(scope="module")
def dask_address():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=None)
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


def _shards(path) -> dict[str, list[dict]]:
    files = sorted(path.glob("*.parquet"))
    assert files, f"no shards in {path}"
    out = {}
    for f in files:
        assert f.stat().st_size > 0, f"empty shard file {f}"
        rows = pq.read_table(f).to_pylist()
        assert rows, f"shard without rows {f}"
        out[f.name] = sorted(rows, key=lambda r: sorted(r.items()))
    assert not [p.name for p in path.iterdir() if not p.name.endswith(".parquet") and not p.name.startswith("_")], \
        "leftover temp files"
    return out


def _run_both(run, args, tmp_path, name, dask_address) -> tuple:
    """Output folder, and the Dask workers that ran tasks of >= 0.1 s in the Dask run (the
    inference steps; reading, shuffling and writing these few rows take milliseconds)."""
    direct, dask = tmp_path / f"{name}-direct", tmp_path / f"{name}-dask"
    run(args + ["--output", str(direct)], save_main_session=False)
    with distributed.Client(dask_address) as client, distributed.get_task_stream(client) as stream:
        run(args + ["--output", str(dask), DASK_RUNNER, f"--dask_client_address={dask_address}",
                    "--dask_npartitions=2"], save_main_session=False)
    workers = {task["worker"] for task in stream.data
               if sum(s["stop"] - s["start"] for s in task["startstops"] if s["action"] == "compute") >= 0.1}
    direct_shards, dask_shards = _shards(direct), _shards(dask)
    assert sorted(dask_shards) == sorted(direct_shards)
    for name, rows in direct_shards.items():
        # rewards may differ in the last bits: the runners bundle rows into scoring batches differently
        exact = [{k: v for k, v in r.items() if k != "reward"} for r in rows]
        assert [{k: v for k, v in r.items() if k != "reward"} for r in dask_shards[name]] == exact, name
        assert [r.get("reward") for r in dask_shards[name]] == pytest.approx([r.get("reward") for r in rows], abs=1e-6)
    return direct, workers


@pytest.mark.slow
def test_jobs_on_dask_runner_match_direct_runner(tmp_path, dask_address):
    prompts = tmp_path / "prompts.parquet"
    pq.write_table(data.load_prompts(DATA_DIR / "prompts_unlabeled.parquet", limit=8), prompts)
    candidates, workers = _run_both(sample_candidates.run, [
        "--prompts", str(prompts), "--policy", "tiny-llama", "--n", "2", "--max-new-tokens", "16",
        "--seed", "5", "--torch-threads", "1", "--batch-size", "1", "--prompts-per-shard", "2",
    ], tmp_path, "candidates", dask_address)
    assert sum(len(rows) for rows in _shards(candidates).values()) == 16
    assert len(workers) == 2, f"sampling ran on {workers}; --dask_npartitions=2 should spread it"
    scores, _ = _run_both(score_candidates.run, [
        "--candidates", str(candidates), "--reward-model", "tiny-bert", "--max-length", "64",
        "--torch-threads", "1",
    ], tmp_path, "scores", dask_address)
    assert sum(len(rows) for rows in _shards(scores).values()) == 16
