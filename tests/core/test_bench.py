"""The benchmark's synthetic tables are real wofn tables: pair selection reads them."""

from __future__ import annotations

import pyarrow.parquet as pq

from bench import run
from wofn import schemas


def test_synthetic_tables_conform_to_the_schemas_added_columns_included(tmp_path):
    candidates, scores = run.write_synthetic_tables(tmp_path, prompts=5)
    for folder, schema in ((candidates, schemas.CANDIDATES), (scores, schemas.CANDIDATE_SCORES)):
        table = pq.read_table(next(folder.glob("*.parquet")))
        assert table.num_rows == 5 * run.N and table.schema.equals(schema, check_metadata=False)
