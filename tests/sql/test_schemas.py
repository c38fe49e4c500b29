"""The SQL files document the columns they produce; keep those headers in step with wofn.schemas."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest

from wofn import schemas
from wofn.paths import SQL_DIR


def _header(sql_file: Path) -> str:
    header = []
    for line in sql_file.read_text().splitlines():
        if not line.startswith("--"):
            break
        header.append(line[2:].strip())
    return "\n".join(header)


def _documented_output(sql_file: Path) -> tuple[str, list[str]]:
    block = re.search(r"Produces \(wofn\.schemas\.(\w+)[^)]*\):\n(.*?)\n\n", _header(sql_file), re.S)
    assert block, f"{sql_file}: no 'Produces (wofn.schemas.X ...):' block in the header"
    return block.group(1), [c.strip() for c in block.group(2).replace("\n", " ").split(",") if c.strip()]


# every SQL file that writes a wofn table (the analysis queries and the asset checks' queries
# document free-form outputs)
TABLE_SQL = sorted(p.relative_to(SQL_DIR).as_posix() for p in SQL_DIR.rglob("*.sql")
                   if not p.relative_to(SQL_DIR).as_posix().startswith(("analysis/", "checks/")))


def test_the_table_sql_files_are_the_expected_ones():
    assert TABLE_SQL == ["candidate_pool.sql", "filter_pairs.sql", "label_picks.sql", "label_tournaments.sql",
                         "length_control/balance_pairs.sql",
                         "length_control/finished_scores.sql", "length_control/length_band_scores.sql",
                         "length_control/residual_scores.sql",
                         "pair_filter_flags.sql", "pair_funnel.sql", "prompt_summary.sql", "selection_report.sql",
                         "selection_report_pairwise.sql", "strategies/vs_random.sql", "strategies/west_of_n.sql",
                         "west_of_n_pairs.sql"]


@pytest.mark.parametrize("sql_file", TABLE_SQL)
def test_sql_headers_list_the_schema_columns_in_order(sql_file):
    name, columns = _documented_output(SQL_DIR / sql_file)
    assert columns == getattr(schemas, name).names


@pytest.mark.parametrize("sql_file", sorted(p.relative_to(SQL_DIR).as_posix() for p in SQL_DIR.rglob("*.sql")))
def test_every_sql_file_states_reads_and_parameters(sql_file):
    header = _header(SQL_DIR / sql_file)
    assert "Reads:" in header and "Parameters" in header, sql_file
    assert "Produces" in header, sql_file
    assert "select * from final" in (SQL_DIR / sql_file).read_text(), sql_file


def test_conform_names_the_column_and_row():
    table = pa.table({"prompt_id": ["a", None], "prompt": ["x", "y"], "source": ["s", "s"]})
    with pytest.raises(schemas.SchemaError, match=r"here: column 'prompt_id' is null at row 1"):
        schemas.conform(table, schemas.PROMPTS, "here")
    with pytest.raises(schemas.SchemaError, match="missing column"):
        schemas.conform(table.drop(["prompt"]), schemas.PROMPTS, "here")


def test_every_table_has_a_schema():
    assert set(schemas.TABLES) == {"human_preferences", "eval_preferences", "prompts", "candidates",
                                   "candidate_scores", "west_of_n_pairs", "filtered_pairs", "tournament_pairs",
                                   "pair_draws", "pair_selection_report", "pair_funnel",
                                   "reward_model_evaluations", "prompt_errors", "candidate_errors", "score_errors"}
