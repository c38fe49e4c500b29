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

from wofn import catalog, schemas


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --- builders -----------------------------------------------------------------------------------


def candidates_table(rows: list[tuple]) -> pa.Table:
    """rows: (prompt_id, candidate_idx, response, num_tokens, logprob_sum)."""
    out = {f.name: [] for f in schemas.CANDIDATES}
    for prompt_id, idx, response, num_tokens, logprob_sum in rows:
        out["prompt_id"].append(prompt_id)
        out["candidate_idx"].append(idx)
        out["prompt"].append(f"\n\nHuman: question {prompt_id}\n\nAssistant:")
        out["response"].append(response)
        out["num_tokens"].append(num_tokens)
        out["logprob_sum"].append(logprob_sum)
        out["logprob_mean"].append(logprob_sum / num_tokens)
        out["finish_reason"].append("stop")
        out["temperature"].append(1.0)
        out["top_p"].append(1.0)
        out["max_new_tokens"].append(64)
        out["seed"].append(1000 + idx)
        out["policy"].append(f"pi@{idx}")  # per row, to check which row the pair takes it from
        out["policy_revision"].append("abc123")
    return pa.Table.from_pydict(out, schema=schemas.CANDIDATES)


# Scores may carry NULL rewards in these tests (the SQL must drop them), so the reward field is
# made nullable here; everything else is schemas.CANDIDATE_SCORES.
SCORES_WITH_NULLS = schemas.CANDIDATE_SCORES.set(
    schemas.CANDIDATE_SCORES.get_field_index("reward"), pa.field("reward", pa.float64())
)


def scores_table(rows: list[tuple]) -> pa.Table:
    """rows: (prompt_id, candidate_idx, reward)."""
    return pa.Table.from_pydict(
        {
            "prompt_id": [r[0] for r in rows],
            "candidate_idx": [r[1] for r in rows],
            "reward": [r[2] for r in rows],
            "reward_model": [f"rm@{r[1]}" for r in rows],
            "reward_model_revision": ["def456"] * len(rows),
        },
        schema=SCORES_WITH_NULLS,
    )


def view_over(con, tmp_path: Path, name: str, table: pa.Table) -> Path:
    table_dir = tmp_path / "tables" / name
    catalog.write_parquet(table, table_dir)
    catalog.create_view(con, name, table_dir, temporary=True)
    return table_dir


NAN, INF = float("nan"), float("inf")

# prompt_id -> list of (candidate_idx, response, num_tokens, logprob_sum, reward or "missing")
PROMPTS: dict[str, list[tuple]] = {
    # normal: best 1 (2.0), worst 2 (-1.0); idx 4 has no score row, so it is not a candidate.
    "p01_normal": [
        (0, "zero", 4, -2.0, 0.5),
        (1, "one", 5, -2.5, 2.0),
        (2, "two", 8, -12.0, -1.0),
        (3, "three", 2, -0.5, 1.0),
        (4, "four", 3, -0.3, "missing"),
    ],
    # tie on the max (idx 1 and 2 at 3.0): the lowest idx (1) is chosen.
    "p02_tie_max": [
        (0, "a", 3, -3.0, 1.0),
        (1, "b", 3, -3.0, 3.0),
        (2, "c", 3, -3.0, 3.0),
        (3, "d", 3, -3.0, 0.0),
    ],
    # tie on the min (idx 0 and 2 at -2.0): the highest idx (2) is rejected.
    "p03_tie_min": [
        (0, "a", 3, -3.0, -2.0),
        (1, "b", 3, -3.0, 1.5),
        (2, "c", 3, -3.0, -2.0),
        (3, "d", 3, -3.0, 0.0),
    ],
    # one candidate: no pair.
    "p04_single": [(0, "only", 3, -1.0, 5.0)],
    # all rewards equal: no pair.
    "p05_all_equal": [(0, "x", 3, -1.0, 0.7), (1, "y", 3, -1.0, 0.7), (2, "z", 3, -1.0, 0.7)],
    # a NaN reward is dropped; the other two still pair (n_candidates = 2).
    "p06_nan": [(0, "a", 2, -1.0, 1.0), (1, "b", 2, -1.0, NAN), (2, "c", 2, -1.0, -0.5)],
    # a NULL reward is dropped; the other two still pair.
    "p07_null": [(0, "a", 2, -1.0, None), (1, "b", 2, -1.0, 0.1), (2, "c", 2, -1.0, 0.4)],
    # only one finite reward (NULL, NaN, +inf, -inf dropped): no pair.
    "p08_one_finite": [
        (0, "a", 2, -1.0, None),
        (1, "b", 2, -1.0, 2.0),
        (2, "c", 2, -1.0, NAN),
        (3, "d", 2, -1.0, INF),
        (4, "e", 2, -1.0, -INF),
    ],
    # best and worst are the same text: no pair.
    "p09_same_text": [(0, "same", 2, -1.0, 1.0), (1, "same", 2, -1.0, 0.0)],
}

