"""Pair assets, computed by DuckDB over the Parquet tables: the selected pairs and the filtered set.

Each is a multi-asset with the tables its step writes beside its pairs: `west_of_n_pairs` with
`pair_draws` (every strategy's draw per prompt, so the strategies can be compared on the same
candidates; a pairwise teacher's tournaments give west_of_n's only) and `pair_selection_report` (why prompts and
candidates were left out); `filtered_pairs` with `pair_funnel` (what each filter step kept).
Selecting one materializes its group (the UI adds the others; jobs select with
`required_multi_asset_neighbors()`).
"""

from dagster import AssetExecutionContext, AssetSpec, MetadataValue, multi_asset
from matplotlib.figure import Figure

from wofn import pairs, pairwise, stages
from wofn.paths import content_hash, partition_keys
from wofn_dagster.assets.metadata import png_markdown, quantiles
from wofn_dagster.assets.tables import batch_versions, publish_table, read_table, staged, table_result
from wofn_dagster.code_versions import code_version
from wofn_dagster.resources import WofnHomeResource, WofnSettings, run_settings

_SELECTION_CODE = code_version("wofn.pairs", own=__file__)
_FILTER_CODE = code_version("wofn.pairs", own=__file__, files=("wofn/stages.py",))


def _agreement_metadata(table) -> dict:
    """A teacher ensemble's pairs: how many at each agreement level (nothing for a single teacher)."""
    values = [v for v in table.column("agreement").to_pylist() if v is not None]
    if not values:
        return {}
    levels = {f"{v:.2f}": values.count(v) for v in sorted(set(values), reverse=True)}
    return {"agreement_levels": MetadataValue.json(levels),
            "unanimous_share": MetadataValue.float(sum(v in (0.0, 1.0) for v in values) / len(values))}


# what _pair_metadata reads of a pair table (a table of millions of pairs is read only this far)
_METADATA_COLUMNS = [*pairs.STATS_COLUMNS, "margin", "agreement"]


def _pair_metadata(table) -> dict:
    stats = pairs.pair_stats(table)
    return {
        **_agreement_metadata(table),
        "confidence_quantiles": MetadataValue.json(quantiles(table.column("confidence"))),
        "margin_quantiles": MetadataValue.json(quantiles(table.column("margin"))),
        "chosen_longer_share": MetadataValue.float(stats["chosen_longer_share"]),
        "chosen_shorter_share": MetadataValue.float(stats["chosen_shorter_share"]),
        "mean_length_gap": MetadataValue.float(stats["mean_length_gap"]),
        "mean_chosen_tokens": MetadataValue.float(stats["mean_chosen_tokens"]),
        "mean_rejected_tokens": MetadataValue.float(stats["mean_rejected_tokens"]),
    }


def _markdown(table, columns: list[str]) -> MetadataValue:
    rows = table.select(columns).to_pylist()
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v)) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return MetadataValue.md("\n".join(lines))


def _plot_confidence(selected, kept) -> MetadataValue:
    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    bins = [0.5 + i * 0.025 for i in range(21)]
    ax.hist(selected.column("confidence").to_pylist(), bins=bins, label="selected", color="lightgrey")
    ax.hist(kept.column("confidence").to_pylist(), bins=bins, label="kept by the filters", color="tab:blue")
    ax.set_xlabel("confidence sigmoid(r+ - r-)")
    ax.set_ylabel("pairs")
    ax.legend(fontsize=7)
    return png_markdown(fig)


def _plot_funnel(funnel) -> MetadataValue:
    rows = sorted(funnel.to_pylist(), key=lambda r: r["step_order"])
    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    labels = [f"{r['step']}\n{r['setting']}" for r in rows]
    ax.barh(labels[::-1], [r["pairs_kept"] for r in rows][::-1], color="tab:blue")
    for i, r in enumerate(rows[::-1]):
        ax.text(r["pairs_kept"], i, f" {r['pairs_kept']}", va="center", fontsize=7)
    ax.set_xlabel("pairs kept")
    ax.set_title("filter funnel")
    ax.tick_params(axis="y", labelsize=7)
    return png_markdown(fig)


def _pair_spec(key: str, deps: list[str], code: str, description: str) -> AssetSpec:
    return AssetSpec(key, deps=deps, group_name="pairs", kinds={"duckdb", "parquet"}, code_version=code,
                     description=description)


