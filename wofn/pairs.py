"""Selecting and filtering synthetic pairs with the SQL in `sql/`, over Parquet table folders.

Used by the pair assets and by iterative rounds alike; each call opens its own in-memory DuckDB
with temporary views, so it never waits on the shared catalog file.

    sql/candidate_pool.sql          candidates + candidate_scores -> one row per candidate, is_valid
    sql/prompt_summary.sql          candidate_pool -> per prompt: valid candidates, reward range
    sql/strategies/<file>.sql       candidate_pool -> the strategy's two picks per prompt (west_of_n.sql;
                                    random_pair, best_vs_random and worst_vs_random: vs_random.sql)
    sql/label_picks.sql             picks + pool + summary -> pair_draws (one row per prompt)
    sql/label_tournaments.sql       a pairwise teacher's candidates + tournament_pairs -> pair_draws
    sql/west_of_n_pairs.sql         pair_draws -> the pairs of one strategy (wofn.schemas.PAIRS)
    sql/selection_report.sql        why prompts and candidates were left out, per strategy
                                    (a pairwise teacher's: sql/selection_report_pairwise.sql)
    sql/pair_filter_flags.sql       pairs -> each pair's filter thresholds and verdicts (computed once)
    sql/filter_pairs.sql            flags -> the pairs kept by the filters
    sql/pair_funnel.sql             flags -> how many pairs each filter step kept

Length control (the base reward model may prefer short answers, and West-of-N then teaches length):
    sql/length_control/residual_scores.sql     candidate_pool, candidate_scores -> rewards minus a fit on length
    sql/length_control/length_band_scores.sql  candidate_pool, candidate_scores -> only candidates near the
                                               best's length
    sql/length_control/balance_pairs.sql       pairs -> as many chosen-longer as chosen-shorter pairs
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from wofn import catalog, schemas
from wofn.paths import parquet_files, table_rows
from wofn.settings import check_length_control, check_strategy, check_value

STRATEGIES = schemas.STRATEGIES
RANDOM_STRATEGIES = tuple(s for s in STRATEGIES if s != "west_of_n")  # the ones that take $seed

# The scores the length controls produce: wofn.schemas.CANDIDATE_SCORES, but NULL rewards pass
# through them unchanged (the strategies drop them, as they drop them from the raw scores).
_CONTROLLED_SCORES = schemas.CANDIDATE_SCORES.set(
    schemas.CANDIDATE_SCORES.get_field_index("reward"), pa.field("reward", pa.float64()))


def seed_for(strategy: str, seed: int) -> int | None:
    """The pair_seed a strategy records: `seed` for the random strategies, None for west_of_n."""
    return seed if strategy in RANDOM_STRATEGIES else None


def check_filters(confidence_quantile: float, logprob_quantile: float, likelihood: str = "mean",
                  min_margin: float | None = None, max_tokens: int | None = None,
                  confidence_measure: str = "margin") -> None:
    """Raise SettingsError (a ValueError) naming the setting when a filter parameter is out of range:
    each is checked as its setting (wofn.settings; `max_tokens` is the setting max_pair_tokens).

    The SQL checks the same (sql/pair_filter_flags.sql); checking here first gives the setting's name.
    """
    for name, value in (("confidence_quantile", confidence_quantile), ("logprob_quantile", logprob_quantile),
                        ("likelihood", likelihood), ("min_margin", min_margin), ("max_pair_tokens", max_tokens),
                        ("confidence_measure", confidence_measure)):
        check_value(name, value)


def length_controlled_scores(candidates_dir: Path, scores_dir: Path, length_control: str,
                             length_band: float = 0.3) -> pa.Table:
    """The candidate_scores the strategies read under a length control (CANDIDATE_SCORES columns).

    "residual" / "residual_per_prompt": sql/length_control/residual_scores.sql (rewards replaced by
    their residuals); "band": sql/length_control/length_band_scores.sql (rows outside the band
    dropped); "finished": sql/length_control/finished_scores.sql (rows of candidates cut at
    max_new_tokens dropped). All read sql/candidate_pool.sql's candidate_pool (which candidates are
    valid, their lengths, rewards and finish reasons) and pass candidate_scores' rows through.
    Score rows of no candidate are dropped by all.
    """
    con = catalog.connect()
    try:
        catalog.create_view(con, "candidates", candidates_dir, temporary=True)
        catalog.create_view(con, "candidate_scores", scores_dir, temporary=True)
        return _controlled_scores(con, length_control, length_band)
    finally:
        con.close()


def _controlled_scores(con, length_control: str, length_band: float) -> pa.Table:
    """length_controlled_scores over the candidates and candidate_scores views on `con`."""
    check_length_control(length_control, length_band)
    if length_control == "none":
        raise ValueError("length_control 'none' has no SQL of its own: the strategies read candidate_scores as is")
    if length_control == "band":
        name, params = "length_control/length_band_scores", {"band": length_band}
    elif length_control == "finished":
        name, params = "length_control/finished_scores", None
    else:
        name, params = "length_control/residual_scores", {"per_prompt": length_control == "residual_per_prompt"}
    register_candidate_pool(con)
    try:
        return catalog.run_sql_file(con, name, params, schema=_CONTROLLED_SCORES)
    finally:
        con.unregister("candidate_pool")


def _strategy_query(strategy: str, seed: int) -> tuple[str, dict | None]:
    """The SQL file (under sql/) of a strategy's picks, and its parameters: the random strategies
    are one file, sql/strategies/vs_random.sql, anchored on the best, the worst or a random candidate."""
    if strategy in RANDOM_STRATEGIES:
        return "strategies/vs_random", {"seed": seed, "anchor": _ANCHORS[strategy]}
    return f"strategies/{strategy}", None


_ANCHORS = {"random_pair": "random", "best_vs_random": "best", "worst_vs_random": "worst"}


def _view(con, name: str, source: Path | pa.Table) -> None:
    if isinstance(source, pa.Table):
        con.register(name, source)
    else:
        catalog.create_view(con, name, source, temporary=True)


def register_candidate_pool(con) -> None:
    """Register sql/candidate_pool.sql's result (wofn.schemas.CANDIDATE_POOL) as the candidate_pool
    view on `con`, which has the candidates and candidate_scores views."""
    con.register("candidate_pool", catalog.run_sql_file(con, "candidate_pool", schema=schemas.CANDIDATE_POOL))


def _draw_steps(con, seed: int, strategies: tuple[str, ...]) -> list[pa.Table]:
    """Each strategy's draws (wofn.schemas.PAIR_DRAWS) on `con`, which has the candidates and
    candidate_scores views: the pool and prompt summary once, then each strategy's picks, labelled.
    Leaves the steps' views (candidate_pool, prompt_summary, pair_picks) registered on `con`."""
    register_candidate_pool(con)
    con.register("prompt_summary", catalog.run_sql_file(con, "prompt_summary", schema=schemas.PROMPT_SUMMARY))
    tables = []
    for strategy in strategies:
        picks = catalog.run_sql_file(con, *_strategy_query(strategy, seed), schema=schemas.PAIR_PICKS)
        con.register("pair_picks", picks)
        tables.append(catalog.run_sql_file(con, "label_picks",
                                           {"strategy": strategy, "pair_seed": seed_for(strategy, seed)},
                                           schema=schemas.PAIR_DRAWS))
    return tables