# prompt_id -> (chosen_idx, rejected_idx, chosen_reward, rejected_reward, n_candidates)
EXPECTED_PAIRS = {
    "p01_normal": (1, 2, 2.0, -1.0, 4),
    "p02_tie_max": (1, 3, 3.0, 0.0, 4),
    "p03_tie_min": (1, 2, 1.5, -2.0, 4),
    "p06_nan": (0, 2, 1.0, -0.5, 2),
    "p07_null": (2, 1, 0.4, 0.1, 2),
}


@pytest.fixture
def con():
    connection = catalog.connect()
    yield connection
    connection.close()


@pytest.fixture
def pairs_con(con, tmp_path):
    cand_rows, score_rows = [], []
    # Written in shuffled order so nothing depends on the input order.
    for prompt_id in sorted(PROMPTS, reverse=True):
        for idx, response, num_tokens, logprob_sum, reward in reversed(PROMPTS[prompt_id]):
            cand_rows.append((prompt_id, idx, response, num_tokens, logprob_sum))
            if reward != "missing":
                score_rows.append((prompt_id, idx, reward))
    view_over(con, tmp_path, "candidates", candidates_table(cand_rows))
    view_over(con, tmp_path, "candidate_scores", scores_table(score_rows))
    return con


# --- west_of_n_pairs ----------------------------------------------------------------------------


def test_west_of_n_pairs_exact(pairs_con):
    table = catalog.run_sql_file(pairs_con, "west_of_n_pairs", schema=schemas.PAIRS)
    rows = table.to_pylist()
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
        assert row["prompt"] == f"\n\nHuman: question {row['prompt_id']}\n\nAssistant:"


def test_west_of_n_pairs_normal_prompt_values(pairs_con):
    rows = catalog.run_sql_file(pairs_con, "west_of_n_pairs").to_pylist()
    normal = next(r for r in rows if r["prompt_id"] == "p01_normal")
    assert normal["chosen"] == "one" and normal["rejected"] == "two"
    assert abs(normal["margin"] - 3.0) < 1e-9
    assert abs(normal["confidence"] - 0.9525741268224334) < 1e-9
    assert abs(normal["chosen_logprob_mean"] - (-0.5)) < 1e-12
    assert abs(normal["rejected_logprob_mean"] - (-1.5)) < 1e-12


def test_west_of_n_pairs_invariants(pairs_con):
    rows = catalog.run_sql_file(pairs_con, "west_of_n_pairs").to_pylist()
    for row in rows:
        assert row["chosen_idx"] != row["rejected_idx"]
        assert row["margin"] > 0
        assert 0.5 < row["confidence"] <= 1.0
        assert row["chosen"] != row["rejected"]


def test_west_of_n_pairs_conforms_to_schema(pairs_con):
    raw = catalog.run_sql_file(pairs_con, "west_of_n_pairs")
    assert raw.column_names == schemas.PAIRS.names
    assert [f.type for f in raw.schema] == [f.type for f in schemas.PAIRS]
    conformed = catalog.run_sql_file(pairs_con, "west_of_n_pairs", schema=schemas.PAIRS)
    assert conformed.schema.equals(schemas.PAIRS)
    assert conformed.num_rows == len(EXPECTED_PAIRS)


def test_west_of_n_pairs_empty_input(con, tmp_path):
    view_over(con, tmp_path, "candidates", candidates_table([]))
    view_over(con, tmp_path, "candidate_scores", scores_table([]))
    table = catalog.run_sql_file(con, "west_of_n_pairs", schema=schemas.PAIRS)
    assert table.num_rows == 0
    assert table.schema.equals(schemas.PAIRS)


# --- filter_pairs -------------------------------------------------------------------------------

