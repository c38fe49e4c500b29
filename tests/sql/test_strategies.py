"""The selection strategies (sql/strategies/*.sql), sql/selection_report.sql and wofn.pairs, on crafted
tables: exact outputs, every edge case, an independent Python reference, seeds."""

from __future__ import annotations

import hashlib
import math
import random
import re
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet  # noqa: F401 - pa.parquet
import pytest
from pair_tables import PROMPTS, candidates_table, crafted_rows, reference, scores_table, view_over

from wofn import catalog, pairs, schemas
from wofn.paths import SQL_DIR

STRATEGIES = schemas.STRATEGIES


@pytest.fixture
def con():
    connection = catalog.connect()
    yield connection
    connection.close()


def load(con, tmp_path: Path, cand_rows: list[tuple], score_rows: list[tuple]) -> tuple[Path, Path]:
    return (view_over(con, tmp_path, "candidates", candidates_table(cand_rows)),
            view_over(con, tmp_path, "candidate_scores", scores_table(score_rows)))


@pytest.fixture
def crafted(con, tmp_path):
    cand_rows, score_rows = crafted_rows()
    dirs = load(con, tmp_path, cand_rows, score_rows)
    return con, dirs, cand_rows, score_rows


def draws(con, strategy: str, seed: int = 0) -> pa.Table:
    return pairs.draw(con, strategy, seed)


def as_reference(table: pa.Table) -> dict[str, tuple]:
    return {r["prompt_id"]: (r["outcome"], r["chosen_idx"], r["rejected_idx"], r["n_candidates"])
            for r in table.to_pylist()}


