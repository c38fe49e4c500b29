"""The asset checks as data gates: real checks, real DuckDB, real Dagster runs over crafted tables."""

from __future__ import annotations

import json
import math

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import AssetCheckSeverity, AssetKey, AssetSelection, DagsterInstance, materialize
from pair_tables import candidates_table, crafted_rows, scores_table

from wofn import catalog, schemas
from wofn.paths import WofnHome
from wofn_dagster import checks
from wofn_dagster.definitions import defs
from wofn_dagster.resources import wofn_resources
from wofn_dagster.selections import select


def write_batch(root, key: str, cand_rows: list[tuple], score_rows: list[tuple], prompt_ids=None) -> WofnHome:
    """A home with one prompt batch of crafted prompts, candidates and scores, and a pointwise teacher."""
    home = WofnHome(root)
    prompt_ids = sorted(prompt_ids or {r[0] for r in cand_rows})
    prompts = pa.table({"prompt_id": prompt_ids, "prompt": [f"q {p}" for p in prompt_ids],
                        "source": ["test"] * len(prompt_ids)}, schema=schemas.PROMPTS)
    catalog.write_parquet(prompts, home.partition_dir("prompts", key))
    catalog.write_parquet(candidates_table(cand_rows), home.partition_dir("candidates", key))
    catalog.write_parquet(scores_table(score_rows), home.partition_dir("candidate_scores", key))
    teacher = home.model_dir("base_reward_model")
    teacher.mkdir(parents=True, exist_ok=True)
    (teacher / "config.json").write_text("{}")
    (teacher / "manifest.json").write_text(json.dumps({"kind": "reward_model"}))
    return home


def clean_rows(n: int = 2) -> tuple[list[tuple], list[tuple]]:
    cands = [(f"p{i}", j, f"answer {i}.{j}", 3 + j, -1.0 - j) for i in range(3) for j in range(n)]
    scores = [(f"p{i}", j, float(j) - i / 10) for i in range(3) for j in range(n)]
    return cands, scores


def run(root, selection, **overrides):
    return materialize(list(defs.assets) + list(defs.asset_checks), selection=selection,
                       resources=wofn_resources(home=str(root), profile="tiny", **overrides),
                       instance=DagsterInstance.ephemeral(), raise_on_error=False)


def evaluations(result) -> dict:
    return {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()}


def materialized(result) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()
            for e in [e.event_specific_data.materialization]}


def test_duplicate_candidate_fails_the_blocking_check_and_stops_the_pairs(tmp_path):
    cand_rows, score_rows = crafted_rows()  # p10_dup_rows and p11_conflicting_text repeat a (prompt_id, candidate_idx)
    write_batch(tmp_path, "crafted", cand_rows, score_rows)
    result = run(tmp_path, AssetSelection.checks(checks.candidates_unique)
                 | select("west_of_n_pairs", "filtered_pairs"))
    assert not result.success
    unique = evaluations(result)["candidates_unique"]
    assert not unique.passed and unique.severity == AssetCheckSeverity.ERROR
    assert unique.metadata["duplicated_keys"].value == 2
    assert {(r["prompt_id"], r["copies"], r["batches"]) for r in unique.metadata["examples"].value} == {
        ("p10_dup_rows", 2, "crafted"), ("p11_conflicting_text", 2, "crafted")}
    assert materialized(result) == set(), "nothing downstream of a failed blocking check runs"
    assert not (tmp_path / "tables" / "west_of_n_pairs").exists()


def test_non_finite_reward_fails_the_blocking_check(tmp_path):
    cands, scores = clean_rows()
    scores[1] = (scores[1][0], scores[1][1], math.nan)
    scores[4] = (scores[4][0], scores[4][1], math.inf)
    write_batch(tmp_path, "b1", cands, scores)
    result = run(tmp_path, AssetSelection.checks(checks.rewards_finite) | select("west_of_n_pairs"),
                 n=2)
    assert not result.success
    finite = evaluations(result)["rewards_finite"]
    assert not finite.passed and finite.metadata["not_finite"].value == 2
    assert "west_of_n_pairs" not in materialized(result)