# prompt_id -> (confidence, chosen_logprob_mean, rejected_logprob_mean)
FILTER_INPUT = {
    "a": (0.6, -0.5, -0.6),
    "b": (0.7, -0.4, -0.7),
    "c": (0.8, -0.3, -3.0),  # the rejected response is very unlikely under the policy
    "d": (0.9, -0.2, -0.5),
}


def pairs_table(spec: dict[str, tuple]) -> pa.Table:
    rows = []
    for prompt_id, (confidence, chosen_lpm, rejected_lpm) in spec.items():
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
                "chosen_logprob_sum": chosen_lpm * 10,
                "rejected_logprob_sum": rejected_lpm * 10,
                "chosen_logprob_mean": chosen_lpm,
                "rejected_logprob_mean": rejected_lpm,
                "chosen_num_tokens": 10,
                "rejected_num_tokens": 10,
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


def kept(con, confidence_quantile, logprob_quantile) -> list[str]:
    table = catalog.run_sql_file(
        con,
        "filter_pairs",
        {"confidence_quantile": confidence_quantile, "logprob_quantile": logprob_quantile},
        schema=schemas.PAIRS,
    )
    return table.column("prompt_id").to_pylist()


def test_filter_q0_keeps_all(filter_con):
    assert kept(filter_con, 0.0, 0.0) == ["a", "b", "c", "d"]
    assert kept(filter_con, 0, 0) == ["a", "b", "c", "d"]  # ints bind too


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


def test_filter_output_matches_input_rows(filter_con):
    table = catalog.run_sql_file(
        filter_con, "filter_pairs", {"confidence_quantile": 0.0, "logprob_quantile": 0.0}
    )
    assert table.column_names == schemas.PAIRS.names
    expected = pairs_table(FILTER_INPUT)
    assert schemas.conform(table, schemas.PAIRS, where="test").equals(expected)


def test_filter_binds_with_con_execute(filter_con):
    sql = catalog.read_sql("filter_pairs")
    rows = filter_con.execute(sql, {"confidence_quantile": 0.5, "logprob_quantile": 0.0}).fetchall()
    assert [r[0] for r in rows] == ["c", "d"]


@pytest.mark.parametrize(
    "params",
    [
        {"confidence_quantile": "0.5; drop view west_of_n_pairs", "logprob_quantile": 0.0},
        {"confidence_quantile": 0.5, "logprob_quantile": "0; drop table west_of_n_pairs"},
    ],
)
def test_filter_rejects_sql_text_parameter(filter_con, params):
    with pytest.raises(duckdb.Error):
        catalog.run_sql_file(filter_con, "filter_pairs", params)
    with pytest.raises(duckdb.Error):
        filter_con.execute(catalog.read_sql("filter_pairs"), params).fetchall()
    # The view is still there and intact.
    assert filter_con.execute("select count(*) from west_of_n_pairs").fetchall() == [(4,)]


@pytest.mark.parametrize("bad", [-0.1, 1.5, None])
def test_filter_rejects_out_of_range_quantile(filter_con, bad):
    with pytest.raises(duckdb.Error):
        kept(filter_con, bad, 0.0)
    with pytest.raises(duckdb.Error):
        kept(filter_con, 0.0, bad)


def test_filter_requires_both_parameters(filter_con):
    with pytest.raises(duckdb.Error):
        catalog.run_sql_file(filter_con, "filter_pairs", {"confidence_quantile": 0.5})


def test_pairs_then_filter_chain(pairs_con, tmp_path):
    pairs = catalog.run_sql_file(pairs_con, "west_of_n_pairs", schema=schemas.PAIRS)
    view_over(pairs_con, tmp_path / "chain", "west_of_n_pairs", pairs)
    everything = catalog.run_sql_file(
        pairs_con, "filter_pairs", {"confidence_quantile": 0.0, "logprob_quantile": 0.0}
    )
    assert everything.column("prompt_id").to_pylist() == sorted(EXPECTED_PAIRS)
    # margins 3.0, 3.0, 3.5, 1.5, 0.3 -> quantile_cont(conf, 0.5) = sigmoid(3.0)
    top = catalog.run_sql_file(
        pairs_con, "filter_pairs", {"confidence_quantile": 0.5, "logprob_quantile": 0.0}
    )
    assert top.column("prompt_id").to_pylist() == ["p01_normal", "p02_tie_max", "p03_tie_min"]


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
    assert catalog.read_sql(str(catalog.paths.SQL_DIR / "filter_pairs.sql")).startswith("--")
    with pytest.raises(FileNotFoundError):
        catalog.read_sql("no_such_query")
