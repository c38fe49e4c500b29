"""Selecting and filtering West-of-N pairs with the SQL in `sql/`, over Parquet table folders.

Used by the pair assets and by iterative rounds alike; each call opens its own in-memory DuckDB
with temporary views, so it never waits on the shared catalog file.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from wofn import catalog, schemas


def select_pairs(candidates_dir: Path, judged_dir: Path, pairwise: bool = False) -> tuple[pa.Table, int]:
    """Best vs worst candidate per prompt; also the number of prompts with candidates.

    Pointwise teacher: `judged_dir` holds candidate_scores and sql/west_of_n_pairs.sql picks the
    extremes. Pairwise teacher: it holds tournament_pairs (the knockout winners and losers) and
    sql/west_of_n_pairs_pairwise.sql joins them to the candidates.
    """
    con = catalog.connect()
    try:
        catalog.create_view(con, "candidates", candidates_dir, temporary=True)
        judged = "tournament_pairs" if pairwise else "candidate_scores"
        catalog.create_view(con, judged, judged_dir, temporary=True)
        sql = "west_of_n_pairs_pairwise" if pairwise else "west_of_n_pairs"
        table = catalog.run_sql_file(con, sql, schema=schemas.PAIRS)
        n_prompts = catalog.scalar(con, "select count(distinct prompt_id) from candidates")
    finally:
        con.close()
    return table, n_prompts


def filter_pairs(pairs_dir: Path, confidence_quantile: float, logprob_quantile: float) -> tuple[pa.Table, dict]:
    """Pairs kept by both quantile filters (sql/filter_pairs.sql), and the funnel of counts."""
    con = catalog.connect()
    try:
        catalog.create_view(con, "west_of_n_pairs", pairs_dir, temporary=True)
        total = catalog.scalar(con, "select count(*) from west_of_n_pairs")
        after_confidence = catalog.run_sql_file(
            con, "filter_pairs", {"confidence_quantile": confidence_quantile, "logprob_quantile": 0.0}).num_rows
        table = catalog.run_sql_file(
            con, "filter_pairs",
            {"confidence_quantile": confidence_quantile, "logprob_quantile": logprob_quantile},
            schema=schemas.PAIRS)
    finally:
        con.close()
    funnel = {"west_of_n_pairs": total, "confidence_filter": after_confidence, "likelihood_filter": table.num_rows}
    return table, funnel


def pair_stats(table: pa.Table) -> dict:
    """Length and confidence summaries of a pair set (the length prior shows up here first)."""
    rows = table.to_pylist()
    n = len(rows)
    return {
        "pairs": n,
        "chosen_shorter_share": sum(len(r["chosen"]) < len(r["rejected"]) for r in rows) / n if n else 0.0,
        "mean_chosen_tokens": sum(r["chosen_num_tokens"] for r in rows) / n if n else 0.0,
        "mean_rejected_tokens": sum(r["rejected_num_tokens"] for r in rows) / n if n else 0.0,
        "mean_confidence": sum(r["confidence"] for r in rows) / n if n else 0.0,
    }