def draw(con, strategy: str, seed: int = 0) -> pa.Table:
    """One strategy's draw for every prompt (wofn.schemas.PAIR_DRAWS) on an open connection that has
    the candidates and candidate_scores views: sql/candidate_pool.sql, sql/prompt_summary.sql,
    sql/strategies/<strategy>.sql and sql/label_picks.sql in turn (their views are dropped after)."""
    check_strategy(strategy)
    try:
        return _draw_steps(con, seed, (strategy,))[0]
    finally:
        for name in ("pair_picks", "prompt_summary", "candidate_pool"):
            con.unregister(name)


def draw_pairs(candidates_dir: Path, scores_dir: Path, seed: int = 0,
               strategies: tuple[str, ...] = STRATEGIES, length_control: str = "none",
               length_band: float = 0.3) -> pa.Table:
    """Every strategy's draw for every prompt (wofn.schemas.PAIR_DRAWS), strategies stacked in order.

    The candidate pool and prompt summary are computed once and shared by the strategies. With a
    `length_control` other than "none", the strategies read length_controlled_scores: their
    rewards (chosen_reward, margin, confidence) are then the residuals, or the band's.
    `write_draws` does the same bucket by bucket of prompts, into files.
    """
    return _draws(candidates_dir, scores_dir, seed, tuple(strategies), length_control, length_band)


