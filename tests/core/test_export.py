"""`wofn export`: TRL preference files read back, in both formats and both file types."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from pair_tables import build_home

from wofn import cli, export, rm_format, schemas
from wofn.generation import prompt_to_messages


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return build_home(tmp_path_factory.mktemp("run"))


def run_export(capsys, home, *args: str) -> tuple[int, str, str]:
    code = cli.main(["export", "--home", str(home.root), *args])
    out, err = capsys.readouterr()
    return code, out, err


def read_back(path) -> list[dict]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_standard_format_roundtrip(capsys, home, tmp_path, suffix):
    out = tmp_path / f"pairs{suffix}"
    code, stdout, err = run_export(capsys, home, "--output", str(out))
    assert code == 0, err
    summary = json.loads(stdout)
    pairs = pq.read_table(home.table_dir("filtered_pairs")).to_pylist()
    assert summary == {"output": str(out), "rows": len(pairs), "format": "trl", "table": "filtered_pairs",
                       "round": 1, "strategy": "west_of_n", "seed": None}
    rows = read_back(out)
    assert [r["prompt_id"] for r in rows] == [p["prompt_id"] for p in pairs]
    assert list(rows[0]) == schemas.TRL_PAIRS.names
    for row, pair in zip(rows, pairs):
        assert row["prompt"] == pair["prompt"]
        assert row["chosen"] == " " + pair["chosen"] and row["rejected"] == " " + pair["rejected"]
        assert row["prompt"] + row["chosen"] == rm_format.rm_text(pair["prompt"], pair["chosen"])
        assert (row["margin"], row["confidence"], row["chosen_logprob_mean"], row["rejected_num_tokens"]) == (
            pair["margin"], pair["confidence"], pair["chosen_logprob_mean"], pair["rejected_num_tokens"])
        assert (row["policy"], row["teacher"], row["round"], row["strategy"], row["seed"]) == (
            pair["policy"], pair["reward_model"], 1, "west_of_n", None)
        assert row["agreement"] == pair["agreement"]
    if suffix == ".parquet":
        assert pq.read_schema(out).equals(schemas.TRL_PAIRS, check_metadata=False)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_conversational_format_roundtrip(capsys, home, tmp_path, suffix):
    out = tmp_path / f"conv{suffix}"
    code, _, err = run_export(capsys, home, "--output", str(out), "--format", "trl-conversational",
                              "--table", "west_of_n_pairs")
    assert code == 0, err
    rows = read_back(out)
    pairs = pq.read_table(home.table_dir("west_of_n_pairs")).to_pylist()
    assert len(rows) == len(pairs) == 9
    for row, pair in zip(rows, pairs):
        assert row["prompt"] == prompt_to_messages(pair["prompt"])
        assert row["prompt"][-1]["role"] == "user" and all(set(m) == {"role", "content"} for m in row["prompt"])
        assert row["chosen"] == [{"role": "assistant", "content": pair["chosen"]}]
        assert row["rejected"] == [{"role": "assistant", "content": pair["rejected"]}]
        assert row["margin"] > 0 and row["teacher"] == pair["reward_model"]
    assert rows[0]["prompt"][0]["content"].startswith("question ")
    if suffix == ".parquet":
        assert pq.read_schema(out).equals(schemas.TRL_CONVERSATIONAL_PAIRS, check_metadata=False)


def test_refuses_to_overwrite_without_force(capsys, home, tmp_path):
    out = tmp_path / "pairs.jsonl"
    out.write_text("keep me\n")
    code, _, err = run_export(capsys, home, "--output", str(out))
    assert code == 2 and "exists; pass --force" in err
    assert out.read_text() == "keep me\n"
    code, _, err = run_export(capsys, home, "--output", str(out), "--force")
    assert code == 0, err
    assert len(read_back(out)) == 8
    assert [p.name for p in tmp_path.iterdir()] == ["pairs.jsonl"]  # no temporary file left behind


@pytest.mark.parametrize("args, message", [
    (["--table", "candidates"], "unknown pair table 'candidates'; expected one of filtered_pairs, west_of_n_pairs"),
    (["--table", "filtered_pairs; drop table x"], "unknown pair table"),
    (["--round", "3"], "no Parquet files in"),
    (["--round", "0"], "--round must be >= 1"),
])
def test_clear_errors(capsys, home, tmp_path, args, message):
    code, _, err = run_export(capsys, home, "--output", str(tmp_path / "x.jsonl"), *args)
    assert code == 2 and message in err
    assert not (tmp_path / "x.jsonl").exists()


def test_output_suffix_is_checked(capsys, home, tmp_path):
    code, _, err = run_export(capsys, home, "--output", str(tmp_path / "x.csv"))
    assert code == 2 and "must end in .parquet or .jsonl" in err


def test_round_2_needs_the_strategy_stated(capsys, home, tmp_path):
    out = tmp_path / "r2.jsonl"
    code, _, err = run_export(capsys, home, "--output", str(out), "--round", "2")
    assert code == 2 and "no pair_selection_report" in err and "--strategy" in err
    code, _, err = run_export(capsys, home, "--output", str(out), "--round", "2", "--strategy", "random_pair")
    assert code == 2 and "--seed is required" in err
    code, _, err = run_export(capsys, home, "--output", str(out), "--round", "2", "--strategy", "west_of_n")
    assert code == 0, err
    rows = read_back(out)
    expected = pq.read_table(home.round_dir(2) / "filtered_pairs").to_pylist()
    assert [r["prompt_id"] for r in rows] == [p["prompt_id"] for p in expected]
    assert {(r["round"], r["strategy"], r["seed"]) for r in rows} == {(2, "west_of_n", None)}


def test_stated_strategy_must_agree_with_the_run(capsys, home, tmp_path):
    code, _, err = run_export(capsys, home, "--output", str(tmp_path / "x.jsonl"), "--strategy", "random_pair",
                              "--seed", "1")
    assert code == 2 and "disagree with" in err and "records strategy west_of_n" in err


def test_to_trl_rejects_unknown_format(home):
    with pytest.raises(export.ExportError, match="unknown format"):
        export.export_pairs(home, home.root / "x.jsonl", fmt="dpo")
