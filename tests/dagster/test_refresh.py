"""Refresh runs: prompt files dropped into the inbox one after the other become prompt batches; each
sampling run samples only its own batch, and the schedule rebuilds pairs and student over all of them.

The sensor and the schedule are evaluated against a real (temporary, SQLite) Dagster instance, and
their run requests are executed as the daemon would launch them, in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from dagster import (
    AssetSelection,
    DagsterInstance,
    RunRequest,
    SensorResult,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
    materialize,
)

from wofn import data
from wofn.paths import DATA_DIR, REPO_ROOT, WofnHome, content_hash
from wofn_dagster.assets.tables import read_table
from wofn_dagster.definitions import make_defs
from wofn_dagster.partitions import prompt_batches
from wofn_dagster.resources import wofn_resources
from wofn_dagster.schedules import refresh_student
from wofn_dagster.sensors import prompt_inbox


def drop(home: WofnHome, name: str, prompts: list[str]) -> None:
    """Write a prompt file into the inbox the safe way: a hidden name first, then a rename."""
    home.inbox_dir.mkdir(parents=True, exist_ok=True)
    tmp = home.inbox_dir / f".{name}.tmp"
    tmp.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    tmp.rename(home.inbox_dir / name)


def tick(instance, resources, cursor):
    """One sensor evaluation; its partition requests applied to the instance as the daemon does."""
    result = prompt_inbox(build_sensor_context(instance=instance, cursor=cursor, resources={"home": resources["home"]}))
    if isinstance(result, SensorResult):
        for request in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def launch(defs, instance, job: str, request: RunRequest):
    tags = {**(request.tags or {}), **({"dagster/run_key": request.run_key} if request.run_key else {})}
    result = defs.resolve_job_def(job).execute_in_process(instance=instance, partition_key=request.partition_key,
                                                          tags=tags)
    assert result.success
    return result


def partitions_materialized(result, asset: str) -> list[str]:
    return [m.partition for m in result.asset_materializations_for_node(asset) if m.asset_key.path == [asset]]


@pytest.mark.slow
def test_two_inbox_files_two_batches_second_refresh_samples_only_the_new_one(tmp_path):
    home = WofnHome(tmp_path / "home")
    resources = wofn_resources(home=str(home.root), profile="tiny", rounds=1, max_prompts=None)
    defs = make_defs(resources)
    (tmp_path / "dagster").mkdir()
    instance = DagsterInstance.local_temp(str(tmp_path / "dagster"))
    texts = data.load_prompts(DATA_DIR / "prompts_unlabeled.parquet", limit=6).column("prompt").to_pylist()

    # the teacher exists before any batch arrives
    assert materialize([*defs.assets], selection=AssetSelection.assets("base_reward_model").upstream(),
                       resources=resources, instance=instance).success

    assert isinstance(tick(instance, resources, None), SkipReason), "empty inbox: nothing to do"
    drop(home, "batch_a.jsonl", texts[:3])
    first = tick(instance, resources, None)
    assert [r.partition_key for r in first.run_requests] == ["batch_a"]
    assert instance.get_dynamic_partitions(prompt_batches.name) == ["batch_a"]
    run_a = launch(defs, instance, "sample_batch", first.run_requests[0])
    assert partitions_materialized(run_a, "candidates") == ["batch_a"]

    # the schedule rebuilds the student from batch_a, then has nothing to do
    request = refresh_student(build_schedule_context(instance=instance))
    assert isinstance(request, RunRequest) and request.tags["wofn/new_batches"] == "batch_a"
    launch(defs, instance, "rebuild_student", request)
    assert isinstance(refresh_student(build_schedule_context(instance=instance)), SkipReason)
    assert isinstance(tick(instance, resources, first.cursor), SkipReason), "batch_a is not sampled again"

    a_files = {p: (p.stat().st_mtime_ns, content_hash(p))
               for p in (home.partition_dir("candidates", "batch_a")).iterdir()}
    drop(home, "batch_b.jsonl", texts[3:6])
    second = tick(instance, resources, first.cursor)
    assert [r.partition_key for r in second.run_requests] == ["batch_b"]
    run_b = launch(defs, instance, "sample_batch", second.run_requests[0])
    assert run_b.dagster_run.tags["dagster/partition"] == "batch_b"
    for asset in ("prompts", "candidates", "candidate_scores"):
        assert partitions_materialized(run_b, asset) == ["batch_b"], asset
    assert {p: (p.stat().st_mtime_ns, content_hash(p))
            for p in home.partition_dir("candidates", "batch_a").iterdir()} == a_files, "batch_a left untouched"

    request = refresh_student(build_schedule_context(instance=instance))
    assert isinstance(request, RunRequest) and request.tags["wofn/new_batches"] == "batch_b"
    launch(defs, instance, "rebuild_student", request)

    ids = {key: set(read_table(home, "prompts", key).column("prompt_id").to_pylist()) for key in ("batch_a", "batch_b")}
    paired = set(pq.read_table(home.table_dir("west_of_n_pairs")).column("prompt_id").to_pylist())
    assert paired & ids["batch_a"] and paired & ids["batch_b"], "the pairs read every batch"
    manifest = json.loads((home.model_dir("student_reward_model") / "manifest.json").read_text())
    batches = manifest["lineage"]["prompt_batches"]
    assert set(batches) == {"batch_a", "batch_b"}
    assert batches["batch_a"]["candidates"] == content_hash(home.partition_dir("candidates", "batch_a"))
    assert read_table(home, "candidates").num_rows == 4 * 6

    # a rewritten file is sampled again into its batch, whose folder is replaced whole (no leftovers)
    drop(home, "batch_a.jsonl", texts[:2])
    third = tick(instance, resources, second.cursor)
    assert [r.partition_key for r in third.run_requests] == ["batch_a"]
    launch(defs, instance, "sample_batch", third.run_requests[0])
    assert read_table(home, "candidates", "batch_a").num_rows == 4 * 2
    assert read_table(home, "candidates").num_rows == 4 * 5
    assert sorted(p.name for p in home.table_dir("candidates").iterdir()) == ["batch=batch_a", "batch=batch_b"]


_PROMPTS_RUN = """
import sys
from dagster import DagsterInstance, materialize
from wofn_dagster.definitions import make_defs
from wofn_dagster.resources import wofn_resources
from wofn_dagster.selections import select
resources = wofn_resources(home=sys.argv[1], profile="tiny")
with DagsterInstance.get() as instance:
    result = materialize(list(make_defs(resources).assets), selection=select("prompts"),
                         resources=resources, instance=instance, partition_key=sys.argv[2])
