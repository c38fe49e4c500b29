"""Pair assets, computed by DuckDB over the Parquet tables: West-of-N pairs and the filtered set."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from wofn import catalog, schemas
from wofn.paths import WofnHome
from wofn_dagster.assets.common import publish_table, quantiles
from wofn_dagster.resources import WofnHomeResource, WofnSettings


def _connect(h: WofnHome, *assets: str):
    """An in-memory DuckDB with temp views over the given tables (no lock on the shared catalog)."""
    con = catalog.connect()
    for asset in assets:
        catalog.create_view(con, asset, h.table_dir(asset), temporary=True)
    return con


def _pair_stats(table) -> dict:
    rows = table.to_pylist()
    shorter = sum(1 for r in rows if len(r["chosen"]) < len(r["rejected"]))
    return {
        "confidence_quantiles": MetadataValue.json(quantiles([r["confidence"] for r in rows])),
        "margin_quantiles": MetadataValue.json(quantiles([r["margin"] for r in rows])),
        "chosen_shorter_share": MetadataValue.float(shorter / len(rows) if rows else 0.0),
    }


@asset(group_name="pairs", deps=["candidates", "candidate_scores"], kinds={"duckdb", "parquet"})
def west_of_n_pairs(context: AssetExecutionContext, home: WofnHomeResource) -> MaterializeResult:
    """Per prompt: the best- and worst-scored candidates as one synthetic pair (sql/west_of_n_pairs.sql)."""
    h = home.home
    con = _connect(h, "candidates", "candidate_scores")
    table = catalog.run_sql_file(con, "west_of_n_pairs", schema=schemas.PAIRS)
    n_prompts = catalog.scalar(con, "select count(distinct prompt_id) from candidates")
    con.close()
    context.log.info("%d pairs from %d prompts", table.num_rows, n_prompts)
    return publish_table(h, "west_of_n_pairs", table, {
        "prompts_with_candidates": MetadataValue.int(n_prompts),
        "prompts_without_pair": MetadataValue.int(n_prompts - table.num_rows),
        **_pair_stats(table),
    })


@asset(group_name="pairs", deps=["west_of_n_pairs"], kinds={"duckdb", "parquet"})
def filtered_pairs(context: AssetExecutionContext, settings: WofnSettings, home: WofnHomeResource) -> MaterializeResult:
    """West-of-N pairs kept by the confidence- and likelihood-quantile filters (sql/filter_pairs.sql)."""
    h = home.home
    con = _connect(h, "west_of_n_pairs")
    total = catalog.scalar(con, "select count(*) from west_of_n_pairs")
    after_confidence = catalog.run_sql_file(
        con, "filter_pairs", {"confidence_quantile": settings.confidence_quantile, "logprob_quantile": 0.0}).num_rows
    table = catalog.run_sql_file(
        con, "filter_pairs",
        {"confidence_quantile": settings.confidence_quantile, "logprob_quantile": settings.logprob_quantile},
        schema=schemas.PAIRS)
    con.close()
    funnel = {"west_of_n_pairs": total, "confidence_filter": after_confidence, "likelihood_filter": table.num_rows}
    context.log.info("filter funnel: %s", funnel)
    return publish_table(h, "filtered_pairs", table, {
        "funnel": MetadataValue.json(funnel),
        "confidence_quantile": MetadataValue.float(settings.confidence_quantile),
        "logprob_quantile": MetadataValue.float(settings.logprob_quantile),
        **_pair_stats(table),
    })
