"""The SQL in sql/ run through wofn.catalog on small crafted tables, with exact expected outputs."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pair_tables import (
    EXPECTED_NO_PAIR,
    EXPECTED_PAIRS,
    PROMPTS,
    candidates_table,
    crafted_rows,
    prompt_text,
    scores_table,
    sigmoid,
    view_over,
)

from wofn import catalog, pairs, schemas


@pytest.fixture
def con():
    connection = catalog.connect()
    yield connection
    connection.close()


@pytest.fixture
def pairs_con(con, tmp_path):
    cand_rows, score_rows = crafted_rows()
    view_over(con, tmp_path, "candidates", candidates_table(cand_rows))
    view_over(con, tmp_path, "candidate_scores", scores_table(score_rows))
    return con


# --- the west_of_n draw (wofn.pairs.draw) + west_of_n_pairs.sql ---------------------------------


def draws(con, strategy: str = "west_of_n", seed: int | None = None) -> pa.Table:
    return pairs.draw(con, strategy, seed)


def select(con, strategy: str = "west_of_n", seed: int | None = None) -> pa.Table:
    """Draws of `strategy`, registered as pair_draws, then sql/west_of_n_pairs.sql."""
    con.register("pair_draws", draws(con, strategy, seed))
    try:
        return catalog.run_sql_file(con, "west_of_n_pairs", {"strategy": strategy}, schema=schemas.PAIRS)
    finally:
        con.unregister("pair_draws")


def test_west_of_n_pairs_exact(pairs_con):
    rows = select(pairs_con).to_pylist()
    assert [r["prompt_id"] for r in rows] == sorted(EXPECTED_PAIRS)
    for row in rows:
        chosen_idx, rejected_idx, chosen_reward, rejected_reward, n = EXPECTED_PAIRS[row["prompt_id"]]
        spec = {c[0]: c for c in PROMPTS[row["prompt_id"]]}
        assert (row["chosen_idx"], row["rejected_idx"]) == (chosen_idx, rejected_idx), row
        assert row["chosen_reward"] == chosen_reward
        assert row["rejected_reward"] == rejected_reward
        margin = chosen_reward - rejected_reward
        assert row["margin"] == pytest.approx(margin, abs=1e-9)
        assert row["confidence"] == pytest.approx(sigmoid(margin), abs=1e-9)
        assert row["n_candidates"] == n
        assert row["chosen"] == spec[chosen_idx][1]
        assert row["rejected"] == spec[rejected_idx][1]
        assert row["chosen_num_tokens"] == spec[chosen_idx][2]
        assert row["rejected_num_tokens"] == spec[rejected_idx][2]
        assert row["chosen_logprob_sum"] == spec[chosen_idx][3]
        assert row["rejected_logprob_sum"] == spec[rejected_idx][3]
        assert row["chosen_logprob_mean"] == pytest.approx(spec[chosen_idx][3] / spec[chosen_idx][2])
        assert row["rejected_logprob_mean"] == pytest.approx(
            spec[rejected_idx][3] / spec[rejected_idx][2]
        )
        assert row["policy"] == f"pi@{chosen_idx}"
        assert row["reward_model"] == f"rm@{chosen_idx}"
        assert row["prompt"] == prompt_text(row["prompt_id"])


def test_west_of_n_draws_give_every_prompt_an_outcome(pairs_con):
    rows = draws(pairs_con).to_pylist()
    assert [r["prompt_id"] for r in rows] == sorted(PROMPTS)  # one row per prompt_id, duplicates or not
    outcomes = {r["prompt_id"]: r["outcome"] for r in rows}
    assert outcomes == {**{p: "pair" for p in EXPECTED_PAIRS}, **EXPECTED_NO_PAIR}
    by_id = {r["prompt_id"]: r for r in rows}
    assert {r["strategy"] for r in rows} == {"west_of_n"} and {r["pair_seed"] for r in rows} == {None}
    # fewer than 2 valid: no pair columns at all
    assert by_id["p04_single"]["chosen"] is None and by_id["p04_single"]["n_candidates"] == 1
    assert by_id["p08_one_finite"]["chosen_idx"] is None and by_id["p08_one_finite"]["n_candidates"] == 1
    # all equal: the picks are shown, with margin 0, but never chosen == rejected
    equal = by_id["p05_all_equal"]
    assert (equal["chosen_idx"], equal["rejected_idx"], equal["margin"], equal["confidence"]) == (0, 2, 0.0, 0.5)
    same = by_id["p09_same_text"]
    assert (same["chosen_idx"], same["rejected_idx"], same["chosen"], same["rejected"]) == (0, 1, "same", "same")


def test_west_of_n_pairs_normal_prompt_values(pairs_con):
    rows = select(pairs_con).to_pylist()
    normal = next(r for r in rows if r["prompt_id"] == "p01_normal")
    assert normal["chosen"] == "one" and normal["rejected"] == "two"
    assert abs(normal["margin"] - 3.0) < 1e-9
    assert abs(normal["confidence"] - 0.9525741268224334) < 1e-9
    assert abs(normal["chosen_logprob_mean"] - (-0.5)) < 1e-12
    assert abs(normal["rejected_logprob_mean"] - (-1.5)) < 1e-12


def test_west_of_n_pairs_invariants(pairs_con):
    rows = select(pairs_con).to_pylist()
    for row in rows:
        assert row["chosen_idx"] != row["rejected_idx"]
        assert row["margin"] > 0
        assert 0.5 < row["confidence"] <= 1.0
        assert row["chosen"] != row["rejected"]
    assert len({r["prompt_id"] for r in rows}) == len(rows)


def test_strategy_and_pair_sql_conform_to_schema(pairs_con):
    # each step of the draw, unconformed (wofn.pairs.draw runs the same files in this order)
    for view, sql_file in (("candidate_pool", "candidate_pool"), ("prompt_summary", "prompt_summary"),
                           ("pair_picks", "strategies/west_of_n")):
        pairs_con.register(view, catalog.run_sql_file(pairs_con, sql_file))
    raw = catalog.run_sql_file(pairs_con, "label_picks", {"strategy": "west_of_n", "pair_seed": None})
    assert raw.column_names == schemas.PAIR_DRAWS.names
    pairs_con.register("pair_draws", raw)
    pairs = catalog.run_sql_file(pairs_con, "west_of_n_pairs", {"strategy": "west_of_n"})
    assert pairs.column_names == schemas.PAIRS.names
    assert [f.type for f in pairs.schema] == [f.type for f in schemas.PAIRS]
    conformed = schemas.conform(pairs, schemas.PAIRS, where="test")
    assert conformed.num_rows == len(EXPECTED_PAIRS)


def test_west_of_n_pairs_empty_input(con, tmp_path):
    view_over(con, tmp_path, "candidates", candidates_table([]))
    view_over(con, tmp_path, "candidate_scores", scores_table([]))
    assert draws(con).num_rows == 0
    table = select(con)
    assert table.num_rows == 0
    assert table.schema.equals(schemas.PAIRS)


@pytest.mark.parametrize("bad", ["west_of_n'; drop view candidates; --", "West_of_N", None])
def test_west_of_n_pairs_rejects_unknown_strategy(pairs_con, bad):
    pairs_con.register("pair_draws", draws(pairs_con))
    with pytest.raises(duckdb.Error, match="strategy must be one of"):
        catalog.run_sql_file(pairs_con, "west_of_n_pairs", {"strategy": bad})
    assert catalog.scalar(pairs_con, "select count(*) from candidates") > 0


# --- filter_pairs -------------------------------------------------------------------------------

# prompt_id -> (confidence, chosen_logprob_mean, rejected_logprob_mean, chosen_tokens, rejected_tokens)
FILTER_INPUT = {
    "a": (0.6, -0.5, -0.6, 10, 10),
    "b": (0.7, -0.4, -0.7, 4, 20),
    "c": (0.8, -0.3, -3.0, 10, 2),  # the rejected response is very unlikely under the policy
    "d": (0.9, -0.2, -0.5, 30, 10),
}
OFF = {"likelihood": "mean", "min_margin": None, "max_tokens": None, "confidence_measure": "margin"}


def pairs_table(spec: dict[str, tuple]) -> pa.Table:
    rows = []
    for prompt_id, (confidence, chosen_lpm, rejected_lpm, chosen_tokens, rejected_tokens) in spec.items():
        margin = math.log(confidence / (1 - confidence))
        rows.append(
            {
                "prompt_id": prompt_id,
                "prompt": f"prompt {prompt_id}",
                "chosen": f"good {prompt_id}",
                "rejected": f"bad {prompt_id}",
                "chosen_idx": 0,
                "rejected_idx": 1 + sorted(FILTER_INPUT).index(prompt_id),
                "chosen_reward": margin,
                "rejected_reward": 0.0,
                "margin": margin,
                "confidence": confidence,
                "chosen_logprob_sum": chosen_lpm * chosen_tokens,
                "rejected_logprob_sum": rejected_lpm * rejected_tokens,
                "chosen_logprob_mean": chosen_lpm,
                "rejected_logprob_mean": rejected_lpm,
                "chosen_num_tokens": chosen_tokens,
                "rejected_num_tokens": rejected_tokens,
                "n_candidates": 8,
                "policy": "pi",
                "reward_model": "rm",
            }
        )
    return pa.Table.from_pylist(rows, schema=schemas.PAIRS)


@pytest.fixture
def filter_con(con, tmp_path):
    # Reversed so the output order must come from the ORDER BY.
    view_over(con, tmp_path, "west_of_n_pairs", pairs_table(dict(reversed(FILTER_INPUT.items()))))
    return con


def kept(con, confidence_quantile, logprob_quantile, **options) -> list[str]:
    params = {"confidence_quantile": confidence_quantile, "logprob_quantile": logprob_quantile, **OFF, **options}
    table = catalog.run_sql_file(con, "filter_pairs", params, schema=schemas.PAIRS)
    return table.column("prompt_id").to_pylist()


def funnel(con, confidence_quantile, logprob_quantile, strategy="west_of_n", pair_seed=None, **options) -> list[dict]:
    params = {"confidence_quantile": confidence_quantile, "logprob_quantile": logprob_quantile, **OFF, **options,
              "strategy": strategy, "pair_seed": pair_seed}
    return catalog.run_sql_file(con, "pair_funnel", params, schema=schemas.PAIR_FUNNEL).to_pylist()


def test_filter_q0_keeps_all(filter_con):
    assert kept(filter_con, 0.0, 0.0) == ["a", "b", "c", "d"]
    assert kept(filter_con, 0, 0) == ["a", "b", "c", "d"]  # ints bind too
    assert kept(filter_con, 0.0, 0.0, min_margin=0.0) == ["a", "b", "c", "d"]  # margin > 0 always


def test_filter_confidence_median(filter_con):
    # quantile_cont([0.6, 0.7, 0.8, 0.9], 0.5) = 0.75
    assert kept(filter_con, 0.5, 0.0) == ["c", "d"]
    assert kept(filter_con, 1.0, 0.0) == ["d"]


def test_filter_logprob_drops_low_likelihood_response(filter_con):
    # pooled means sorted: -3.0 -0.7 -0.6 -0.5 -0.5 -0.4 -0.3 -0.2; q=0.1 -> -3.0 + 0.7 * 2.3
    # = -1.39: only c (rejected at -3.0) falls below.
    assert kept(filter_con, 0.0, 0.1) == ["a", "b", "d"]
    # q=0.5 -> -0.5: only d has both means >= -0.5.
    assert kept(filter_con, 0.0, 0.5) == ["d"]
    assert kept(filter_con, 0.5, 0.1) == ["d"]


def test_filter_likelihood_sum_penalises_length(filter_con):
    # sums: a -5.0/-6.0, b -1.6/-14.0, c -3.0/-6.0, d -6.0/-5.0; pooled sorted:
    # -14 -6 -6 -6 -5 -5 -3 -1.6; q=0.5 -> -5.5: a (-6.0), b (-14.0), c (-6.0) and d (-6.0) fall below.
    assert kept(filter_con, 0.0, 0.5, likelihood="sum") == []
    # q=0.2 -> -6 + 0.4 * 0 = -6.0: only b (its long rejected sums to -14.0) falls below. By the
    # mean (q=0.2 -> -0.7 + 0.4 * 0.1 = -0.66), c's short but unlikely rejected (-3.0 per token)
    # falls below too.
    assert kept(filter_con, 0.0, 0.2, likelihood="sum") == ["a", "c", "d"]
    assert kept(filter_con, 0.0, 0.2, likelihood="mean") == ["a", "d"]


def test_filter_min_margin_and_max_tokens(filter_con):
    # margins: logit(0.6) = 0.405, logit(0.7) = 0.847, logit(0.8) = 1.386, logit(0.9) = 2.197
    assert kept(filter_con, 0.0, 0.0, min_margin=1.0) == ["c", "d"]
    assert kept(filter_con, 0.0, 0.0, min_margin=0.847) == ["b", "c", "d"]  # logit(0.7) = 0.8473 >= 0.847
    assert kept(filter_con, 0.0, 0.0, max_tokens=20) == ["a", "b", "c"]
    assert kept(filter_con, 0.0, 0.0, max_tokens=10) == ["a", "c"]
    assert kept(filter_con, 0.0, 0.0, min_margin=1.0, max_tokens=10) == ["c"]


def test_filter_output_matches_input_rows(filter_con):
    table = catalog.run_sql_file(
        filter_con, "filter_pairs", {"confidence_quantile": 0.0, "logprob_quantile": 0.0, **OFF}
    )
    assert table.column_names == schemas.PAIRS.names
    expected = pairs_table(FILTER_INPUT)
    assert schemas.conform(table, schemas.PAIRS, where="test").equals(expected)


def test_filter_binds_with_con_execute(filter_con):
    """The file that computes the filters runs on a plain connection; filter_pairs.sql reads its result."""
    sql = catalog.read_sql("pair_filter_flags")
    rows = filter_con.execute(sql, {"confidence_quantile": 0.5, "logprob_quantile": 0.0, **OFF}).fetchall()
    assert [r[0] for r in rows if all(r[-4:])] == ["c", "d"]
    assert catalog.sql_dependencies(catalog.read_sql("filter_pairs")) == [("pair_filter_flags", "pair_filter_flags")]
    with pytest.raises(duckdb.CatalogException, match="pair_filter_flags does not exist"):
        filter_con.execute(catalog.read_sql("filter_pairs")).fetchall()


INJECTIONS = [
    {"confidence_quantile": "0.5; drop view west_of_n_pairs"},
    {"logprob_quantile": "0; drop table west_of_n_pairs"},
    {"likelihood": "mean'; drop view west_of_n_pairs; --"},
    {"min_margin": "0; drop view west_of_n_pairs"},
    {"max_tokens": "5; drop view west_of_n_pairs"},
]


@pytest.mark.parametrize("bad", INJECTIONS)
@pytest.mark.parametrize("sql", ["filter_pairs", "pair_funnel"])
def test_filter_rejects_sql_text_parameter(filter_con, bad, sql):
    params = {"confidence_quantile": 0.5, "logprob_quantile": 0.0, **OFF, **bad}
    if sql == "pair_funnel":
        params.update(strategy="west_of_n", pair_seed=None)
    with pytest.raises(duckdb.Error, match="must be|Could not convert|Conversion Error"):
        catalog.run_sql_file(filter_con, sql, params)
    with pytest.raises(duckdb.Error, match="must be|Could not convert|Conversion Error"):  # the file that binds them
        filter_con.execute(catalog.read_sql("pair_filter_flags"), {k: v for k, v in params.items()
                                                                    if k not in ("strategy", "pair_seed")}).fetchall()
    # The view is still there and intact.
    assert filter_con.execute("select count(*) from west_of_n_pairs").fetchall() == [(4,)]


@pytest.mark.parametrize("bad", [-0.1, 1.5, None])
def test_filter_rejects_out_of_range_quantile(filter_con, bad):
    with pytest.raises(duckdb.Error, match="must be in"):
        kept(filter_con, bad, 0.0)
    with pytest.raises(duckdb.Error, match="must be in"):
        kept(filter_con, 0.0, bad)


@pytest.mark.parametrize("options, message", [
    ({"likelihood": "median"}, "likelihood must be"),
    ({"likelihood": None}, "likelihood must be"),
    ({"min_margin": -1.0}, "min_margin must be"),
    ({"max_tokens": 0}, "max_tokens must be"),
])
def test_filter_rejects_bad_options(filter_con, options, message):
    with pytest.raises(duckdb.Error, match=message):
        kept(filter_con, 0.0, 0.0, **options)
    with pytest.raises(duckdb.Error, match=message):
        funnel(filter_con, 0.0, 0.0, **options)


def test_filter_requires_every_parameter(filter_con):
    with pytest.raises(duckdb.Error):
        catalog.run_sql_file(filter_con, "filter_pairs", {"confidence_quantile": 0.5, "logprob_quantile": 0.0})


# --- pair_funnel --------------------------------------------------------------------------------


def test_funnel_exact(filter_con):
    rows = funnel(filter_con, 0.5, 0.1, strategy="best_vs_random", pair_seed=7, max_tokens=20)
    # selected a b c d; confidence >= 0.75 keeps c d; likelihood >= -1.39 drops c; margin off;
    # max_tokens 20 drops d (30 tokens).
    assert [(r["step"], r["pairs_in"], r["pairs_kept"]) for r in rows] == [
        ("selected", 4, 4), ("confidence", 4, 2), ("likelihood", 2, 1), ("margin", 1, 1), ("max_tokens", 1, 0)]
    assert [r["setting"] for r in rows] == ["all pairs", "q=0.5", "q=0.1 of logprob_mean", "off", "<= 20"]
    assert [r["threshold"] for r in rows] == pytest.approx([None, 0.75, -1.39, None, 20.0], nan_ok=True)
    assert rows[0]["threshold"] is None and rows[3]["threshold"] is None
    assert {(r["strategy"], r["pair_seed"]) for r in rows} == {("best_vs_random", 7)}
    assert [r["step_order"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["kept_share"] for r in rows] == [1.0, 0.5, 0.5, 1.0, 0.0]
    # lengths (chosen - rejected): a 0, b -16, c +8, d +20
    selected, confidence, likelihood, _, last = rows
    assert (selected["chosen_longer_share"], selected["chosen_shorter_share"], selected["mean_length_gap"]) == (
        0.5, 0.25, 3.0)
    assert (confidence["chosen_longer_share"], confidence["mean_length_gap"]) == (1.0, 14.0)
    assert (likelihood["chosen_longer_share"], likelihood["mean_length_gap"]) == (1.0, 20.0)
    assert selected["mean_confidence"] == pytest.approx(0.75)
    assert likelihood["mean_confidence"] == pytest.approx(0.9)
    assert (last["chosen_longer_share"], last["mean_length_gap"], last["mean_confidence"]) == (None, None, None)


@pytest.mark.parametrize("options", [
    {}, {"likelihood": "sum"}, {"min_margin": 1.0}, {"max_tokens": 10}, {"likelihood": "sum", "max_tokens": 20}])
@pytest.mark.parametrize("quantiles", [(0.0, 0.0), (0.5, 0.1), (0.25, 0.5), (1.0, 1.0)])
def test_funnel_last_step_is_filter_pairs(filter_con, quantiles, options):
    rows = funnel(filter_con, *quantiles, **options)
    assert rows[-1]["pairs_kept"] == len(kept(filter_con, *quantiles, **options))


def test_funnel_on_no_pairs(con, tmp_path):
    view_over(con, tmp_path, "west_of_n_pairs", pairs_table({}))
    rows = funnel(con, 0.5, 0.1)
    assert [(r["step"], r["pairs_in"], r["pairs_kept"], r["kept_share"]) for r in rows] == [
        ("selected", 0, 0, None), ("confidence", 0, 0, None), ("likelihood", 0, 0, None),
        ("margin", 0, 0, None), ("max_tokens", 0, 0, None)]


def test_funnel_rejects_unknown_strategy_label(filter_con):
    with pytest.raises(duckdb.Error, match="strategy must be one of"):
        funnel(filter_con, 0.0, 0.0, strategy="0.5; drop table x")


def test_pairs_then_filter_chain(pairs_con, tmp_path):
    pairs = select(pairs_con)
    view_over(pairs_con, tmp_path / "chain", "west_of_n_pairs", pairs)
    everything = catalog.run_sql_file(
        pairs_con, "filter_pairs", {"confidence_quantile": 0.0, "logprob_quantile": 0.0, **OFF}
    )
    assert everything.column("prompt_id").to_pylist() == sorted(EXPECTED_PAIRS)
    # margins 3.0, 3.0, 3.5, 1.5, 0.3, 1, 1, 1, 1 -> quantile_cont(conf, 0.5) = sigmoid(1.0)
    top = catalog.run_sql_file(
        pairs_con, "filter_pairs", {"confidence_quantile": 0.5, "logprob_quantile": 0.0, **OFF}
    )
    assert top.column("prompt_id").to_pylist() == [
        "p01_normal", "p02_tie_max", "p03_tie_min", "p06_nan", "p10_dup_rows", "p11_conflicting_text",
        "p12_conflicting_reward", "p13_text_twin"]


# --- catalog helpers ----------------------------------------------------------------------------


def test_create_view_rejects_unknown_name(con, tmp_path):
    table_dir = tmp_path / "tables" / "candidates"
    catalog.write_parquet(candidates_table([("p", 0, "r", 1, -1.0)]), table_dir)
    with pytest.raises(ValueError, match="unknown table"):
        catalog.create_view(con, 'candidates"; drop table x; --', table_dir)
    with pytest.raises(ValueError):
        catalog.create_view(con, "not_a_table", table_dir)


def test_create_view_rejects_missing_or_empty_folder(con, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        catalog.create_view(con, "candidates", missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not parquet")
    with pytest.raises(FileNotFoundError, match=re.escape(str(empty))):
        catalog.create_view(con, "candidates", empty)
    assert con.execute(
        "select count(*) from duckdb_views() where view_name = 'candidates'"
    ).fetchall() == [(0,)]


def test_create_view_path_with_quote(con, tmp_path):
    table_dir = tmp_path / "it's here" / "candidates"
    catalog.write_parquet(candidates_table([("p", 0, "r", 1, -1.0)]), table_dir)
    catalog.create_view(con, "candidates", table_dir, temporary=True)
    assert catalog.query(con, "select prompt_id from candidates").to_pylist() == [{"prompt_id": "p"}]


def test_the_schema_cache_of_views_keeps_the_newest_folders(con, tmp_path, monkeypatch):
    """A long-lived process makes views over many folders (every bucket's temporary one): the cache of
    their schemas keeps the newest few, and a folder seen again is read again, right."""
    monkeypatch.setattr(catalog, "_SCHEMAS", {})
    monkeypatch.setattr(catalog, "_SCHEMAS_KEPT", 3)
    folders = [tmp_path / f"t{i}" for i in range(5)]
    for i, folder in enumerate(folders):
        catalog.write_parquet(candidates_table([(f"p{i}", 0, "r", 1, -1.0)]), folder)
        catalog.create_view(con, "candidates", folder, temporary=True)
    assert list(catalog._SCHEMAS) == folders[2:]
    older = candidates_table([("q", 0, "r", 1, -1.0)]).drop(["policy_revision"])
    catalog.write_parquet(older, folders[0], "0-old.parquet")
    catalog.create_view(con, "candidates", folders[0], temporary=True)  # mixed now: a union by name
    assert catalog.query(con, "select count(*) as n, count(policy_revision) as known from candidates").to_pylist() == [
        {"n": 2, "known": 1}]
    assert list(catalog._SCHEMAS) == [*folders[3:], folders[0]]


def test_refresh_view_is_persistent_and_live(tmp_path):
    catalog_path = tmp_path / "home" / "wofn.duckdb"
    table_dir = tmp_path / "home" / "tables" / "candidates"
    catalog.write_parquet(candidates_table([("p1", 0, "a", 2, -1.0)]), table_dir)
    catalog.refresh_view(catalog_path, "candidates", table_dir)
    assert catalog_path.is_file()

    ro = catalog.connect(catalog_path, read_only=True)
    try:
        assert catalog.query(ro, "select count(*) as n from candidates").to_pylist() == [{"n": 1}]
    finally:
        ro.close()

    # Rewriting the Parquet file afterwards shows through: the catalog holds a view, not a copy.
    catalog.write_parquet(
        candidates_table([("p2", 0, "b", 2, -1.0), ("p2", 1, "c", 2, -2.0)]), table_dir
    )
    assert not [p.name for p in table_dir.iterdir() if p.name != "data.parquet"]
    ro = catalog.connect(catalog_path, read_only=True)
    try:
        table = catalog.query(ro, "select prompt_id, candidate_idx from candidates order by 2")
        assert table.to_pylist() == [
            {"prompt_id": "p2", "candidate_idx": 0},
            {"prompt_id": "p2", "candidate_idx": 1},
        ]
    finally:
        ro.close()


def test_connect_raises_clear_error_when_locked(tmp_path):
    catalog_path = tmp_path / "wofn.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, duckdb
                con = duckdb.connect({str(catalog_path)!r})
                print("locked", flush=True)
                sys.stdin.read()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(catalog.CatalogLockedError, match="another process") as info:
            catalog.connect(catalog_path, timeout_s=0.3)
        assert str(catalog_path) in str(info.value)
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
        holder.stdout.close()
    # Once the holder is gone, the file opens.
    catalog.connect(catalog_path, timeout_s=1.0).close()


def test_write_parquet_atomic_roundtrip(tmp_path):
    table = candidates_table([("p", 0, "r", 1, -1.0)])
    path = catalog.write_parquet(table, tmp_path / "out", filename="part-0.parquet")
    assert path == tmp_path / "out" / "part-0.parquet"
    assert pq.read_table(path).equals(table)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["part-0.parquet"]


def test_read_sql_by_name_and_path():
    text = catalog.read_sql("west_of_n_pairs")
    assert "select * from final" in text
    assert "select * from final" in catalog.read_sql("strategies/vs_random")
    assert catalog.read_sql(str(catalog.paths.SQL_DIR / "filter_pairs.sql")).startswith("--")
    with pytest.raises(FileNotFoundError):
        catalog.read_sql("no_such_query")


def _duckdb_1_cli() -> str:
    """The `duckdb` CLI PyPI ships (duckdb-cli, a dev dependency pinned at a 1.x release)."""
    cli = Path(sys.executable).with_name("duckdb")
    assert cli.exists(), "the duckdb CLI (duckdb-cli in the dev extras) is missing from the venv"
    version = subprocess.run([str(cli), "--version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("v1."), version
    return str(cli)


def _cli_count(path, table: str) -> subprocess.CompletedProcess:
    return subprocess.run([_duckdb_1_cli(), "-readonly", "-csv", str(path), "-c", f"select count(*) as n from {table}"],
                          capture_output=True, text=True)


def test_the_duckdb_1_cli_reads_the_catalog(tmp_path):
    table_dir = tmp_path / "tables" / "candidates"
    catalog.write_parquet(candidates_table([("p2", 0, "b", 2, -1.0), ("p2", 1, "c", 2, -2.0)]), table_dir)
    catalog.refresh_view(tmp_path / "wofn.duckdb", "candidates", table_dir)
    out = _cli_count(tmp_path / "wofn.duckdb", "candidates")
    assert out.returncode == 0 and out.stdout.split() == ["n", "2"], out.stderr


def test_a_catalog_written_in_duckdb_2s_format_is_rewritten_for_duckdb_1(tmp_path):
    path, table_dir = tmp_path / "wofn.duckdb", tmp_path / "tables" / "candidates"
    catalog.write_parquet(candidates_table([("p2", 0, "b", 2, -1.0)]), table_dir)
    old = duckdb.connect(str(path))  # duckdb 2's own format, as catalogs were written before
    catalog.create_view(old, "candidates", table_dir)
    old.close()
    assert catalog.storage_version(path) > 68
    assert _cli_count(path, "candidates").returncode != 0
    con = catalog.connect(path)
    try:
        assert catalog.scalar(con, "select count(*) from candidates") == 1
    finally:
        con.close()
    assert catalog.storage_version(path) <= 68 and not list(tmp_path.glob(".wofn.duckdb.*"))
    out = _cli_count(path, "candidates")
    assert out.returncode == 0 and out.stdout.split() == ["n", "1"], out.stderr


def test_a_truncated_parquet_file_in_a_table_is_named(tmp_path, capsys):
    """Found when the view is published, and by any query of a view published before."""
    from wofn import cli

    table_dir = tmp_path / "tables" / "candidates"
    catalog.write_parquet(candidates_table([("p2", 0, "b", 2, -1.0)]), table_dir, "a.parquet")
    catalog.write_parquet(candidates_table([("p3", 0, "c", 2, -1.0)]), table_dir, "b.parquet")
    catalog.refresh_view(tmp_path / "wofn.duckdb", "candidates", table_dir)
    damaged = table_dir / "b.parquet"
    damaged.write_bytes(damaged.read_bytes()[:100])
    assert cli.main(["sql", "select count(*) from candidates", "--home", str(tmp_path)]) == 2
    assert str(damaged) in capsys.readouterr().err
    with pytest.raises(ValueError, match=rf"table 'candidates' in .*cannot be read as Parquet .*{damaged.name}"):
        catalog.refresh_view(tmp_path / "wofn.duckdb", "candidates", table_dir)


def test_tables_are_written_in_row_groups_a_reader_can_stream(tmp_path):
    """A million prompts in one row group made Beam's ReadFromParquet hold them all at once."""
    n = catalog.ROW_GROUP_ROWS + 10
    path = catalog.write_parquet(pa.table({"prompt_id": [f"p{i}" for i in range(n)]}), tmp_path)
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == n and meta.num_row_groups == 2
    assert meta.row_group(0).num_rows == catalog.ROW_GROUP_ROWS