sys.exit(0 if result.success else 1)
"""


def test_two_batches_sharing_prompts_materialized_at_once_keep_each_prompt_once(tmp_path):
    """Issue 21: two prompt batches with prompts in common, materialized by two runs at the same
    time (each holding its read-then-publish window open for 2 s): each shared prompt is kept by
    exactly one batch, and both runs succeed."""
    home = WofnHome(tmp_path / "home")
    texts = data.load_prompts(DATA_DIR / "prompts_unlabeled.parquet", limit=8).column("prompt").to_pylist()
    drop(home, "batch_a.jsonl", texts[:6])
    drop(home, "batch_b.jsonl", texts[2:8])  # texts[2:6] in both
    (tmp_path / "dagster").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:
        instance.add_dynamic_partitions(prompt_batches.name, ["batch_a", "batch_b"])
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster"), "WOFN_PAUSE": "prompts_before_publish:2"}
    runs = [subprocess.Popen([sys.executable, "-c", _PROMPTS_RUN, str(home.root), key], cwd=REPO_ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for key in ("batch_a", "batch_b")]
    logs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    ids = {key: read_table(home, "prompts", key).column("prompt_id").to_pylist() for key in ("batch_a", "batch_b")}
    assert not set(ids["batch_a"]) & set(ids["batch_b"]), "a shared prompt is in one batch only"
    assert sorted(ids["batch_a"] + ids["batch_b"]) == sorted(data.prompt_id(t) for t in texts)
    assert sorted([len(ids["batch_a"]), len(ids["batch_b"])]) == [2, 6]  # the second to publish drops 4
