"""The Dagster definitions load and name the product's assets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from dagster import AssetKey, DagsterInstance, DagsterRunStatus, SkipReason, build_sensor_context

from wofn import schemas
from wofn_dagster.definitions import defs
from wofn_dagster.sensors import dead_runs

MODELS = {"base_reward_model", "student_reward_model", "student_rounds"}
# the steps that write several tables, and the tables each writes (one multi-asset each)
STEPS = {"prompts": {"prompts", "prompt_errors"},
         "candidates": {"candidates", "candidate_errors"},
         "candidate_scores": {"candidate_scores", "tournament_pairs", "score_errors"},
         "west_of_n_pairs": {"west_of_n_pairs", "pair_draws", "pair_selection_report"},
         "filtered_pairs": {"filtered_pairs", "pair_funnel"}}


def test_every_table_is_an_asset_the_ui_shows():
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == set(schemas.TABLES) | MODELS
    for step, tables in STEPS.items():
        assets_def = defs.get_assets_def(AssetKey(step))
        assert {k.to_user_string() for k in assets_def.keys} == tables
        assert not assets_def.can_subset  # one Beam job or query writes them together
        assert all(graph.get(AssetKey(t)).description for t in tables), step
    # a job that names one table of a step gets the step's other tables too
    job = defs.resolve_job_def("sample_batch")
    assert {k.to_user_string() for k in job.asset_layer.selected_asset_keys} == (
        STEPS["prompts"] | STEPS["candidates"] | STEPS["candidate_scores"])


def test_lineage_edges():
    graph = defs.resolve_asset_graph()

    def parents(name):
        return {p.to_user_string() for p in graph.get(AssetKey(name)).parent_keys}

    assert parents("candidates") == {"prompts"}
    assert parents("candidate_scores") == {"candidates", "base_reward_model"}
    assert parents("tournament_pairs") == parents("score_errors") == {"candidates", "base_reward_model"}
    assert parents("west_of_n_pairs") == parents("pair_draws") == {"candidates", "candidate_scores",
                                                                   "tournament_pairs"}
    assert parents("filtered_pairs") == parents("pair_funnel") == {"west_of_n_pairs", "pair_selection_report"}
    assert parents("student_reward_model") == {"human_preferences", "filtered_pairs", "eval_preferences",
                                               "base_reward_model"}
    assert parents("student_rounds") == {"student_reward_model", "candidates", "human_preferences", "eval_preferences"}


def test_resources_have_embedded_defaults():
    resources = defs.resources
    assert resources["beam_runner"].runner == "DirectRunner"
    assert resources["settings"].n >= 2


def test_prompt_batches_partition_the_inference_assets_only():
    graph = defs.resolve_asset_graph()
    partitioned = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).partitions_def}
    assert partitioned == STEPS["prompts"] | STEPS["candidates"] | STEPS["candidate_scores"]
    assert graph.get(AssetKey("candidates")).partitions_def.name == "prompt_batches"
    # inference assets retry transient failures; every asset has a code version
    for name in ("candidates", "candidate_scores", "student_rounds"):
        assert defs.get_assets_def(AssetKey(name)).op.retry_policy.max_retries >= 1, name
    assert all(graph.get(k).code_version for k in graph.get_all_asset_keys())


def test_checks_sensor_schedule_and_jobs():
    graph = defs.resolve_asset_graph()
    checks = {(k.asset_key.to_user_string(), k.name): graph.get_check_spec(k) for k in graph.asset_check_keys}
    blocking = {key for key, spec in checks.items() if spec.blocking}
    assert blocking == {("candidates", "candidates_complete"), ("candidates", "candidates_unique"),
                        ("candidate_scores", "rewards_finite"), ("west_of_n_pairs", "west_of_n_pairs_valid"),
                        ("filtered_pairs", "filtered_pairs_valid"),
                        ("base_reward_model", "teacher_learns_preference")}  # blocks only with teacher_gate: block
    assert set(checks) - blocking == {("student_reward_model", "student_not_worse_than_base")}
    assert [s.name for s in defs.sensors] == ["prompt_inbox", "evaluations_follow_models", "dead_runs"]
    assert [s.name for s in defs.schedules] == ["refresh_student"]
    assert defs.resolve_job_def("sample_batch") and defs.resolve_job_def("rebuild_student")
    assert [op.name for op in defs.resolve_job_def("experiment").graph.node_defs] == [
        "experiment_estimate", "experiment_inputs", "experiment_students", "experiment_report"]


def test_resources_bind_environment_variables(monkeypatch, tmp_path):
    from dagster import EnvVar

    from wofn_dagster.resources import wofn_resources

    monkeypatch.setenv("WOFN_POLICY", "my-policy")
    monkeypatch.setenv("WOFN_BEAM_RUNNER", "DaskRunner")
    monkeypatch.setenv("WOFN_BEAM_OPTIONS", "--dask_npartitions=4 --direct_num_workers=2")
    resources = wofn_resources(home=str(tmp_path), profile="tiny")
    assert resources["policy"].model == EnvVar("WOFN_POLICY")
    assert resources["beam_runner"].runner == EnvVar("WOFN_BEAM_RUNNER")
    assert resources["beam_runner"].pipeline_options == ["--dask_npartitions=4", "--direct_num_workers=2"]
    assert resources["reward_models"].backbone == "tiny-bert"  # unset: the profile's default
    assert resources["duckdb"].database == str(tmp_path / "wofn.duckdb")
    # an explicit override wins over the environment
    assert wofn_resources(home=str(tmp_path), profile="tiny", policy="other").get("policy").model == "other"


_KILLED_RUN = """
import os, signal, sys
from dagster import DagsterInstance, asset, materialize

@asset
def killed():
    os.kill(os.getpid(), signal.SIGKILL)  # the run worker dies mid-step, as under the OOM killer

with DagsterInstance.get() as instance:
    materialize([killed], instance=instance)
"""


def test_dead_runs_sensor_marks_a_killed_runs_run_failed(tmp_path):
    """A run whose worker was SIGKILLed stays STARTED; the dead_runs sensor marks it FAILURE, once."""
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    child = subprocess.run([sys.executable, "-c", _KILLED_RUN], env=env, capture_output=True, timeout=300)
    assert child.returncode == -signal.SIGKILL
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        [run] = instance.get_runs()
        assert run.status == DagsterRunStatus.STARTED
        result = dead_runs(build_sensor_context(instance=instance))
        assert isinstance(result, SkipReason) and run.run_id in result.skip_message
        failed = instance.get_run_by_id(run.run_id)
        assert failed.status == DagsterRunStatus.FAILURE
        messages = [r.dagster_event.message for r in instance.all_logs(run.run_id)
                    if r.dagster_event and r.dagster_event.event_type_value == "PIPELINE_FAILURE"]
        assert any("is gone without reporting the run's end" in m for m in messages), messages
        assert dead_runs(build_sensor_context(instance=instance)).skip_message == "no dead run workers"
