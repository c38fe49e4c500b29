"""reward_model_evaluations: every model on each held-out set (the evaluation pairs and, with human_holdout,
the human pairs no model trained on), each student paired with the base by a 95% bootstrap interval."""

from __future__ import annotations

import shutil

import duckdb
import pyarrow.parquet as pq
import pytest
from dagster import AssetSelection, DagsterInstance, materialize

from wofn import data, profiles, stats
from wofn.paths import WofnHome
from wofn_dagster.definitions import defs
from wofn_dagster.resources import wofn_resources

HOLDOUT = 0.25


def run(root, *assets, **overrides):
    return materialize(list(defs.assets), selection=AssetSelection.assets(*assets),
                       resources=wofn_resources(home=str(root), profile="tiny",
                                                **{"rounds": 1, "human_holdout": HOLDOUT, **overrides}),
                       instance=DagsterInstance.ephemeral())


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Two real tiny reward models (seeds 0 and 1) as base and student, evaluated on both held-out sets."""
    root = tmp_path_factory.mktemp("evaluations")
    home = WofnHome(root)
    run(root, "human_preferences", "eval_preferences", "base_reward_model", seed=1)
    shutil.copytree(home.model_dir("base_reward_model"), home.model_dir("student_reward_model"))
    run(root, "base_reward_model", seed=0)
    result = run(root, "eval_preferences", "reward_model_evaluations")
    metadata = [m for m in result.asset_materializations_for_node("reward_model_evaluations")][0].metadata
    return home, pq.read_table(home.table_dir("reward_model_evaluations")).to_pylist(), metadata


def test_one_row_per_model_and_held_out_set(evaluated):
    home, rows, _ = evaluated
    held = data.holdout_pairs(profiles.TINY.replace(human_holdout=HOLDOUT))
    assert 0 < held.num_rows < 64
    assert [(r["eval_set"], r["round"], r["role"], r["n"]) for r in rows] == [
        ("eval_pairs", 0, "base", 48), ("eval_pairs", 1, "student", 48),
        ("human_holdout", 0, "base", held.num_rows), ("human_holdout", 1, "student", held.num_rows)]
    # the held-out pairs trained neither model
    trained = set(pq.read_table(home.table_dir("human_preferences")).column("pair_id").to_pylist())
    assert trained.isdisjoint(held.column("pair_id").to_pylist()) and len(trained) == 64 - held.num_rows
    assert rows[0]["revision"] != rows[1]["revision"]  # two seeds, two models


def test_students_are_paired_with_the_base_on_the_same_pairs(evaluated):
    home, rows, metadata = evaluated
    for base, student in (rows[0:2], rows[2:4]):
        assert base["delta_accuracy"] is None and base["delta_accuracy_low"] is None
        for metric in stats.METRICS:
            delta = student[f"delta_{metric}"]
            assert delta == pytest.approx(student[metric] - base[metric])
            assert student[f"delta_{metric}_low"] <= delta <= student[f"delta_{metric}_high"]
            assert student[f"delta_{metric}_low"] < student[f"delta_{metric}_high"]  # two different models
    text = metadata["student_minus_base_interval"].value
    assert text.startswith(f"{rows[1]['delta_accuracy']:+.3f} [")
    assert ("within noise" in text) == (rows[1]["delta_accuracy_low"] <= 0 <= rows[1]["delta_accuracy_high"])
    assert metadata["student_minus_base_on_human_holdout"].value.startswith(f"{rows[3]['delta_accuracy']:+.3f} [")
    assert "| human_holdout (" in metadata["table"].value
    # SQL analysis: the catalog view holds both sets
    con = duckdb.connect(str(home.root / "wofn.duckdb"), read_only=True)
    sets = con.sql("select eval_set, count(*) from reward_model_evaluations group by 1 order by 1").fetchall()
    con.close()
    assert sets == [("eval_pairs", 2), ("human_holdout", 2)]


def test_stored_evaluations_are_reused_and_a_holdout_that_trained_a_model_is_refused(evaluated):
    home, rows, _ = evaluated
    manifest = home.model_dir("student_reward_model") / "manifest.json"
    before = manifest.read_text()
    run(home.root, "reward_model_evaluations")
    assert manifest.read_text() == before  # same sets: reused from the manifest, nothing recomputed
    # a larger share now would hold out pairs the models trained on: refused, naming the cause
    with pytest.raises(ValueError, match=r"human_holdout 0.5: [0-9]+ of its pairs .* Rematerialize human_preferences"):
        run(home.root, "reward_model_evaluations", human_holdout=0.5)