# Pair selection over a table of millions of candidates goes bucket by bucket of prompts (a hash of
# prompt_id; `catalog.write_buckets`), about this many candidates each, so that its memory is a
# bucket's whatever the number of prompts. Every strategy and length control decides per prompt,
# except length_control "residual" (one fit over every candidate), which takes the table at once.
BUCKET_CANDIDATES = 200_000


def bucket_count(candidates_dir: Path, length_control: str = "none", per_bucket: int = BUCKET_CANDIDATES) -> int:
    """How many buckets of prompts `write_draws` cuts `candidates_dir` into (rows from the footers)."""
    if length_control == "residual":
        return 1
    return max(1, math.ceil(table_rows(candidates_dir) / per_bucket))


def write_draws(candidates_dir: Path, scores_dir: Path, out_dir: Path, seed: int = 0,
                strategies: tuple[str, ...] = STRATEGIES, length_control: str = "none", length_band: float = 0.3,
                buckets: int | None = None) -> int:
    """`draw_pairs`, one bucket of prompts at a time (`bucket_count`, or `buckets`), each bucket's
    draws written to `out_dir` as part-BBBBB.parquet: the same rows, in a bucket's memory. The
    candidates and scores are first cut into the buckets in one pass (`catalog.write_buckets`, in a
    temporary folder), so each bucket reads its own rows only. Returns the number of draws written."""
    buckets = buckets or bucket_count(candidates_dir, length_control)
    if length_control == "residual" and buckets != 1:
        raise ValueError("length_control 'residual' fits one line over every candidate: it cannot go by bucket")
    strategies = tuple(strategies)
    if buckets == 1:
        return _write_draws(candidates_dir, scores_dir, out_dir, 0, seed, strategies, length_control, length_band)
    with tempfile.TemporaryDirectory(prefix="wofn-buckets-") as tmp:
        cut = {}
        with catalog.spilling() as (con, _):
            for name, source in (("candidates", candidates_dir), ("candidate_scores", scores_dir)):
                catalog.create_view(con, name, source, temporary=True)
                cut[name] = catalog.write_buckets(con, name, Path(tmp) / name, buckets)
        total = 0
        for b, (cands, scores) in enumerate(zip(cut["candidates"], cut["candidate_scores"])):
            if not cands.is_dir():  # no prompt of this bucket
                catalog.write_parquet(schemas.PAIR_DRAWS.empty_table(), Path(out_dir), f"part-{b:05d}.parquet")
                continue
            if not scores.is_dir():  # its candidates are unscored: an empty scores table keeps them in the counts
                catalog.write_parquet(schemas.CANDIDATE_SCORES.empty_table(), scores, "empty.parquet")
            total += _write_draws(cands, scores, out_dir, b, seed, strategies, length_control, length_band)
        return total


def _write_draws(candidates_dir: Path, scores_dir: Path, out_dir: Path, b: int, seed: int,
                 strategies: tuple[str, ...], length_control: str, length_band: float) -> int:
    table = _draws(candidates_dir, scores_dir, seed, strategies, length_control, length_band)
    catalog.write_parquet(table, Path(out_dir), f"part-{b:05d}.parquet")
    return table.num_rows


