"""The pair assets through a real in-process Dagster materialize, over crafted tables (no models run)."""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import materialize
from pair_tables import candidates_table, crafted_rows, scores_table
from pydantic import ValidationError

from wofn import catalog, pairwise, schemas
from wofn.settings import SettingsError
from wofn_dagster.definitions import defs
from wofn_dagster.resources import WofnSettings, wofn_resources
from wofn_dagster.selections import select


def make_home(root, kind: str = "reward_model"):
    cand_rows, score_rows = crafted_rows()
    catalog.write_parquet(candidates_table(cand_rows), root / "tables" / "candidates")
    catalog.write_parquet(scores_table(score_rows), root / "tables" / "candidate_scores")
    teacher = root / "models" / "base_reward_model"
    teacher.mkdir(parents=True)
    (teacher / "config.json").write_text("{}")
    (teacher / "manifest.json").write_text(json.dumps({"kind": kind}))
    return root


def run(root, **overrides):
    return materialize(
        list(defs.assets), selection=select("west_of_n_pairs", "filtered_pairs"),
        resources=wofn_resources(home=str(root), profile="tiny", **overrides),
        raise_on_error=False)


def failure(result) -> str:
    """The failed step's error text, its cause (the asset's own exception) included."""
    error = result.get_step_failure_events()[0].event_specific_data.error
    return error.message + (error.cause.message if error.cause else "")


def test_non_default_strategy_materializes_pairs_report_and_funnel(tmp_path):
    home = make_home(tmp_path)
    result = run(home, strategy="best_vs_random", pair_seed=3, confidence_quantile=0.0, logprob_quantile=0.0,
                 likelihood="sum", max_pair_tokens=3)
    assert result.success
    selected = result.asset_materializations_for_node("west_of_n_pairs")[0].metadata
    assert selected["strategy"].value == "best_vs_random" and selected["pair_seed"].value == 3
    assert set(selected["pairs_per_strategy"].value) == set(schemas.STRATEGIES)

    con = duckdb.connect(str(home / "wofn.duckdb"), read_only=True)
    try:
        views = {r[0] for r in con.sql("select view_name from duckdb_views() where not internal").fetchall()}
        assert views == {"west_of_n_pairs", "filtered_pairs", "pair_draws", "pair_selection_report", "pair_funnel"}
        # west_of_n_pairs holds best_vs_random's pairs, seed 3, exactly as the draws say
        expected = con.sql("select prompt_id from pair_draws where strategy = 'best_vs_random' and outcome = 'pair' "
                           "order by 1").fetchall()
        assert con.sql("select prompt_id from west_of_n_pairs order by 1").fetchall() == expected
        assert con.sql("select distinct pair_seed from pair_draws where strategy <> 'west_of_n'").fetchall() == [(3,)]
        assert con.sql("select distinct strategy, pair_seed from pair_selection_report where selected").fetchall() == [
            ("best_vs_random", 3)]
        funnel = con.sql("select strategy, pair_seed, step, setting, pairs_kept from pair_funnel "
                         "order by step_order").fetchall()
        assert [r[:2] for r in funnel] == [("best_vs_random", 3)] * 6
        assert [r[3] for r in funnel] == ["all pairs", "q=0.0", "q=0.0 of logprob_sum", "off", "<= 3",
                                          "longer = shorter"]  # the profile's length_balance
        kept = con.sql("select count(*) from filtered_pairs").fetchall()[0][0]
        assert funnel[-1][4] == kept and kept < funnel[0][4]
        assert con.sql("select max(greatest(chosen_num_tokens, rejected_num_tokens)) from filtered_pairs"
                       ).fetchall()[0][0] <= 3
    finally:
        con.close()


def test_unknown_strategy_in_settings_fails_before_any_sql(tmp_path):
    home = make_home(tmp_path)
    with pytest.raises(SettingsError, match="strategy must be one of"):  # the resources are refused
        run(home, strategy="west_of_n'; drop view candidates; --")
    assert not (home / "tables" / "west_of_n_pairs").exists()


@pytest.mark.parametrize("field, value", [("confidence_quantile", "0.5; drop table x"),
                                          ("pair_seed", "0; drop table x"),
                                          ("max_pair_tokens", "5; drop table x")])
def test_settings_refuse_sql_text_in_numeric_fields(field, value):
    with pytest.raises(SettingsError, match=f"{field} must be"):
        WofnSettings.from_profile("tiny", **{field: value})
    fields = WofnSettings.from_profile("tiny").model_dump()
    with pytest.raises(ValidationError):  # as the launchpad sets them
        WofnSettings(**{**fields, field: value})


def test_pairwise_teacher_refuses_other_strategies_and_replaces_stale_draws(tmp_path):
    home = make_home(tmp_path)
    assert run(home).success  # pointwise: pair_draws written
    assert (home / "tables" / "pair_draws").exists()
    (home / "models" / "base_reward_model" / "manifest.json").write_text(json.dumps({"kind": pairwise.KIND}))
    tournaments = pa.Table.from_pylist([
        {"prompt_id": "p01_normal", "chosen_idx": 1, "rejected_idx": 2, "logit": 2.0, "confidence": 0.88,
         "comparisons": 3, "n_candidates": 4, "reward_model": "pw", "reward_model_revision": "r"},
        {"prompt_id": "p02_tie_max", "chosen_idx": 1, "rejected_idx": 3, "logit": -1.0, "confidence": 0.27,
         "comparisons": 3, "n_candidates": 4, "reward_model": "pw", "reward_model_revision": "r"},
    ], schema=schemas.TOURNAMENT_PAIRS)
    catalog.write_parquet(tournaments, home / "tables" / "tournament_pairs")

    # A pairwise teacher has no pointwise rewards to length-control: the profile's band is turned off here.
    refused = run(home, strategy="random_pair", length_control="none")
    assert not refused.success
    assert "teacher is pairwise" in failure(refused)

    done = run(home, length_control="none")
    assert done.success
    draws = pq.read_table(home / "tables" / "pair_draws").to_pylist()  # the pointwise draws are replaced
    assert len(draws) == 13 and {d["strategy"] for d in draws} == {"west_of_n"}
    assert [d["prompt_id"] for d in draws if d["outcome"] == "pair"] == ["p01_normal"]
    report = pq.read_table(home / "tables" / "pair_selection_report").to_pylist()
    counts = {r["reason"]: r["count"] for r in report}
    assert counts["prompts"] == 13 and counts["pairs"] == 1 and counts["teacher_prefers_rejected"] == 1
    assert counts["no_tournament_pair"] == 11
    con = duckdb.connect(str(home / "wofn.duckdb"), read_only=True)
    try:
        assert con.sql("select count(*) from pair_draws where strategy = 'west_of_n'").fetchall() == [(13,)]
        assert con.sql("select prompt_id from west_of_n_pairs").fetchall() == [("p01_normal",)]
    finally:
        con.close()