def test_a_clean_batch_passes_every_gate_and_pairs_follow(tmp_path):
    cands, scores = clean_rows()
    write_batch(tmp_path, "b1", cands, scores)
    result = run(tmp_path, AssetSelection.checks(checks.candidates_complete, checks.candidates_unique,
                                                 checks.rewards_finite)
                 | select("west_of_n_pairs", "filtered_pairs"), n=2, confidence_quantile=0.0)
    assert result.success
    assert {name: e.passed for name, e in evaluations(result).items()} == {
        "candidates_complete": True, "candidates_unique": True, "rewards_finite": True,
        "west_of_n_pairs_valid": True, "filtered_pairs_valid": True}
    assert materialized(result) == {"west_of_n_pairs", "pair_draws", "pair_selection_report", "filtered_pairs",
                                    "pair_funnel"}
    # with N=4 the same batch is short of candidates: the gate names the prompts
    result = run(tmp_path, AssetSelection.checks(checks.candidates_complete) | select("west_of_n_pairs"),
                 n=4)
    short = evaluations(result)["candidates_complete"]
    assert not result.success and short.metadata["prompts_short_of_n"].value == 3


def test_failed_prompts_recorded_by_sampling_are_excused(tmp_path):
    cands, scores = clean_rows()
    prompt_ids = {r[0] for r in cands}
    cands = [r for r in cands if r[0] != "p1"]  # p1 got no candidates...
    home = write_batch(tmp_path, "b1", cands, scores, prompt_ids)
    failures = pa.table({"prompt_id": ["p1"], "reason": ["out of memory"]})  # ...and its failure is recorded
    catalog.write_parquet(failures, home.partition_dir(checks.SAMPLING_FAILURES, "b1"))
    result = run(tmp_path, AssetSelection.checks(checks.candidates_complete), n=2)
    complete = evaluations(result)["candidates_complete"]
    assert complete.passed and complete.metadata["prompts_with_recorded_failure"].value == 1


def test_pairs_invalid_names_each_problem(tmp_path):
    good = {"prompt_id": "ok", "prompt": "q", "chosen": "a", "rejected": "b", "chosen_idx": 0, "rejected_idx": 1,
            "chosen_reward": 1.0, "rejected_reward": 0.0, "margin": 1.0, "confidence": 0.731,
            "chosen_logprob_sum": -1.0, "rejected_logprob_sum": -1.0, "chosen_logprob_mean": -0.5,
            "rejected_logprob_mean": -0.5, "chosen_num_tokens": 2, "rejected_num_tokens": 2, "n_candidates": 2,
            "policy": "pi", "reward_model": "rm"}
    rows = [good,
            {**good, "prompt_id": "same_idx", "rejected_idx": 0},
            {**good, "prompt_id": "same_text", "rejected": "a"},
            {**good, "prompt_id": "low_conf", "margin": -0.4, "confidence": 0.4},
            {**good, "prompt_id": "ok"}]
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schemas.PAIRS), path)
    con = duckdb.connect()
    found = {(r["prompt_id"], r["problem"]) for r in
             catalog.run_sql_file(con, "checks/pairs_invalid", {"pairs": [str(path)]}).to_pylist()}
    assert found == {("same_idx", "same_candidate"), ("same_text", "same_text"),
                     ("low_conf", "confidence_out_of_range"), ("low_conf", "margin_not_positive"),
                     ("ok", "duplicate_prompt")}


def test_student_worse_than_base_warns(tmp_path):
    home = WofnHome(tmp_path)
    student = home.model_dir("student_reward_model")
    student.mkdir(parents=True)
    (student / "manifest.json").write_text(json.dumps({
        "evaluation": {"accuracy": 0.50, "length_balanced_accuracy": 0.52, "n": 40},
        "teacher_evaluation": {"accuracy": 0.60, "length_balanced_accuracy": 0.55, "n": 40}}))
    resources = wofn_resources(home=str(tmp_path), profile="tiny")
    result = checks.student_not_worse_than_base(settings=resources["settings"], home=resources["home"])
    assert not result.passed and result.severity == AssetCheckSeverity.WARN
    assert math.isclose(result.metadata["accuracy_drop"].value, 0.10)
    assert result.metadata["student_length_balanced_accuracy"].value == 0.52
    assert result.metadata["base_length_balanced_accuracy"].value == 0.55
    (spec,) = checks.student_not_worse_than_base.check_specs
    assert spec.asset_key == AssetKey("student_reward_model") and not spec.blocking
    (student / "manifest.json").write_text(json.dumps({"evaluation": {"accuracy": 0.59, "n": 40},
                                                       "teacher_evaluation": {"accuracy": 0.60, "n": 40}}))
    assert checks.student_not_worse_than_base(settings=resources["settings"], home=resources["home"]).passed