def _draws(candidates_dir: Path, scores_dir: Path, seed: int, strategies: tuple[str, ...], length_control: str,
           length_band: float) -> pa.Table:
    """Every strategy's draws for every prompt of the tables, stacked in order."""
    for strategy in strategies:
        check_strategy(strategy)
    check_length_control(length_control, length_band)
    con = catalog.connect()
    try:
        catalog.create_view(con, "candidates", candidates_dir, temporary=True)
        catalog.create_view(con, "candidate_scores", scores_dir, temporary=True)
        if length_control != "none":
            controlled = _controlled_scores(con, length_control, length_band)
            con.execute("drop view candidate_scores")
            con.register("candidate_scores", controlled)
        tables = _draw_steps(con, seed, strategies)
    finally:
        con.close()
    return pa.concat_tables(tables) if tables else schemas.PAIR_DRAWS.empty_table()


def pairs_from_draws(draws: Path | pa.Table, strategy: str) -> pa.Table:
    """The pairs (wofn.schemas.PAIRS) of one strategy in a pair_draws table or folder."""
    check_strategy(strategy)
    con = catalog.connect()
    try:
        _view(con, "pair_draws", draws)
        return catalog.run_sql_file(con, "west_of_n_pairs", {"strategy": strategy}, schema=schemas.PAIRS)
    finally:
        con.close()


def write_pairs(draws_dir: Path, strategy: str, out_dir: Path) -> int:
    """`pairs_from_draws` over a pair_draws folder file by file (`write_draws` writes one per bucket of
    prompts), each file's pairs streamed into `out_dir` under the file's name. Returns the pairs written."""
    check_strategy(strategy)
    total = 0
    for path in parquet_files(draws_dir):
        con = catalog.connect()
        try:
            catalog.parquet_view(con, "pair_draws", path)
            total += catalog.write_sql_file(con, "west_of_n_pairs", Path(out_dir) / path.name, schemas.PAIRS,
                                            {"strategy": strategy})
        finally:
            con.close()
    return total


def tournament_draws(candidates_dir: Path, tournaments_dir: Path) -> pa.Table:
    """A pairwise teacher's West-of-N draw per prompt (wofn.schemas.PAIR_DRAWS, outcomes
    wofn.schemas.PAIRWISE_OUTCOMES), from the knockout tournaments' winners and losers in
    `tournaments_dir` (sql/label_tournaments.sql)."""
    con = catalog.connect()
    try:
        catalog.create_view(con, "candidates", candidates_dir, temporary=True)
        catalog.create_view(con, "tournament_pairs", tournaments_dir, temporary=True)
        return catalog.run_sql_file(con, "label_tournaments", schema=schemas.PAIR_DRAWS)
    finally:
        con.close()


def selection_report(candidates_dir: Path, judged_dir: Path, draws: Path | pa.Table, strategy: str,
                     pairwise: bool = False, length_control: str = "none", length_band: float = 0.3) -> pa.Table:
    """Per strategy and reason, what selection left out (wofn.schemas.SELECTION_REPORT).

    Pointwise: `judged_dir` holds candidate_scores and `draws` the pair_draws of every strategy
    (sql/selection_report.sql). Pairwise: `judged_dir` holds tournament_pairs and `draws` the
    tournament_draws (sql/selection_report_pairwise.sql). The candidate counts are over the
    teacher's own scores whatever the `length_control` the draws were made with; under "band" the
    prompts whose best candidate has no other valid candidate within the band are counted as
    fewer_than_2_in_band, under "finished" those with fewer than two finished ones as
    fewer_than_2_finished.
    """
    check_strategy(strategy, pairwise)
    check_length_control(length_control, length_band, pairwise)
    # one query over every candidate and draw: on a spilling connection (1.6 GB at 2M candidates without)
    with catalog.spilling() as (con, _):
        catalog.create_view(con, "candidates", candidates_dir, temporary=True)
        _view(con, "pair_draws", draws)
        if pairwise:
            catalog.create_view(con, "tournament_pairs", judged_dir, temporary=True)
            return catalog.run_sql_file(con, "selection_report_pairwise", schema=schemas.SELECTION_REPORT)
        _view(con, "candidate_scores", judged_dir)
        return catalog.run_sql_file(con, "selection_report", {"strategy": strategy, "length_control": length_control},
                                    schema=schemas.SELECTION_REPORT)


