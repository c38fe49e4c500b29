"""The Dagster definitions load and name the product's assets."""

from __future__ import annotations

from dagster import AssetKey

from wofn_dagster.definitions import defs

ASSETS = {"human_preferences", "eval_preferences", "base_reward_model", "prompts", "candidates",
          "candidate_scores", "west_of_n_pairs", "filtered_pairs", "student_reward_model", "student_rounds",
          "reward_model_evaluations"}


def test_definitions_load_with_the_product_asset_keys():
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == ASSETS


def test_lineage_edges():
    graph = defs.resolve_asset_graph()

    def parents(name):
        return {p.to_user_string() for p in graph.get(AssetKey(name)).parent_keys}

    assert parents("candidates") == {"prompts"}
    assert parents("candidate_scores") == {"candidates", "base_reward_model"}
    assert parents("west_of_n_pairs") == {"candidates", "candidate_scores"}
    assert parents("filtered_pairs") == {"west_of_n_pairs"}
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
    assert partitioned == {"prompts", "candidates", "candidate_scores"}
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
    assert [s.name for s in defs.sensors] == ["prompt_inbox", "evaluations_follow_models"]
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