_JUDGED = ["candidates", "candidate_scores", "tournament_pairs"]


@multi_asset(name="west_of_n_pairs", can_subset=False, specs=[
    _pair_spec("west_of_n_pairs", _JUDGED, _SELECTION_CODE, "Per prompt, the configured strategy's synthetic pair "
               "(default west_of_n: best vs worst; sql/strategies/), over every prompt batch"),
    _pair_spec("pair_draws", _JUDGED, _SELECTION_CODE, "Every strategy's draw per prompt, "
               "so the strategies can be compared on the same candidates (a pairwise teacher's: west_of_n, from its "
               "tournaments)"),
    _pair_spec("pair_selection_report", _JUDGED, _SELECTION_CODE, "Per strategy, how many prompts gave a pair and "
               "why the others did not (sql/selection_report.sql)")])
def west_of_n_pairs(context: AssetExecutionContext, settings: WofnSettings, home: WofnHomeResource):
    """Per prompt, the configured strategy's synthetic pair, with every strategy's draws and the selection report."""
    h = home.home
    is_pairwise = pairwise.is_pairwise(str(h.model_dir("base_reward_model")))
    # the rules between settings, for the teacher kind the base model on disk has
    run_settings(settings).replace(teacher="pairwise" if is_pairwise else "pointwise")
    if settings.length_control == "residual_per_prompt" and settings.n < 3:
        context.log.warning(f"length_control 'residual_per_prompt' with n={settings.n}: a line through two candidates "
                            "leaves both residuals 0, so only equal-length candidates can form a pair; use n >= 3, "
                            "or 'band' / 'residual'")
    length = {"length_control": settings.length_control, "length_band": settings.length_band}
    pair_seed = pairs.seed_for(settings.strategy, settings.pair_seed)
    candidates_dir = h.table_dir("candidates")
    judged_table = "tournament_pairs" if is_pairwise else "candidate_scores"
    unscored = sorted(set(partition_keys(candidates_dir)) - set(partition_keys(h.table_dir(judged_table))))
    if unscored:
        context.log.warning(f"prompt batches with candidates but no {judged_table} yet: {unscored}; "
                            "their prompts give no pairs until they are scored")
    inputs = {"candidates": batch_versions(h, "candidates"), judged_table: batch_versions(h, judged_table)}
    if is_pairwise:
        judged = h.table_dir("tournament_pairs")
        draws = publish_table(h, "pair_draws", pairs.tournament_draws(candidates_dir, judged), context=context,
                              inputs=inputs)
        report = pairs.selection_report(candidates_dir, judged, h.table_dir("pair_draws"), settings.strategy,
                                        pairwise=True)
    else:
        judged = h.table_dir("candidate_scores")
        # bucket by bucket of prompts, written as they come: the memory of a bucket, not of the table
        with staged(h.table_dir("pair_draws")) as staging:
            pairs.write_draws(candidates_dir, judged, staging, settings.pair_seed, **length)
        draws = table_result(h, "pair_draws", context=context, inputs=inputs)
        report = pairs.selection_report(candidates_dir, judged, h.table_dir("pair_draws"), settings.strategy,
                                        **length)
    with staged(h.table_dir("west_of_n_pairs")) as staging:
        pairs.write_pairs(h.table_dir("pair_draws"), settings.strategy, staging)
    table = read_table(h, "west_of_n_pairs", columns=_METADATA_COLUMNS)
    per_strategy = {r["strategy"]: r["count"] for r in report.to_pylist() if r["reason"] == "pairs"}
    report_result = publish_table(h, "pair_selection_report", report, context=context, inputs=inputs)
    reasons = {r["reason"]: r["count"] for r in report.to_pylist() if r["selected"]}
    n_prompts = reasons.get("prompts", 0)
    context.log.info("%s: %d pairs from %d prompts; %s", settings.strategy, table.num_rows, n_prompts, reasons)
    yield table_result(h, "west_of_n_pairs", {
        "prompt_batches": MetadataValue.json(sorted(inputs["candidates"])),
        "unscored_batches": MetadataValue.json(unscored),
        "strategy": MetadataValue.text(settings.strategy),
        "pair_seed": MetadataValue.null() if pair_seed is None else MetadataValue.int(pair_seed),
        "teacher": MetadataValue.text("pairwise" if is_pairwise else "pointwise"),
        "length_control": MetadataValue.text(settings.length_control),
        "length_band": MetadataValue.float(settings.length_band),
        "prompts_with_candidates": MetadataValue.int(n_prompts),
        "prompts_without_pair": MetadataValue.int(n_prompts - table.num_rows),
        "selection_report": MetadataValue.json(reasons),
        "pairs_per_strategy": MetadataValue.json(per_strategy),
        **_pair_metadata(table),
    }, context=context, inputs=inputs, facts={"strategy": settings.strategy, "pair_seed": pair_seed, **length})
    yield draws
    yield report_result