def select_pairs(candidates_dir: Path, judged_dir: Path, pairwise: bool = False, strategy: str = "west_of_n",
                 seed: int = 0, length_control: str = "none", length_band: float = 0.3) -> tuple[pa.Table, int]:
    """One strategy's pairs (default west_of_n: best vs worst); also the number of prompts with candidates.

    Pointwise teacher: `judged_dir` holds candidate_scores; draw_pairs draws (from
    length_controlled_scores when `length_control` is not "none"). Pairwise teacher (west_of_n,
    length_control "none" only): it holds tournament_pairs (the knockout winners and losers) and
    tournament_draws labels them. Either way sql/west_of_n_pairs.sql keeps the draws' pairs.
    """
    check_strategy(strategy, pairwise)
    check_length_control(length_control, length_band, pairwise)
    if pairwise:
        draws = tournament_draws(candidates_dir, judged_dir)
    else:
        draws = draw_pairs(candidates_dir, judged_dir, seed, strategies=(strategy,), length_control=length_control,
                           length_band=length_band)
    return pairs_from_draws(draws, strategy), draws.num_rows


def _filter_params(confidence_quantile, logprob_quantile, likelihood, min_margin, max_tokens,
                   confidence_measure) -> dict:
    check_filters(confidence_quantile, logprob_quantile, likelihood, min_margin, max_tokens, confidence_measure)
    return {"confidence_quantile": confidence_quantile, "logprob_quantile": logprob_quantile,
            "likelihood": likelihood, "min_margin": min_margin, "max_tokens": max_tokens,
            "confidence_measure": confidence_measure}


def pair_funnel(pairs: Path | pa.Table, confidence_quantile: float, logprob_quantile: float,
                likelihood: str = "mean", min_margin: float | None = None, max_tokens: int | None = None,
                strategy: str = "west_of_n", pair_seed: int | None = None,
                confidence_measure: str = "margin") -> pa.Table:
    """How many pairs each filter step keeps, with length balance (wofn.schemas.PAIR_FUNNEL)."""
    return filter_with_funnel(pairs, confidence_quantile, logprob_quantile, likelihood, min_margin, max_tokens,
                              confidence_measure, strategy, pair_seed)[1]


def filter_with_funnel(pairs: Path | pa.Table, confidence_quantile: float, logprob_quantile: float,
                       likelihood: str = "mean", min_margin: float | None = None, max_tokens: int | None = None,
                       confidence_measure: str = "margin", strategy: str = "west_of_n",
                       pair_seed: int | None = None) -> tuple[pa.Table, pa.Table]:
    """The pairs kept by the filters (sql/filter_pairs.sql; wofn.schemas.PAIRS) and how many each step
    kept (sql/pair_funnel.sql, labelled with `strategy` and `pair_seed`), both from one computation of
    the filters (sql/pair_filter_flags.sql): `write_filtered`, read back."""
    with tempfile.TemporaryDirectory(prefix="wofn-pairs-") as tmp:
        if isinstance(pairs, pa.Table):
            pairs = catalog.write_parquet(schemas.conform(pairs, schemas.PAIRS, where="filter input"),
                                          Path(tmp) / "in").parent
        funnel, _ = write_filtered(pairs, Path(tmp) / "out", confidence_quantile, logprob_quantile, likelihood,
                                   min_margin, max_tokens, confidence_measure, strategy, pair_seed)
        return pq.read_table(Path(tmp) / "out" / FILTERED_FILE), funnel


