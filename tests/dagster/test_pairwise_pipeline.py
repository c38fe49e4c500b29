"""The pairwise teacher through the Dagster assets: tournaments instead of per-candidate scores."""

from __future__ import annotations

import math

import duckdb
import pyarrow.parquet as pq
import pytest
from dagster import AssetSelection, DagsterInstance, materialize

from wofn.paths import WofnHome
from wofn.settings import SettingsError
from wofn_dagster.assets.tables import read_table
from wofn_dagster.definitions import defs
from wofn_dagster.partitions import prompt_batches
from wofn_dagster.resources import RewardModelResource, wofn_resources
from wofn_dagster.selections import select


def test_pairwise_teacher_materializes_tournament_pairs(tmp_path):
    resources = wofn_resources(home=str(tmp_path), profile="tiny", teacher="pairwise", rm_max_length=128)
    settings = resources["settings"]
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(prompt_batches.name, ["prompts_unlabeled"])
    result = materialize(
        list(defs.assets) + list(defs.asset_checks),
        selection=select("west_of_n_pairs", upstream=True),
        resources=resources, instance=instance, partition_key="prompts_unlabeled",
    )
    assert result.success
    scores = result.asset_materializations_for_node("candidate_scores")[0]
    assert scores.metadata["teacher"].value == "pairwise"
    checks = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["rewards_finite"] and checks["west_of_n_pairs_valid"], checks
    home = WofnHome(tmp_path)
    tournaments = read_table(home, "tournament_pairs").to_pylist()
    pairs = pq.read_table(tmp_path / "tables" / "west_of_n_pairs").to_pylist()
    assert (tmp_path / "tables" / "tournament_pairs" / "batch=prompts_unlabeled").is_dir()
    assert read_table(home, "candidate_scores").num_rows == 0  # the pointwise teacher's table: an empty batch
    [empty] = [m for m in result.asset_materializations_for_node("candidate_scores")
               if m.asset_key.path == ["candidate_scores"]]
    assert "pairwise" in empty.metadata["empty_because"].value
    assert 0 < len(tournaments) <= settings.max_prompts
    assert pairs, "some tournaments end with the best beating the worst"
    by_prompt = {t["prompt_id"]: t for t in tournaments}
    for pair in pairs:
        t = by_prompt[pair["prompt_id"]]
        assert (pair["chosen_idx"], pair["rejected_idx"]) == (t["chosen_idx"], t["rejected_idx"])
        assert math.isclose(pair["margin"], t["logit"]) and pair["confidence"] > 0.5
        assert pair["n_candidates"] == settings.n
    assert len(pairs) == sum(1 for t in tournaments if t["logit"] > 0)
    con = duckdb.connect(str(tmp_path / "wofn.duckdb"), read_only=True)
    assert con.sql("select count(*) from tournament_pairs").fetchall()[0][0] == len(tournaments)
    con.close()


def test_pairwise_teacher_with_a_length_control_fails_before_training(tmp_path):
    # the tournaments give no reward per candidate to regress on or band by: refused when the resources
    # are made, and (set in the launchpad, where each resource alone is valid) at the first asset
    with pytest.raises(SettingsError, match="length_control 'band' needs a reward per candidate"):
        wofn_resources(home=str(tmp_path), profile="tiny", teacher="pairwise", length_control="band")
    resources = wofn_resources(home=str(tmp_path), profile="tiny")
    resources["reward_models"] = RewardModelResource(**{**resources["reward_models"].model_dump(),
                                                        "teacher": "pairwise"})
    result = materialize(
        list(defs.assets), selection=AssetSelection.assets("base_reward_model").upstream(),
        resources=resources, instance=DagsterInstance.ephemeral(), raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_key == "base_reward_model"
    assert "length_control 'band' needs a reward per candidate" in str(failure.event_specific_data.error)
    assert not WofnHome(tmp_path).model_dir("base_reward_model").exists()


def test_pairwise_teacher_turns_the_profiles_length_band_off(tmp_path, monkeypatch):
    assert wofn_resources(home=str(tmp_path), profile="tiny")["settings"].length_control == "band"
    assert wofn_resources(home=str(tmp_path), profile="tiny", teacher="pairwise")["settings"].length_control == "none"
    monkeypatch.setenv("WOFN_TEACHER", "pairwise")
    settings = wofn_resources(home=str(tmp_path), profile="tiny")["settings"]
    assert (settings.length_control, settings.length_balance) == ("none", True)  # balancing needs no reward
    with pytest.raises(SettingsError, match="length_control 'residual' needs a reward per candidate"):
        wofn_resources(home=str(tmp_path), profile="tiny", length_control="residual")  # an explicit choice is refused
