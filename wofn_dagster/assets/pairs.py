"""Pair assets, computed by DuckDB over the Parquet tables: West-of-N pairs and the filtered set."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from wofn import pairs, pairwise
from wofn_dagster.assets.common import publish_table, quantiles
from wofn_dagster.resources import WofnHomeResource, WofnSettings


def _pair_metadata(table) -> dict:
    stats = pairs.pair_stats(table)
    return {
        "confidence_quantiles": MetadataValue.json(quantiles(table.column("confidence").to_pylist())),
        "margin_quantiles": MetadataValue.json(quantiles(table.column("margin").to_pylist())),
        "chosen_shorter_share": MetadataValue.float(stats["chosen_shorter_share"]),
        "mean_chosen_tokens": MetadataValue.float(stats["mean_chosen_tokens"]),
        "mean_rejected_tokens": MetadataValue.float(stats["mean_rejected_tokens"]),
    }


@asset(group_name="pairs", deps=["candidates", "candidate_scores"], kinds={"duckdb", "parquet"})
def west_of_n_pairs(context: AssetExecutionContext, home: WofnHomeResource) -> MaterializeResult:
    """Per prompt: the best- and worst-scored candidates as one synthetic pair (sql/west_of_n_pairs.sql)."""
    h = home.home
    is_pairwise = pairwise.is_pairwise(str(h.model_dir("base_reward_model")))
    judged = h.table_dir("tournament_pairs" if is_pairwise else "candidate_scores")
    table, n_prompts = pairs.select_pairs(h.table_dir("candidates"), judged, pairwise=is_pairwise)
    context.log.info("%d pairs from %d prompts", table.num_rows, n_prompts)
    return publish_table(h, "west_of_n_pairs", table, {
        "teacher": MetadataValue.text("pairwise" if is_pairwise else "pointwise"),
        "prompts_with_candidates": MetadataValue.int(n_prompts),
        "prompts_without_pair": MetadataValue.int(n_prompts - table.num_rows),
        **_pair_metadata(table),
    })


@asset(group_name="pairs", deps=["west_of_n_pairs"], kinds={"duckdb", "parquet"})
def filtered_pairs(context: AssetExecutionContext, settings: WofnSettings, home: WofnHomeResource) -> MaterializeResult:
    """West-of-N pairs kept by the confidence- and likelihood-quantile filters (sql/filter_pairs.sql)."""
    h = home.home
    table, funnel = pairs.filter_pairs(h.table_dir("west_of_n_pairs"), settings.confidence_quantile,
                                       settings.logprob_quantile)
    context.log.info("filter funnel: %s", funnel)
    return publish_table(h, "filtered_pairs", table, {
        "funnel": MetadataValue.json(funnel),
        "confidence_quantile": MetadataValue.float(settings.confidence_quantile),
        "logprob_quantile": MetadataValue.float(settings.logprob_quantile),
        **_pair_metadata(table),
    })