FILTERED_FILE = "data.parquet"  # what write_filtered writes into its folder
# the columns pair_stats reads
STATS_COLUMNS = ["chosen_num_tokens", "rejected_num_tokens", "confidence"]


def write_filtered(pairs_dir: Path, out_dir: Path, confidence_quantile: float, logprob_quantile: float,
                   likelihood: str = "mean", min_margin: float | None = None, max_tokens: int | None = None,
                   confidence_measure: str = "margin", strategy: str = "west_of_n", pair_seed: int | None = None,
                   balance: bool = False) -> tuple[pa.Table, dict | None]:
    """The selected pairs of the table folder `pairs_dir` through the filters, then, with `balance`, as
    many chosen-longer as chosen-shorter pairs (sql/length_control/balance_pairs.sql), written to
    `out_dir`/FILTERED_FILE. Returns the funnel (sql/pair_funnel.sql, labelled with `strategy` and
    `pair_seed`; with `balance`, its length_balance step last) and, with `balance`, the pair_stats of
    the filtered pairs before it.

    Each step's result streams into a Parquet file (`catalog.write_sql_file`) on a DuckDB that can
    spill (`catalog.spilling`), so no step holds the pairs in Python, and DuckDB's joins and sorts
    spill past its memory limit (only the quantiles' state must fit).
    """
    params = _filter_params(confidence_quantile, logprob_quantile, likelihood, min_margin, max_tokens,
                            confidence_measure)
    check_strategy(strategy)
    final = Path(out_dir) / FILTERED_FILE
    with catalog.spilling() as (con, tmp):
        catalog.create_view(con, "west_of_n_pairs", pairs_dir, temporary=True)
        flags = Path(tmp) / "pair_filter_flags.parquet"
        catalog.write_sql_file(con, "pair_filter_flags", flags, schemas.PAIR_FILTER_FLAGS, params)
        catalog.parquet_view(con, "pair_filter_flags", flags)
        computed = {"pair_filter_flags": catalog.ON_CONNECTION}
        kept = Path(tmp) / "kept.parquet" if balance else final
        catalog.write_sql_file(con, "filter_pairs", kept, schemas.PAIRS, params, inputs=computed)
        funnel = catalog.run_sql_file(con, "pair_funnel", {**params, "strategy": strategy, "pair_seed": pair_seed},
                                      schema=schemas.PAIR_FUNNEL, inputs=computed)
        before = None
        if balance:
            before = pair_stats(pq.read_table(kept, columns=STATS_COLUMNS))
            catalog.parquet_view(con, "pairs_in", kept)
            catalog.write_sql_file(con, "length_control/balance_pairs", final, schemas.PAIRS,
                                   {"confidence_measure": confidence_measure})
            funnel = with_balance_step(funnel, pq.read_table(final, columns=STATS_COLUMNS))
    return funnel, before


def filter_pairs(pairs_dir: Path, confidence_quantile: float, logprob_quantile: float, likelihood: str = "mean",
                 min_margin: float | None = None, max_tokens: int | None = None,
                 confidence_measure: str = "margin") -> tuple[pa.Table, dict]:
    """Pairs kept by the filters (sql/filter_pairs.sql), and how many each step kept (sql/pair_funnel.sql).

    `confidence_measure` (CONFIDENCE_MEASURES): what the confidence quantile ranks by.
    The counts: {"west_of_n_pairs", "confidence_filter", "likelihood_filter"}, then
    "margin_filter" and "max_tokens_filter" when those filters are on (the keys bench/run.py and
    the rounds' logs have always read); the pair_funnel table has every step.
    """
    table, funnel = filter_with_funnel(pairs_dir, confidence_quantile, logprob_quantile, likelihood, min_margin,
                                       max_tokens, confidence_measure)
    return table, funnel_steps(funnel, min_margin is not None, max_tokens is not None)


