"""The SQL files document the columns they produce; keep those headers in step with wofn.schemas."""

from __future__ import annotations

import re

import pyarrow as pa
import pytest

from wofn import schemas
from wofn.paths import SQL_DIR


def _documented_output(sql_file: str) -> list[str]:
    header = []
    for line in (SQL_DIR / sql_file).read_text().splitlines():
        if not line.startswith("--"):
            break
        header.append(line[2:].strip())
    text = "\n".join(header)
    block = re.search(r"Produces \(wofn\.schemas\.(\w+)[^)]*\):\n(.*?)\n\n", text, re.S)
    assert block, f"{sql_file}: no 'Produces (wofn.schemas.X ...):' block in the header"
    assert block.group(1) == "PAIRS"
    return [c.strip() for c in block.group(2).replace("\n", " ").split(",") if c.strip()]


@pytest.mark.parametrize("sql_file", ["west_of_n_pairs.sql", "west_of_n_pairs_pairwise.sql", "filter_pairs.sql"])
def test_sql_headers_list_the_schema_columns_in_order(sql_file):
    assert _documented_output(sql_file) == schemas.PAIRS.names


def test_conform_names_the_column_and_row():
    table = pa.table({"prompt_id": ["a", None], "prompt": ["x", "y"], "source": ["s", "s"]})
    with pytest.raises(schemas.SchemaError, match=r"here: column 'prompt_id' is null at row 1"):
        schemas.conform(table, schemas.PROMPTS, "here")
    with pytest.raises(schemas.SchemaError, match="missing column"):
        schemas.conform(table.drop(["prompt"]), schemas.PROMPTS, "here")


def test_every_table_has_a_schema():
    assert set(schemas.TABLES) == {"human_preferences", "eval_preferences", "prompts", "candidates",
                                   "candidate_scores", "west_of_n_pairs", "filtered_pairs", "tournament_pairs",
                                   "reward_model_evaluations"}
