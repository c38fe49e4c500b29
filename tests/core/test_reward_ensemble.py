"""Teacher ensembles: K reward models as one teacher (mean reward, per-member rewards, pair agreement)."""

from __future__ import annotations

import json
import math

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_toy_pairs
from dagster import AssetSelection, materialize
from pair_tables import candidates_table, scores_table

from beam_jobs import sample_candidates, score_candidates
from wofn import catalog, evaluation, models, pairs, reward_ensemble, schemas, scoring, training
from wofn.settings import SettingsError
from wofn_dagster.definitions import defs
from wofn_dagster.resources import RewardModelResource, WofnSettings, wofn_resources
from wofn_dagster.selections import select

CONFIG = training.TrainConfig(epochs=2, batch_size=8, learning_rate=1e-3, max_length=48, log_every=1, seed=3)


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    out = tmp_path_factory.mktemp("ensemble") / "teacher"
    metrics = training.train_ensemble(models.TINY_BERT, make_toy_pairs(60, 0), CONFIG, out, members=3,
                                      manifest={"role": "base"})
    return out, metrics


def test_members_are_seeded_models_on_one_validation_split(ensemble):
    out, metrics = ensemble
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == reward_ensemble.KIND and manifest["role"] == "base"
    assert manifest["members"] == ["members/0", "members/1", "members/2"] and manifest["member_seeds"] == [3, 4, 5]
    assert manifest["revision"] == reward_ensemble.revision_of(manifest["member_revisions"])
    assert len(set(manifest["member_revisions"])) == 3, "different seeds, different weights"
    member_configs = [json.loads((out / m / "manifest.json").read_text())["train_config"] for m in manifest["members"]]
    assert [c["seed"] for c in member_configs] == [3, 4, 5] and {c["split_seed"] for c in member_configs} == {3}
    assert not list(out.glob("*.safetensors")), "the weights live in the member folders only"
    validation = metrics["validation"]
    assert validation["n"] == 6 and validation["members"] == 3 and len(validation["member_accuracies"]) == 3
    assert 0 <= validation["unanimous_share"] <= 1
    assert {r["member"] for r in metrics["history"]} == {0, 1, 2}


def test_loaded_ensemble_reward_is_the_members_mean(ensemble):
    out, _ = ensemble
    rm = models.load_reward_model(str(out))
    assert isinstance(rm.model, reward_ensemble.RewardEnsemble) and rm.revision.startswith("ensemble:")
    toy = make_toy_pairs(6, 5)
    prompts, responses = [p["prompt"] for p in toy], [p["chosen"] for p in toy]
    scored = scoring.score_members(rm, prompts, responses, 48)
    separately = [scoring.score(models.load_reward_model(str(out / "members" / str(k))), prompts, responses, 48)
                  for k in range(3)]
    for i, (reward, members) in enumerate(scored):
        assert members == pytest.approx([s[i] for s in separately], abs=1e-5)
        assert reward == pytest.approx(sum(members) / 3, abs=1e-6)
    assert scoring.score(rm, prompts, responses, 48) == [r for r, _ in scored]
    single = models.load_reward_model(str(out / "members" / "0"))
    assert all(members is None for _, members in scoring.score_members(single, prompts, responses, 48))
    # evaluation reads the mean like any reward
    assert evaluation.evaluate(str(out), make_toy_pairs(20, 6))["accuracy"] >= 0.9


def test_one_member_is_a_plain_model_and_ensembles_are_no_training_init(ensemble, tmp_path):
    out, _ = ensemble
    single = tmp_path / "single"
    training.train_ensemble(models.TINY_BERT, make_toy_pairs(20, 1), CONFIG, single, members=1)
    assert json.loads((single / "manifest.json").read_text())["kind"] == "reward_model"
    with pytest.raises(ValueError, match="is a reward ensemble.*student_init: backbone"):
        training.train_reward_model(str(out), make_toy_pairs(20, 1), CONFIG, tmp_path / "student")
    with pytest.raises(ValueError, match="members >= 1"):
        training.train_ensemble(models.TINY_BERT, make_toy_pairs(20, 1), CONFIG, tmp_path / "none", members=0)