def test_teacher_gate_reads_the_base_models_validation_and_warns_or_blocks(tmp_path):
    """A real base_reward_model materialization reports its validation beside the length-only rules; the
    gate fails below the threshold, as a warning by default and as an error (blocking) when asked."""
    result = run(tmp_path, AssetSelection.assets("human_preferences", "eval_preferences", "base_reward_model")
                 | AssetSelection.checks(checks.teacher_learns_preference), teacher_min_length_balanced_accuracy=1.0)
    assert result.success  # the default gate warns
    gate = evaluations(result)["teacher_learns_preference"]
    assert not gate.passed and gate.severity == AssetCheckSeverity.WARN
    assert "distil little more than length" in gate.metadata["reason"].value
    [base] = [m for m in result.get_asset_materialization_events()
              if m.asset_key.to_user_string() == "base_reward_model"]
    metadata = base.event_specific_data.materialization.metadata
    validation = json.loads((WofnHome(tmp_path).model_dir("base_reward_model") / "manifest.json").read_text()
                            )["train_metrics"]["validation"]
    assert validation["n"] == 6  # 10% of the tiny profile's 64 human pairs
    assert metadata["val_length_balanced_accuracy"].value == validation["length_balanced_accuracy"]
    assert metadata["val_shorter_wins_accuracy"].value == validation["shorter_wins_accuracy"]
    assert gate.metadata["val_length_balanced_accuracy"].value == validation["length_balanced_accuracy"]

    resources = wofn_resources(home=str(tmp_path), profile="tiny", teacher_gate="block",
                               teacher_min_length_balanced_accuracy=1.0)
    blocked = checks.teacher_learns_preference(settings=resources["settings"], home=resources["home"])
    assert not blocked.passed and blocked.severity == AssetCheckSeverity.ERROR
    resources = wofn_resources(home=str(tmp_path), profile="tiny", teacher_min_length_balanced_accuracy=-1.0)
    assert checks.teacher_learns_preference(settings=resources["settings"], home=resources["home"]).passed
    (spec,) = checks.teacher_learns_preference.check_specs
    assert spec.asset_key == AssetKey("base_reward_model") and spec.blocking


def test_the_sampling_summary_read_file_by_file_is_the_whole_tables(tmp_path):
    """The candidates asset's metadata reads its batch one file at a time (a batch of 10^6 prompts is
    15,625 files): the counts and quantiles are those of the whole table, whatever file holds a row."""
    from wofn_dagster.assets.generation import _sampling_summary
    from wofn_dagster.assets.metadata import quantiles
    from wofn_dagster.assets.tables import read_table

    cands, scores = clean_rows(n=3)
    home = write_batch(tmp_path, "b1", cands[:4], scores)
    more = candidates_table(cands[4:]).set_column(schemas.CANDIDATES.get_field_index("finish_reason"),
                                                  schemas.CANDIDATES.field("finish_reason"),
                                                  pa.array(["length"] * (len(cands) - 4)))
    pq.write_table(more, home.partition_dir("candidates", "b1") / "part-more.parquet")
    pq.write_table(more.slice(0, 0), home.partition_dir("candidates", "b1") / "part-none.parquet")
    whole = read_table(home, "candidates", "b1")
    count, stop, tokens, means, revision = _sampling_summary(home, "b1")
    assert (count, stop, tokens, revision) == (9, 4, sum(whole.column("num_tokens").to_pylist()), "abc123")
    assert quantiles(means) == quantiles(whole.column("logprob_mean"))