def funnel_steps(funnel: pa.Table, margin: bool = True, max_tokens: bool = True) -> dict:
    """Pairs kept per step of a pair_funnel table, under the names the logs and metadata use."""
    kept = dict(zip(funnel.column("step").to_pylist(), funnel.column("pairs_kept").to_pylist()))
    steps = {"west_of_n_pairs": kept["selected"], "confidence_filter": kept["confidence"],
             "likelihood_filter": kept["likelihood"]}
    if margin:
        steps["margin_filter"] = kept["margin"]
    if max_tokens:
        steps["max_tokens_filter"] = kept["max_tokens"]
    return steps


def balance_pairs(pairs: Path | pa.Table, confidence_measure: str = "margin") -> pa.Table:
    """As many chosen-longer as chosen-shorter pairs, the most confident of each (by
    `confidence_measure`, as the confidence filter), plus every equal-length pair
    (sql/length_control/balance_pairs.sql; wofn.schemas.PAIRS, by prompt_id)."""
    check_value("confidence_measure", confidence_measure)
    if not isinstance(pairs, pa.Table):
        files = parquet_files(pairs)
        if not files:
            raise FileNotFoundError(f"pair table folder {pairs} has no *.parquet files")
        pairs = pa.concat_tables([schemas.conform(pq.read_table(f), schemas.PAIRS, where=str(f)) for f in files])
    con = catalog.connect()
    try:
        con.register("pairs_in", schemas.conform(pairs, schemas.PAIRS, where="balance_pairs input"))
        return catalog.run_sql_file(con, "length_control/balance_pairs", {"confidence_measure": confidence_measure},
                                    schema=schemas.PAIRS)
    finally:
        con.close()


def with_balance_step(funnel: pa.Table, balanced: pa.Table) -> pa.Table:
    """`funnel` (sql/pair_funnel.sql) with one more step, "length_balance": what
    sql/length_control/balance_pairs.sql kept of the filters' last step (wofn.schemas.PAIR_FUNNEL)."""
    rows = sorted(funnel.to_pylist(), key=lambda r: r["step_order"])
    if not rows:
        raise ValueError("pair funnel has no steps to add the length balance to")
    last, stats = rows[-1], pair_stats(balanced)
    n_in, n = last["pairs_kept"], balanced.num_rows
    rows.append({
        "strategy": last["strategy"], "pair_seed": last["pair_seed"], "step_order": last["step_order"] + 1,
        "step": "length_balance", "setting": "longer = shorter", "threshold": None,
        "pairs_in": n_in, "pairs_kept": n, "kept_share": n / n_in if n_in else None,
        **{k: (stats[k] if n else None)
           for k in ("chosen_longer_share", "chosen_shorter_share", "mean_length_gap", "mean_confidence")},
    })
    return pa.Table.from_pylist(rows, schema=schemas.PAIR_FUNNEL)


def pair_stats(table: pa.Table) -> dict:
    """Length and confidence summaries of a pair set (the length prior shows up here first); it
    reads STATS_COLUMNS only, so a table of just those will do.

    Lengths are policy tokens; "longer"/"shorter" compare chosen with rejected, equal counts in neither.
    """
    n = table.num_rows
    if not n:
        return {"pairs": 0, "chosen_longer_share": 0.0, "chosen_shorter_share": 0.0, "mean_length_gap": 0.0,
                "mean_chosen_tokens": 0.0, "mean_rejected_tokens": 0.0, "mean_confidence": 0.0}
    chosen = table.column("chosen_num_tokens").cast(pa.int64())
    rejected = table.column("rejected_num_tokens").cast(pa.int64())
    gaps = pc.subtract(chosen, rejected)

    def total(values) -> float:
        return pc.sum(values).as_py() or 0

    return {
        "pairs": n,
        "chosen_longer_share": total(pc.greater(gaps, 0).cast(pa.int64())) / n,
        "chosen_shorter_share": total(pc.less(gaps, 0).cast(pa.int64())) / n,
        "mean_length_gap": total(gaps) / n,
        "mean_chosen_tokens": total(chosen) / n,
        "mean_rejected_tokens": total(rejected) / n,
        "mean_confidence": total(table.column("confidence")) / n,
    }
