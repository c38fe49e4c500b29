"""Reading pairs and prompts: ids, dedup, and errors that name the file."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wofn import data, schemas
from wofn.paths import DATA_DIR


def test_shipped_pairs_load_in_schema():
    table = data.load_preferences(DATA_DIR / "hh_train.parquet")
    assert table.schema.equals(schemas.PREFERENCES) and table.num_rows == 1177
    assert len(set(table.column("pair_id").to_pylist())) == 1177


def test_prompt_ids_are_stable_and_dedup(tmp_path):
    path = tmp_path / "p.jsonl"
    lines = [{"prompt": "\n\nHuman: hi\n\nAssistant:"}, {"prompt": "\n\nHuman:  hi \n\nAssistant: "},
             {"prompt": "\n\nHuman: other\n\nAssistant:"}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    table = data.load_prompts(path)
    assert table.num_rows == 2  # whitespace variants share one prompt_id
    assert data.prompt_id("\n\nHuman: hi\n\nAssistant:") == data.prompt_id("\n\nHuman:  hi \n\nAssistant: ")
    assert table.column("prompt_id").to_pylist() == sorted(table.column("prompt_id").to_pylist())
    assert data.load_prompts(path, limit=1).num_rows == 1


def test_every_left_out_prompt_is_an_error_row_with_its_reason_file_and_row(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b  c", "", "x\x00y", "b c", "a", "  ", "z" * 70_000, "q"],
                             "source": ["s1", None, "s", "s", "", "s", "s", "s", ""]}), path)
    kept, errors = data.read_prompts(path)
    # the first of each prompt is kept, with its own source (else the file's name)
    assert sorted((r["prompt"], r["source"]) for r in kept.to_pylist()) == [
        ("a", "s1"), ("b  c", "p.parquet"), ("q", "p.parquet")]
    assert [(r["reason"], r["row"], r["detail"], r["prompt_id"]) for r in errors.to_pylist()] == [
        ("empty_prompt", 2, "the prompt is empty", None),
        ("nul_bytes", 3, "the prompt holds a NUL byte", None),
        ("duplicate_prompt", 4, "same prompt as p.parquet row 1", data.prompt_id("b c")),
        ("duplicate_prompt", 5, "same prompt as p.parquet row 0", data.prompt_id("a")),
        ("empty_prompt", 6, "the prompt is empty", None),
        ("prompt_too_long", 7, "70,000 characters > the limit of 65,536", None)]
    assert set(errors.column("source").to_pylist()) == {"p.parquet"} and errors.schema.equals(schemas.ERRORS)


def test_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"prompt": ["x"], "chosen": ["y"]}), path)
    with pytest.raises(data.InputError, match=r"bad\.parquet.*rejected"):
        data.load_preferences(path)


def test_bad_jsonl_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a"}\nnot json\n')
    with pytest.raises(data.InputError, match=r"bad\.jsonl: line 2"):
        data.load_prompts(path)


def test_hash_part_is_a_stable_disjoint_split_of_the_pairs():
    rows = data.load_preferences(DATA_DIR / "uf_train.parquet").to_pylist()
    held, rest = data.hash_part(rows, "holdout"), data.hash_part(rows, "rest")
    ids = lambda part: {r["pair_id"] for r in part}  # noqa: E731
    assert ids(held).isdisjoint(ids(rest)) and len(held) + len(rest) == len(rows)
    assert 0.4 < len(held) / len(rows) < 0.6
    # a row's part depends on its own id only: the same split from a shuffled subset
    subset = rows[::-1][:300]
    assert ids(data.hash_part(subset, "holdout")) == ids(held) & ids(subset)
    assert len(held) == 451  # docs/results_teacher.md's UF held-out set
    with pytest.raises(ValueError, match="part must be"):
        data.hash_part(rows, "train")