def test_missing_member_folder_is_named(ensemble, tmp_path):
    out, _ = ensemble
    broken = tmp_path / "broken"
    broken.mkdir()
    manifest = json.loads((out / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps({**manifest, "members": ["members/0"]}))
    (broken / "config.json").write_text((out / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="member folder.*members/0"):
        models.load_reward_model(str(broken))


def test_scoring_job_writes_member_rewards(ensemble, tmp_path, prompts_file):
    out, _ = ensemble
    cands = tmp_path / "candidates"
    sample_candidates.run(["--prompts", str(prompts_file), "--output", str(cands), "--policy", "tiny-llama",
                           "--n", "2", "--max-new-tokens", "4"], save_main_session=False)
    scores = tmp_path / "scores"
    score_candidates.run(["--candidates", str(cands), "--output", str(scores), "--reward-model", str(out)],
                         save_main_session=False)
    rows = pq.read_table(sorted(scores.glob("*.parquet"))).to_pylist()
    assert len(rows) == 10
    for row in rows:
        assert len(row["member_rewards"]) == 3
        assert row["reward"] == pytest.approx(sum(row["member_rewards"]) / 3, abs=1e-6)


# --- agreement in the pair SQL --------------------------------------------------------------------

# (prompt_id, candidate_idx, response, num_tokens, logprob_sum) and
# (prompt_id, candidate_idx, reward = the members' mean, member rewards)
CANDIDATES = [("a", 0, "a0", 4, -2.0), ("a", 1, "a1", 4, -2.0), ("b", 0, "b0", 4, -2.0), ("b", 1, "b1", 4, -2.0),
              ("c", 0, "c0", 4, -2.0), ("c", 1, "c1", 4, -2.0)]
SCORES = [("a", 0, 2.0, [3.0, 2.0, 1.0]), ("a", 1, 0.0, [0.0, 0.0, 0.0]),   # all 3 members agree, margin 2
          ("b", 0, 1.0, [2.0, 2.0, -1.0]), ("b", 1, 0.0, [0.0, 0.0, 0.0]),  # 2 of 3, margin 1
          ("c", 0, 3.0, [9.0, 0.0, 0.0]), ("c", 1, 0.0, [0.0, 0.0, 0.0])]   # 1 of 3, two ties: 2/3, margin 3


def _tables(root, scores=SCORES):
    catalog.write_parquet(candidates_table(CANDIDATES), root / "candidates")
    catalog.write_parquet(scores_table(scores), root / "scores")
    return root / "candidates", root / "scores"


def test_pairs_carry_the_members_agreement(tmp_path):
    cands, scores = _tables(tmp_path)
    table, _ = pairs.select_pairs(cands, scores)
    agreement = dict(zip(table.column("prompt_id").to_pylist(), table.column("agreement").to_pylist()))
    assert agreement == pytest.approx({"a": 1.0, "b": 2 / 3, "c": 2 / 3})
    # the residual length control moves every member by the same fit, so agreement still compares them
    residual, _ = pairs.select_pairs(cands, scores, length_control="residual")
    assert residual.column("agreement").to_pylist() == table.column("agreement").to_pylist()


def test_confidence_filter_ranks_by_agreement_then_margin(tmp_path):
    cands, scores = _tables(tmp_path)
    selected, _ = pairs.select_pairs(cands, scores)
    catalog.write_parquet(selected, tmp_path / "pairs")
    by_margin, _ = pairs.filter_pairs(tmp_path / "pairs", 0.5, 0.0)
    assert by_margin.column("prompt_id").to_pylist() == ["a", "c"]  # margins 2 and 3 are above the median 2
    by_agreement, steps = pairs.filter_pairs(tmp_path / "pairs", 0.5, 0.0, confidence_measure="agreement")
    # (1, 2) > (2/3, 3) > (2/3, 1): the median key is c's, so a and c stay
    assert by_agreement.column("prompt_id").to_pylist() == ["a", "c"] and steps["confidence_filter"] == 2
    top, _ = pairs.filter_pairs(tmp_path / "pairs", 0.9, 0.0, confidence_measure="agreement")
    assert top.column("prompt_id").to_pylist() == ["a"]  # unanimous, though c has the larger margin
    funnel = pairs.pair_funnel(tmp_path / "pairs", 0.9, 0.0, confidence_measure="agreement").to_pylist()
    assert funnel[1]["setting"] == "q=0.9 of agreement, then confidence" and funnel[1]["pairs_kept"] == 1
    # the length balance keeps the most agreed-on pairs of each direction under the same measure
    assert pairs.balance_pairs(selected, "agreement").num_rows == 3  # all equal length: all kept


def test_agreement_needs_an_ensemble_teacher(tmp_path):
    cands, scores = _tables(tmp_path, [row[:3] for row in SCORES])
    selected, _ = pairs.select_pairs(cands, scores)
    assert selected.column("agreement").null_count == 3
    catalog.write_parquet(selected, tmp_path / "pairs")
    with pytest.raises(duckdb.Error, match="confidence_measure 'agreement' needs a teacher ensemble.*3 pairs"):
        pairs.filter_pairs(tmp_path / "pairs", 0.5, 0.0, confidence_measure="agreement")
    with pytest.raises(ValueError, match="confidence_measure must be"):
        pairs.filter_pairs(tmp_path / "pairs", 0.5, 0.0, confidence_measure="votes")
    with pytest.raises(Exception, match="confidence_measure"):
        WofnSettings.from_profile("tiny", confidence_measure="votes")
    with pytest.raises(Exception, match="teacher_members"):
        WofnSettings.from_profile("tiny", teacher_members=0)


def test_tables_written_before_the_columns_existed_still_read(tmp_path):
    """candidate_scores without member_rewards and pairs without agreement (an older wofn) read as NULL."""
    cands, _ = _tables(tmp_path)
    old_scores = scores_table([row[:3] for row in SCORES]).drop(["member_rewards"])
    catalog.write_parquet(old_scores, tmp_path / "old_scores")
    selected, _ = pairs.select_pairs(cands, tmp_path / "old_scores")
    assert selected.num_rows == 3 and selected.column("agreement").null_count == 3
    catalog.write_parquet(selected.drop(["agreement"]), tmp_path / "old_pairs")
    kept, _ = pairs.filter_pairs(tmp_path / "old_pairs", 0.0, 0.0)
    assert kept.num_rows == 3
    con = catalog.connect()
    catalog.create_view(con, "west_of_n_pairs", tmp_path / "old_pairs", temporary=True)  # one schema: no union
    assert con.execute("select count(*), count(agreement) from west_of_n_pairs").fetchall() == [(3, 0)]
    # a folder with old and new files reads both, NULL where the column is missing (the view made
    # again sees the new file's schema: union_by_name)
    catalog.write_parquet(selected.slice(0, 1), tmp_path / "old_pairs", "0-new.parquet")  # read first
    catalog.create_view(con, "west_of_n_pairs", tmp_path / "old_pairs", temporary=True)
    assert con.execute("select count(*), count(agreement) from west_of_n_pairs").fetchall() == [(4, 0)]
    con.close()
    assert schemas.conform(selected.drop(["agreement"]), schemas.PAIRS, "old").column("agreement").null_count == 3


# --- the Dagster assets ---------------------------------------------------------------------------


def test_base_reward_model_asset_trains_an_ensemble_and_pairs_filter_by_agreement(tmp_path):
    root = tmp_path / "home"
    resources = wofn_resources(home=str(root), profile="tiny", teacher_members=2, confidence_measure="agreement",
                               confidence_quantile=0.9, length_control="none", length_balance=True)
    result = materialize(list(defs.assets),
                         selection=AssetSelection.assets("human_preferences", "eval_preferences", "base_reward_model"),
                         resources=resources)
    assert result.success
    metadata = result.asset_materializations_for_node("base_reward_model")[0].metadata
    assert metadata["teacher_members"].value == 2 and len(metadata["val_member_accuracies"].value) == 2
    assert 0 <= metadata["val_unanimous_share"].value <= 1
    teacher = root / "models" / "base_reward_model"
    assert reward_ensemble.is_ensemble(teacher) and len(reward_ensemble.member_dirs(teacher)) == 2
    manifest = json.loads((teacher / "manifest.json").read_text())
    assert manifest["evaluation"]["n"] == 48, "evaluated on eval_preferences like any base model"

    # the teacher's scores, then the pair assets with the agreement filter
    catalog.write_parquet(candidates_table(CANDIDATES), root / "tables" / "candidates")
    catalog.write_parquet(scores_table(SCORES), root / "tables" / "candidate_scores")
    result = materialize(list(defs.assets), selection=select("west_of_n_pairs", "filtered_pairs"),
                         resources=resources)
    assert result.success
    filtered = result.asset_materializations_for_node("filtered_pairs")[0].metadata
    assert filtered["filters"].value["confidence_measure"] == "agreement"
    assert filtered["agreement_levels"].value == {"1.00": 1} and filtered["unanimous_share"].value == 1.0
    selected = result.asset_materializations_for_node("west_of_n_pairs")[0].metadata
    assert selected["agreement_levels"].value == {"1.00": 1, "0.67": 2}
    con = duckdb.connect(str(root / "wofn.duckdb"), read_only=True)
    try:
        assert con.sql("select prompt_id, agreement from filtered_pairs order by 1").fetchall() == [("a", 1.0)]
    finally:
        con.close()


def test_ensemble_settings_that_cannot_work_fail_before_training(tmp_path):
    with pytest.raises(SettingsError, match="teacher_members: 2 needs a pointwise teacher"):
        wofn_resources(home=str(tmp_path / "home"), profile="tiny", teacher_members=2, teacher="pairwise")
    # the same, set in the launchpad (each resource alone is valid): refused by the first asset
    resources = wofn_resources(home=str(tmp_path / "home"), profile="tiny", teacher_members=2, length_control="none")
    resources["reward_models"] = RewardModelResource(**{**resources["reward_models"].model_dump(),
                                                        "teacher": "pairwise"})
    result = materialize(list(defs.assets),
                         selection=AssetSelection.assets("human_preferences", "eval_preferences", "base_reward_model"),
                         resources=resources, raise_on_error=False)
    assert not result.success
    error = result.get_step_failure_events()[0].event_specific_data.error
    assert ("teacher_members: 2 needs a pointwise teacher"
            in error.message + (error.cause.message if error.cause else ""))
    assert not (tmp_path / "home" / "models" / "base_reward_model").exists()


# --- the measurement in docs/results_teacher.md ---------------------------------------------------


def test_the_sweeps_filter_measure_keeps_what_filter_pairs_keeps(tmp_path):
    """teacher_sweep.filter_selection measures the shipped filter: the same pairs kept as sql/filter_pairs.sql."""
    import random

    import numpy as np

    from wofn.experiment import teacher_sweep

    rng = random.Random(0)
    members = np.array([[rng.gauss(0.2, 1.0) for _ in range(40)] for _ in range(3)])
    mean = members.mean(0)
    rows = []
    for i in range(40):
        sign = 1.0 if mean[i] > 0 else -1.0  # the teacher's label: chosen = the higher mean reward
        rows.append({"prompt_id": f"p{i:02d}", "prompt": "x", "chosen": f"c{i}", "rejected": f"r{i}", "chosen_idx": 0,
                     "rejected_idx": 1, "chosen_reward": abs(mean[i]), "rejected_reward": 0.0, "margin": abs(mean[i]),
                     "confidence": 1 / (1 + math.exp(-abs(mean[i]))), "chosen_logprob_sum": -1.0,
                     "rejected_logprob_sum": -1.0, "chosen_logprob_mean": -1.0, "rejected_logprob_mean": -1.0,
                     "chosen_num_tokens": 3, "rejected_num_tokens": 3, "n_candidates": 2, "policy": "pi",
                     "reward_model": "rm",
                     "agreement": reward_ensemble.agreement([[sign * m] for m in members[:, i]])[0]})
    catalog.write_parquet(pa.Table.from_pylist(rows, schema=schemas.PAIRS), tmp_path / "pairs")
    by = {"r": {s: {"x_margins": list(members[s])} for s in range(3)}}
    result = teacher_sweep.filter_selection(by, "r", "x", members=3, quantile=0.5, n_boot=50)
    for measure in ("margin", "agreement"):
        kept, _ = pairs.filter_pairs(tmp_path / "pairs", 0.5, 0.0, confidence_measure=measure)
        kept_ids = sorted(kept.column("prompt_id").to_pylist())
        key, right = teacher_sweep._filter_keys(members, measure)
        assert kept_ids == [f"p{i:02d}" for i in range(40) if key[i] >= np.quantile(key, 0.5)]
        expected = sum(right[int(p[1:])] for p in kept_ids) / len(kept_ids)
        assert result[measure]["kept_accuracy"] == pytest.approx(expected) and result[measure]["kept"] == len(kept_ids)
    assert result["ensemble_all_pairs"] == pytest.approx(float((mean > 0).mean()))