def fuzz_rows(rng: random.Random, n_prompts: int = 40) -> tuple[list[tuple], list[tuple]]:
    """Small reward and text vocabularies, so ties, identical texts, NULL/NaN/inf and duplicates abound."""
    cand_rows, score_rows = [], []
    for p in range(n_prompts):
        prompt_id = f"f{p:02d}"
        for idx in range(rng.randint(0, 6)):
            text = rng.choice(["a", "b", "c", "d"])
            cand_rows.append((prompt_id, idx, text, rng.randint(1, 9), -rng.random() * 5))
            if rng.random() < 0.1:  # a duplicate row, sometimes with another text
                cand_rows.append((prompt_id, idx, text if rng.random() < 0.7 else "z", 3, -1.0))
            r = rng.random()
            if r < 0.05:
                continue  # unscored
            reward = rng.choice([0.0, 0.5, 1.0, 2.0, None, math.nan, math.inf]) if r < 0.25 else \
                rng.choice([0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
            score_rows.append((prompt_id, idx, reward))
            if rng.random() < 0.1:  # a duplicate score row, sometimes disagreeing
                score_rows.append((prompt_id, idx, reward if rng.random() < 0.7 else 9.0))
    rng.shuffle(cand_rows)
    rng.shuffle(score_rows)
    return cand_rows, score_rows


# --- exact outputs ------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_strategy_matches_reference_on_crafted_edge_cases(crafted, strategy, seed):
    con, _, cand_rows, score_rows = crafted
    table = draws(con, strategy, seed)
    assert table.column_names == schemas.PAIR_DRAWS.names
    assert as_reference(table) == reference(cand_rows, score_rows, strategy, seed)
    assert table.column("prompt_id").to_pylist() == sorted(PROMPTS)  # one row per prompt, in order
    assert set(table.column("strategy").to_pylist()) == {strategy}
    assert set(table.column("pair_seed").to_pylist()) == {None if strategy == "west_of_n" else seed}


@pytest.mark.parametrize("fuzz_seed", [1, 2, 3])
def test_every_strategy_matches_reference_on_fuzzed_tables(con, tmp_path, fuzz_seed):
    cand_rows, score_rows = fuzz_rows(random.Random(fuzz_seed))
    load(con, tmp_path, cand_rows, score_rows)
    outcomes = set()
    for strategy in STRATEGIES:
        for seed in (0, 5):
            table = draws(con, strategy, seed)
            assert as_reference(table) == reference(cand_rows, score_rows, strategy, seed), (strategy, seed)
            for row in table.to_pylist():
                outcomes.add(row["outcome"])
                if row["outcome"] == "pair":
                    assert row["chosen_idx"] != row["rejected_idx"] and row["chosen"] != row["rejected"]
                    assert row["chosen_reward"] > row["rejected_reward"] and row["confidence"] > 0.5
    assert outcomes == set(schemas.OUTCOMES), "the fuzzed tables exercise every outcome"


def test_random_pair_exact_on_a_small_table(con, tmp_path):
    # one prompt, four candidates with distinct rewards; md5("q:i:0") orders them 2, 0, 1, 3
    cand = [("q", i, f"r{i}", 2, -1.0) for i in range(4)]
    load(con, tmp_path, cand, [("q", i, float(i), ) for i in range(4)])
    keys = sorted(range(4), key=lambda i: hashlib.md5(f"q:{i}:0".encode()).hexdigest())
    assert keys == [2, 0, 1, 3]
    row = draws(con, "random_pair", 0).to_pylist()[0]
    # the first two drawn, 2 and 0, labelled by the reward: 2 (reward 2.0) is chosen
    assert (row["outcome"], row["chosen_idx"], row["rejected_idx"], row["margin"]) == ("pair", 2, 0, 2.0)
    best = draws(con, "best_vs_random", 0).to_pylist()[0]
    assert (best["chosen_idx"], best["rejected_idx"]) == (3, 2)  # best 3 vs the first drawn other, 2
    worst = draws(con, "worst_vs_random", 0).to_pylist()[0]
    assert (worst["chosen_idx"], worst["rejected_idx"]) == (2, 0)  # worst 0 vs the first drawn other, 2


def test_vs_random_ties_with_the_extreme_are_counted_not_paired(con, tmp_path):
    # best is idx 0 (1.0, lowest idx of the tie); the other is idx 1 (tie) or idx 2 by the seed
    cand = [("t", 0, "x", 2, -1.0), ("t", 1, "y", 2, -1.0), ("t", 2, "w", 2, -1.0)]
    load(con, tmp_path, cand, [("t", 0, 1.0), ("t", 1, 1.0), ("t", 2, 0.0)])
    seen = {}
    for seed in range(12):
        row = draws(con, "best_vs_random", seed).to_pylist()[0]
        seen[row["outcome"]] = (row["chosen_idx"], row["rejected_idx"])
    assert seen == {"tied_rewards": (0, 1), "pair": (0, 2)}


# --- determinism and seeds ------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategies_are_deterministic_for_a_seed_whatever_the_row_order(con, tmp_path, strategy):
    cand_rows, score_rows = fuzz_rows(random.Random(11), n_prompts=30)
    load(con, tmp_path / "one", cand_rows, score_rows)
    first = draws(con, strategy, 3)
    again = draws(con, strategy, 3)
    shuffled = list(reversed(cand_rows)), list(reversed(score_rows))
    load(con, tmp_path / "two", *shuffled)
    assert first.equals(again)
    assert first.equals(draws(con, strategy, 3))


@pytest.mark.parametrize("strategy", ["random_pair", "best_vs_random", "worst_vs_random"])
def test_random_strategies_differ_across_seeds(con, tmp_path, strategy):
    cand = [(f"p{p}", i, f"text {p} {i}", 3, -1.0) for p in range(20) for i in range(8)]
    load(con, tmp_path, cand, [(f"p{p}", i, float(i)) for p in range(20) for i in range(8)])
    picks = {seed: [(r["chosen_idx"], r["rejected_idx"]) for r in draws(con, strategy, seed).to_pylist()]
             for seed in (0, 1, 2)}
    assert picks[0] != picks[1] and picks[1] != picks[2] and picks[0] != picks[2]
    assert picks[0] == [(r["chosen_idx"], r["rejected_idx"]) for r in draws(con, strategy, 0).to_pylist()]


def test_west_of_n_ignores_the_seed(crafted):
    con = crafted[0]
    with pytest.raises(duckdb.Error):  # it takes no $seed, so binding one is an error
        catalog.run_sql_file(con, "strategies/west_of_n", {"seed": 1})


@pytest.mark.parametrize("strategy", ["random_pair", "best_vs_random", "worst_vs_random"])
@pytest.mark.parametrize("bad", ["0; drop view candidates", 0.5, None, "1e3"])
def test_random_strategies_reject_a_non_integer_seed(crafted, strategy, bad):
    con = crafted[0]
    pairs.register_candidate_pool(con)
    name, params = pairs._strategy_query(strategy, 0)
    with pytest.raises(duckdb.Error, match="seed must be an integer"):
        catalog.run_sql_file(con, name, {**params, "seed": bad})
    assert catalog.scalar(con, "select count(*) from candidates") > 0


@pytest.mark.parametrize("bad", ["extreme", None, "BEST"])
def test_vs_random_rejects_an_unknown_anchor(crafted, bad):
    pairs.register_candidate_pool(crafted[0])
    with pytest.raises(duckdb.Error, match="anchor must be 'best', 'worst' or 'random'"):
        catalog.run_sql_file(crafted[0], "strategies/vs_random", {"seed": 0, "anchor": bad})


def test_the_strategy_files_share_the_pool_and_the_labelling():
    """Each strategy is one readable file, so the shared rules are repeated: they must not drift."""
    blocks = {}
    for path in sorted((SQL_DIR / "strategies").glob("*.sql")):
        text = path.read_text()
        pool = re.search(r"-- ---- shared candidate pool.*?-- ---- end of the shared candidate pool ----", text, re.S)
        tail = re.search(r"-- ---- shared labelling.*?-- ---- end of the shared labelling ----", text, re.S)
        rules = re.search(r"-- The candidate pool \(the same.*?-- candidate's row, reward_model from its score row\.",
                          text, re.S)
        assert pool and tail and rules, path.name
        blocks[path.name] = (pool.group(0), tail.group(0), rules.group(0))
    assert sorted(blocks) == sorted({f"{pairs._strategy_query(s, 0)[0].split('/')[1]}.sql" for s in STRATEGIES})
    assert len(blocks) == 2  # the three random baselines share vs_random.sql
    assert len(set(blocks.values())) == 1


# --- selection_report.sql -----------------------------------------------------------------------


def report(con, draws_table: pa.Table, strategy: str = "west_of_n") -> list[dict]:
    con.register("pair_draws", draws_table)
    try:
        return catalog.run_sql_file(con, "selection_report", {"strategy": strategy, "length_control": "none"},
                                    schema=schemas.SELECTION_REPORT).to_pylist()
    finally:
        con.unregister("pair_draws")


def test_selection_report_exact_on_crafted_edge_cases(crafted):
    con = crafted[0]
    rows = report(con, draws(con, "west_of_n"))
    assert [(r["step"], r["reason"], r["unit"], r["count"]) for r in rows] == [
        (1, "candidate_rows", "rows", 42),
        (2, "duplicate_candidate_rows", "rows", 2),  # p10 and p11, idx 0
        (3, "duplicate_score_rows", "rows", 2),  # p10 and p12, idx 0
        (4, "scores_without_candidate", "rows", 2),
        (5, "conflicting_copies", "candidates", 2),  # p11 (text) and p12 (reward)
        (6, "unscored_candidates", "candidates", 1),  # p01 idx 4
        (7, "null_reward", "candidates", 2),
        (8, "nonfinite_reward", "candidates", 4),  # NaN twice, +inf, -inf
        (9, "valid_candidates", "candidates", 31),
        (10, "prompts", "prompts", 13),
        (11, "fewer_than_2_valid", "prompts", 2),
        (12, "all_rewards_equal", "prompts", 1),
        (13, "tied_rewards", "prompts", 0),
        (14, "identical_texts", "prompts", 1),
        (15, "pairs", "prompts", 9),
    ]
    assert {(r["strategy"], r["pair_seed"], r["selected"]) for r in rows} == {("west_of_n", None, True)}


def test_selection_report_per_strategy_adds_up(crafted):
    con = crafted[0]
    every = pa.concat_tables([draws(con, s, 4) for s in STRATEGIES])
    rows = report(con, every, strategy="best_vs_random")
    assert [r["strategy"] for r in rows] == [s for s in STRATEGIES for _ in range(15)]
    for strategy in STRATEGIES:
        counts = {r["reason"]: r["count"] for r in rows if r["strategy"] == strategy}
        assert sum(counts[k] for k in ("conflicting_copies", "unscored_candidates", "null_reward",
                                       "nonfinite_reward", "valid_candidates")) == 40  # distinct candidates
        assert counts["prompts"] == sum(counts[k] for k in ("fewer_than_2_valid", "all_rewards_equal",
                                                            "tied_rewards", "identical_texts", "pairs"))
        expected = reference(*crafted[2:], strategy, 4)
        assert counts["pairs"] == sum(v[0] == "pair" for v in expected.values())
    assert {r["strategy"] for r in rows if r["selected"]} == {"best_vs_random"}
    assert {r["pair_seed"] for r in rows if r["strategy"] == "random_pair"} == {4}


def test_selection_report_rejects_unknown_strategy(crafted):
    con = crafted[0]
    with pytest.raises(duckdb.Error, match="strategy must be one of"):
        report(con, draws(con, "west_of_n"), strategy="west_of_n; drop table candidates")


# --- wofn.pairs -----------------------------------------------------------------------------------


def test_select_pairs_keeps_its_signature_and_west_of_n_default(crafted):
    _, (cand_dir, scores_dir), *_ = crafted
    table, n_prompts = pairs.select_pairs(cand_dir, scores_dir)
    assert n_prompts == len(PROMPTS)
    assert table.schema.equals(schemas.PAIRS)
    from pair_tables import EXPECTED_PAIRS
    assert table.column("prompt_id").to_pylist() == sorted(EXPECTED_PAIRS)
    other, _ = pairs.select_pairs(cand_dir, scores_dir, strategy="random_pair", seed=2)
    expected = reference(*crafted[2:], "random_pair", 2)
    assert other.column("prompt_id").to_pylist() == sorted(p for p, v in expected.items() if v[0] == "pair")


def test_draw_pairs_stacks_every_strategy_and_pairs_from_draws_picks_one(crafted):
    _, (cand_dir, scores_dir), *_ = crafted
    every = pairs.draw_pairs(cand_dir, scores_dir, seed=9)
    assert every.schema.equals(schemas.PAIR_DRAWS)
    assert every.num_rows == len(STRATEGIES) * len(PROMPTS)
    for strategy in STRATEGIES:
        picked = pairs.pairs_from_draws(every, strategy)
        alone, _ = pairs.select_pairs(cand_dir, scores_dir, strategy=strategy, seed=9)
        assert picked.equals(alone)


@pytest.mark.parametrize("bad", ["west_of_n'; drop table candidates; --", "random", ""])
def test_unknown_strategy_is_refused_before_any_sql(crafted, bad):
    _, (cand_dir, scores_dir), *_ = crafted
    with pytest.raises(ValueError, match="strategy must be one of"):
        pairs.select_pairs(cand_dir, scores_dir, strategy=bad)


def test_pairwise_teacher_only_supports_west_of_n():
    pairs.check_strategy("west_of_n", pairwise=True)
    with pytest.raises(ValueError, match="teacher is pairwise.*use strategy 'west_of_n'"):
        pairs.check_strategy("best_vs_random", pairwise=True)


def test_filter_pairs_reports_the_funnel_steps(crafted, tmp_path):
    _, (cand_dir, scores_dir), *_ = crafted
    table, _ = pairs.select_pairs(cand_dir, scores_dir)
    pairs_dir = tmp_path / "west_of_n_pairs"
    catalog.write_parquet(table, pairs_dir)
    kept, steps = pairs.filter_pairs(pairs_dir, 0.5, 0.0)  # the signature rounds.py and bench/run.py use
    assert steps == {"west_of_n_pairs": 9, "confidence_filter": 8, "likelihood_filter": 8}  # the keys they read
    assert kept.num_rows == 8
    kept_sum, steps_sum = pairs.filter_pairs(pairs_dir, 0.0, 0.5, likelihood="sum", min_margin=1.0, max_tokens=4)
    assert list(steps_sum) == ["west_of_n_pairs", "confidence_filter", "likelihood_filter", "margin_filter",
                               "max_tokens_filter"]
    counts = list(steps_sum.values())
    assert counts == sorted(counts, reverse=True) and counts[-1] == kept_sum.num_rows
    funnel = pairs.pair_funnel(pairs_dir, 0.5, 0.0, strategy="random_pair", pair_seed=3)
    assert funnel.schema.equals(schemas.PAIR_FUNNEL)
    assert set(funnel.column("strategy").to_pylist()) == {"random_pair"}


@pytest.mark.parametrize("kwargs, message", [
    ({"confidence_quantile": "0.5; drop table x"}, "confidence_quantile must be a number"),
    ({"logprob_quantile": 1.5}, "logprob_quantile must be a number in"),
    ({"likelihood": "mean; drop table x"}, "likelihood must be"),
    ({"min_margin": -1.0}, "min_margin must be"),
    ({"max_tokens": "5; drop table x"}, "max_pair_tokens must be an integer"),
])
def test_filter_settings_are_checked_before_any_sql(tmp_path, kwargs, message):
    args = {"confidence_quantile": 0.5, "logprob_quantile": 0.1, **kwargs}
    with pytest.raises(ValueError, match=message):
        pairs.filter_pairs(tmp_path / "does_not_matter", **args)


# --- at scale: bucket by bucket, streamed ---------------------------------------------------------


def _sorted_rows(table: pa.Table) -> str:
    """The rows in a fixed order, as text (NaN rewards compare equal there), floats to 9 digits: a
    per-prompt fit (residual_per_prompt) sums in DuckDB's order, which moves the last bits."""
    rows = sorted(table.to_pylist(), key=lambda r: (r.get("strategy") or "", r["prompt_id"]))
    return repr([{k: round(v, 9) if isinstance(v, float) else v for k, v in r.items()} for r in rows])


def _folder_rows(folder: Path) -> pa.Table:
    import pyarrow.parquet as pq
    return pa.concat_tables(pq.read_table(f) for f in sorted(folder.glob("*.parquet")))


# residual_per_prompt is left out: its per-prompt fit sums in DuckDB's order, whose last bits can turn a
# near-tie into a tie (or back) between two runs on the whole table alike
@pytest.mark.parametrize("length_control", ["none", "band"])
@pytest.mark.parametrize("fuzz_seed", [1, 2])
def test_draws_written_bucket_by_bucket_are_the_draws_of_the_whole_table(con, tmp_path, fuzz_seed, length_control):
    cand_dir, scores_dir = load(con, tmp_path, *fuzz_rows(random.Random(fuzz_seed), n_prompts=60))
    whole = pairs.draw_pairs(cand_dir, scores_dir, seed=3, length_control=length_control)
    out = tmp_path / "draws"
    written = pairs.write_draws(cand_dir, scores_dir, out, seed=3, length_control=length_control, buckets=4)
    files = sorted(p.name for p in out.glob("*.parquet"))
    assert files == [f"part-{b:05d}.parquet" for b in range(4)]
    bucketed = _folder_rows(out)
    assert written == whole.num_rows and bucketed.schema.equals(schemas.PAIR_DRAWS)
    assert _sorted_rows(bucketed) == _sorted_rows(whole)
    # every prompt lands in exactly one bucket, and the buckets share the prompts out
    prompts = len(set(whole.column("prompt_id").to_pylist()))
    sizes = [len(set(pa.parquet.read_table(out / f).column("prompt_id").to_pylist())) for f in files]
    assert sum(sizes) == prompts and max(sizes) < prompts

    pairs_out = tmp_path / "pairs"
    assert pairs.write_pairs(out, "west_of_n", pairs_out) == pairs.pairs_from_draws(whole, "west_of_n").num_rows
    assert _sorted_rows(_folder_rows(pairs_out)) == _sorted_rows(pairs.pairs_from_draws(whole, "west_of_n"))


def test_buckets_with_unscored_candidates_or_no_prompt_still_draw_as_the_whole_table(con, tmp_path):
    """Scores for one prompt only (the other buckets' candidates are all unscored) and more buckets than
    prompts (some hold none): the same draws as the whole table, one file per bucket."""
    cand_rows, score_rows = fuzz_rows(random.Random(5), n_prompts=6)
    scored = cand_rows[0][0]
    cand_dir, scores_dir = load(con, tmp_path, cand_rows, [r for r in score_rows if r[0] == scored])
    whole = pairs.draw_pairs(cand_dir, scores_dir, seed=3)
    out = tmp_path / "draws"
    assert pairs.write_draws(cand_dir, scores_dir, out, seed=3, buckets=16) == whole.num_rows
    assert sorted(p.name for p in out.glob("*.parquet")) == [f"part-{b:05d}.parquet" for b in range(16)]
    assert _sorted_rows(_folder_rows(out)) == _sorted_rows(whole)
    assert set(whole.column("outcome").to_pylist()) > {"fewer_than_2_valid"}  # the scored prompt drew too


def test_bucket_count_follows_the_candidates_and_residual_takes_the_table_at_once(crafted, tmp_path):
    _, (cand_dir, scores_dir), cand_rows, _ = crafted
    assert pairs.bucket_count(cand_dir) == 1
    assert pairs.bucket_count(cand_dir, per_bucket=5) == math.ceil(len(cand_rows) / 5)
    assert pairs.bucket_count(cand_dir, "residual", per_bucket=5) == 1
    with pytest.raises(ValueError, match="residual.*cannot go by bucket"):
        pairs.write_draws(cand_dir, scores_dir, tmp_path / "d", length_control="residual", buckets=3)


def test_write_sql_file_streams_in_batches_and_names_the_file_on_a_schema_error(crafted, tmp_path):
    con, *_ = crafted
    pairs.register_candidate_pool(con)
    expected = catalog.run_sql_file(con, "prompt_summary", schema=schemas.PROMPT_SUMMARY)
    folder = tmp_path / "out"
    out = folder / "summary.parquet"
    rows = catalog.write_sql_file(con, "prompt_summary", out, schemas.PROMPT_SUMMARY, batch_rows=2)
    written = pa.parquet.read_table(out)
    assert rows == expected.num_rows and written.sort_by("prompt_id").equals(expected.sort_by("prompt_id"))
    assert [p.name for p in folder.iterdir()] == ["summary.parquet"]  # no temporary file left
    wrong = schemas.PROMPT_SUMMARY.set(2, pa.field("n_valid", pa.int64(), nullable=False)).append(
        pa.field("not_there", pa.string(), nullable=False))
    with pytest.raises(schemas.SchemaError, match=r"sql/prompt_summary\.sql: missing column"):
        catalog.write_sql_file(con, "prompt_summary", folder / "bad.parquet", wrong)
    assert [p.name for p in folder.iterdir()] == ["summary.parquet"]  # nothing half-written