_SELECTED = ["west_of_n_pairs", "pair_selection_report"]


@multi_asset(name="filtered_pairs", can_subset=False, specs=[
    _pair_spec("filtered_pairs", _SELECTED, _FILTER_CODE, "Selected pairs kept by the confidence, likelihood, margin "
               "and length filters (sql/filter_pairs.sql), then length-balanced when `length_balance` is on "
               "(sql/length_control/balance_pairs.sql)"),
    _pair_spec("pair_funnel", _SELECTED, _FILTER_CODE, "What each filter step kept, in order (sql/pair_funnel.sql)")])
def filtered_pairs(context: AssetExecutionContext, settings: WofnSettings, home: WofnHomeResource):
    """The filtered pairs and the funnel of the filter steps that kept them."""
    h = home.home
    strategy, pair_seed = _selected_strategy(context, h, settings)
    with staged(h.table_dir("filtered_pairs")) as staging:  # streamed into the folder
        kept = stages.filter_pairs(run_settings(settings), h.table_dir("west_of_n_pairs"), strategy, pair_seed,
                                   out_dir=staging)
    funnel, steps, filters = kept.funnel, kept.steps, kept.filters
    table = read_table(h, "filtered_pairs", columns=_METADATA_COLUMNS)
    balance = {"length_balance": MetadataValue.bool(settings.length_balance)}
    if kept.before_balance is not None:
        before = kept.before_balance
        context.log.info("length balance: %d -> %d pairs", before["pairs"], table.num_rows)
        balance.update({"pairs_before_balance": MetadataValue.int(before["pairs"]),
                        "pairs_after_balance": MetadataValue.int(table.num_rows),
                        "chosen_longer_share_before_balance": MetadataValue.float(before["chosen_longer_share"])})
    inputs = {"west_of_n_pairs": content_hash(h.table_dir("west_of_n_pairs"))}
    funnel_result = publish_table(h, "pair_funnel", funnel, context=context, inputs=inputs)
    context.log.info("filter funnel: %s", steps)
    yield table_result(h, "filtered_pairs", {
        "funnel_plot": _plot_funnel(funnel),
        "confidence_plot": _plot_confidence(read_table(h, "west_of_n_pairs", columns=["confidence"]), table),
        "strategy": MetadataValue.text(strategy),
        "funnel": MetadataValue.json(steps),
        "funnel_table": _markdown(funnel, ["step", "setting", "pairs_in", "pairs_kept", "chosen_longer_share",
                                           "chosen_shorter_share", "mean_length_gap"]),
        "filters": MetadataValue.json(filters),
        **balance,
        **_pair_metadata(table),
    }, context=context, inputs=inputs, facts={"strategy": strategy, "filters": filters,
                                              "length_balance": settings.length_balance})
    yield funnel_result


def _selected_strategy(context: AssetExecutionContext, h, settings: WofnSettings) -> tuple[str, object]:
    """The strategy (and seed) whose pairs are in west_of_n_pairs, as its selection report says."""
    try:
        report = read_table(h, "pair_selection_report").to_pylist()
    except FileNotFoundError:
        report = []
    selected = {(r["strategy"], r["pair_seed"]) for r in report if r["selected"]}
    if len(selected) == 1:
        return selected.pop()
    context.log.warning("no pair_selection_report beside west_of_n_pairs (made by an older wofn?); "
                        "labelling the funnel with the settings' strategy %r", settings.strategy)
    return settings.strategy, pairs.seed_for(settings.strategy, settings.pair_seed)
