"""Length control of pair selection (sql/length_control/*.sql, wofn.pairs): residual rewards, the
length band and balanced pair sets, on crafted tables with exact expected outputs; then the
settings through a real Dagster materialize."""

from __future__ import annotations

import json
import math
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import materialize
from pair_tables import EXPECTED_PAIRS, candidates_table, crafted_rows, scores_table, view_over

from wofn import catalog, pairs, pairwise, schemas
from wofn_dagster.definitions import defs
from wofn_dagster.resources import WofnSettings, wofn_resources
from wofn_dagster.selections import select

NAN, INF = float("nan"), float("inf")


@pytest.fixture
def con():
    connection = catalog.connect()
    yield connection
    connection.close()


def write(tmp_path: Path, cand_rows: list[tuple], score_rows: list[tuple]) -> tuple[Path, Path]:
    """The two tables as Parquet folders; rows as in pair_tables (candidates: prompt_id, idx,
    response, num_tokens, logprob_sum; scores: prompt_id, idx, reward)."""
    cands, scores = tmp_path / "candidates", tmp_path / "candidate_scores"
    catalog.write_parquet(candidates_table(cand_rows), cands)
    catalog.write_parquet(scores_table(score_rows), scores)
    return cands, scores


def spec_rows(spec: dict[str, list[tuple]]) -> tuple[list[tuple], list[tuple]]:
    """spec: prompt_id -> [(candidate_idx, num_tokens, reward)]; responses are distinct texts."""
    cand_rows = [(p, i, f"{p} response {i}", n, -float(n)) for p, cs in spec.items() for i, n, _ in cs]
    score_rows = [(p, i, r) for p, cs in spec.items() for i, _, r in cs]
    return cand_rows, score_rows


def picks(table: pa.Table) -> dict[str, tuple]:
    """prompt_id -> (chosen_idx, rejected_idx, chosen_num_tokens, rejected_num_tokens) of a pair table."""
    return {r["prompt_id"]: (r["chosen_idx"], r["rejected_idx"], r["chosen_num_tokens"], r["rejected_num_tokens"])
            for r in table.to_pylist()}


def rewards(table: pa.Table) -> list[tuple]:
    return [(r["prompt_id"], r["candidate_idx"], r["reward"]) for r in table.to_pylist()]


# --- residual rewards -----------------------------------------------------------------------------

# reward = -0.1 * num_tokens + quality. Prompt b mirrors a's quality, so over the run the quality
# is uncorrelated with length: the global fit is exactly slope -0.1, intercept 0, and the
# residuals are the qualities. Plain West-of-N picks the shortest as chosen in both prompts.
QUALITY = {"a": [(0, 10, 0.0), (1, 20, -0.4), (2, 40, 0.8)],
           "b": [(0, 10, 0.0), (1, 20, 0.4), (2, 40, -0.8)]}
BIASED = {p: [(i, n, -0.1 * n + q) for i, n, q in cs] for p, cs in QUALITY.items()}


def test_residual_global_removes_the_length_term_and_flips_the_chosen(tmp_path):
    cand_rows, score_rows = spec_rows(BIASED)
    cand_rows.append(("a", 3, "a response 3", 15, -15.0))
    score_rows += [("a", 3, NAN), ("a", 0, BIASED["a"][0][2])]  # a NaN reward; a duplicate score row
    cands, scores = write(tmp_path, cand_rows, score_rows)

    residual = pairs.length_controlled_scores(cands, scores, "residual")
    assert residual.column_names == schemas.CANDIDATE_SCORES.names
    got = rewards(residual)
    expected = [("a", 0, 0.0), ("a", 0, 0.0), ("a", 1, -0.4), ("a", 2, 0.8), ("a", 3, NAN),
                ("b", 0, 0.0), ("b", 1, 0.4), ("b", 2, -0.8)]
    assert [g[:2] for g in got] == [e[:2] for e in expected]  # one row per score row, in order
    for (_, _, g), (_, _, e) in zip(got, expected):
        assert math.isnan(g) if math.isnan(e) else g == pytest.approx(e, abs=1e-12)
    assert residual.column("reward_model").to_pylist() == ["rm@0", "rm@0", "rm@1", "rm@2", "rm@3",
                                                           "rm@0", "rm@1", "rm@2"]

    plain, _ = pairs.select_pairs(cands, scores)
    assert picks(plain) == {"a": (0, 2, 10, 40), "b": (0, 2, 10, 40)}  # shorter is "better"
    controlled, n_prompts = pairs.select_pairs(cands, scores, length_control="residual")
    assert n_prompts == 2
    assert picks(controlled) == {"a": (2, 1, 40, 20), "b": (1, 2, 20, 40)}  # a flips to the longer
    row = controlled.to_pylist()[0]
    assert row["margin"] == pytest.approx(1.2) and row["n_candidates"] == 3  # the NaN is not valid


# Per prompt: c's quality is orthogonal to its lengths (sum 0, sum q * (x - 25) = 0), so the
# prompt's own fit leaves the quality; e's candidates are equally long (slope 0: reward - mean);
# s has one candidate (residual 0, no pair).
PER_PROMPT = {"c": [(0, 10, -1.0 + 0.1), (1, 20, -2.0 + 0.3), (2, 30, -3.0 - 0.9), (3, 40, -4.0 + 0.5)],
              "e": [(0, 5, 1.0), (1, 5, 3.0), (2, 5, 2.0)],
              "s": [(0, 7, 4.0)]}


def test_residual_per_prompt_fits_each_prompt(tmp_path):
    cands, scores = write(tmp_path, *spec_rows(PER_PROMPT))
    got = rewards(pairs.length_controlled_scores(cands, scores, "residual_per_prompt"))
    expected = [("c", 0, 0.1), ("c", 1, 0.3), ("c", 2, -0.9), ("c", 3, 0.5),
                ("e", 0, -1.0), ("e", 1, 1.0), ("e", 2, 0.0), ("s", 0, 0.0)]
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    assert [g[2] for g in got] == pytest.approx([e[2] for e in expected], abs=1e-12)

    plain, _ = pairs.select_pairs(cands, scores)
    assert picks(plain) == {"c": (0, 2, 10, 30), "e": (1, 0, 5, 5)}
    controlled, _ = pairs.select_pairs(cands, scores, length_control="residual_per_prompt")
    assert picks(controlled) == {"c": (3, 2, 40, 30), "e": (1, 0, 5, 5)}  # c flips; e's order stays
    by_prompt = {r["prompt_id"]: r for r in controlled.to_pylist()}
    assert by_prompt["e"]["margin"] == pytest.approx(2.0)  # reward - mean keeps e's differences


def _reference_residuals(cand_rows, score_rows, per_prompt: bool) -> list[tuple]:
    """An independent least-squares reference of residual_scores.sql's documented rules."""
    cands: dict[tuple, list[tuple]] = {}
    for row in cand_rows:
        cands.setdefault(row[:2], []).append(row)
    scores: dict[tuple, list] = {}
    for prompt_id, idx, reward in score_rows:
        scores.setdefault((prompt_id, idx), []).append(reward)
    length = {key: min(r[3] for r in rows) for key, rows in cands.items()}
    points: dict[str, list[tuple]] = {}
    for key, rows in cands.items():
        values = scores.get(key, [])
        if (len({r[2] for r in rows}) == 1 and values and all(v is not None for v in values)
                and len(set(values)) == 1 and math.isfinite(values[0])):
            points.setdefault(key[0] if per_prompt else "", []).append((length[key], values[0]))
    fits = {}
    for group, pts in points.items():
        mx = sum(x for x, _ in pts) / len(pts)
        my = sum(y for _, y in pts) / len(pts)
        sxx = sum((x - mx) ** 2 for x, _ in pts)
        slope = sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx > 0 else 0.0
        fits[group] = (my - slope * mx, slope)
    out = []
    for prompt_id, idx, reward in score_rows:
        if (prompt_id, idx) not in cands:
            continue
        intercept, slope = fits.get(prompt_id if per_prompt else "", (0.0, 0.0))
        finite = reward is not None and math.isfinite(reward)
        out.append((prompt_id, idx, reward - intercept - slope * length[(prompt_id, idx)] if finite else reward))
    return sorted(out, key=lambda r: (r[0], r[1], -math.inf if r[2] is None or math.isnan(r[2]) else r[2]))


@pytest.mark.parametrize("control", ["residual", "residual_per_prompt"])
def test_residual_matches_a_reference_on_the_crafted_edge_cases(tmp_path, control):
    # NULL, NaN and inf rewards, duplicate and conflicting copies, unscored candidates, orphan scores
    cand_rows, score_rows = crafted_rows()
    cands, scores = write(tmp_path, cand_rows, score_rows)
    got = rewards(pairs.length_controlled_scores(cands, scores, control))
    got = sorted(got, key=lambda r: (r[0], r[1], -math.inf if r[2] is None or math.isnan(r[2]) else r[2]))
    expected = _reference_residuals(cand_rows, score_rows, control == "residual_per_prompt")
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    for g, e in zip(got, expected):
        if e[2] is None or not math.isfinite(e[2]):
            assert g[2] is None if e[2] is None else (math.isnan(g[2]) if math.isnan(e[2]) else g[2] == e[2])
        else:
            assert g[2] == pytest.approx(e[2], abs=1e-9), g
    # no orphan score row survives; the pool still drops the non-finite rewards and the conflicts
    assert ("p99_no_candidates", 0) not in {g[:2] for g in got} and ("p01_normal", 9) not in {g[:2] for g in got}
    draws = {r["prompt_id"]: r for r in pairs.draw_pairs(cands, scores, strategies=("west_of_n",),
                                                           length_control=control).to_pylist()}
    assert draws["p08_one_finite"]["outcome"] == "fewer_than_2_valid"
    assert draws["p06_nan"]["n_candidates"] == 2 and draws["p12_conflicting_reward"]["n_candidates"] == 2


def test_residual_passes_duplicate_rows_through_one_to_one(con, tmp_path):
    # idx 0: three identical candidate rows and two identical score rows -> two output rows, not six
    cand_rows = [("d", 0, "x", 4, -1.0)] * 3 + [("d", 1, "y", 8, -1.0), ("d", 2, "z", 6, -1.0)]
    score_rows = [("d", 0, 1.0), ("d", 0, 1.0), ("d", 1, 0.0), ("d", 2, 2.0)]
    view_over(con, tmp_path, "candidates", candidates_table(cand_rows))
    view_over(con, tmp_path, "candidate_scores", scores_table(score_rows))
    pairs.register_candidate_pool(con)  # the length-control files read the pool, as in length_controlled_scores
    for per_prompt in (False, True):
        table = catalog.run_sql_file(con, "length_control/residual_scores", {"per_prompt": per_prompt})
        assert [r[:2] for r in rewards(table)] == [("d", 0), ("d", 0), ("d", 1), ("d", 2)]
        # one point per candidate: 3 points (4, 1), (8, 0), (6, 2); slope -0.25, intercept 2.5
        assert [r[2] for r in rewards(table)] == pytest.approx([-0.5, -0.5, -0.5, 1.0])
    band = catalog.run_sql_file(con, "length_control/length_band_scores", {"band": 1.0})
    assert [r[:2] for r in rewards(band)] == [("d", 0), ("d", 0), ("d", 1), ("d", 2)]


def test_residual_sql_refuses_a_null_per_prompt(con, tmp_path):
    cands, scores = write(tmp_path, *spec_rows(PER_PROMPT))
    catalog.create_view(con, "candidates", cands, temporary=True)
    catalog.create_view(con, "candidate_scores", scores, temporary=True)
    pairs.register_candidate_pool(con)
    with pytest.raises(duckdb.Error, match="per_prompt must be true or false"):
        catalog.run_sql_file(con, "length_control/residual_scores", {"per_prompt": None})


# --- length band ----------------------------------------------------------------------------------

BAND = {
    # best 0 (len 10): band 0.3 = [7, 13]; 3 (14) and 4 (6) are outside; 5 is NaN (passes, not
    # valid); 6 has +inf (not finite: never the best) and is outside
    "w": [(0, 10, 2.0), (1, 8, 1.0), (2, 13, 0.5), (3, 14, -1.0), (4, 6, -2.0), (5, 10, NAN), (6, 30, INF)],
    # best = 1 (3.0, the lowest idx of the tie), len 20: band 0.3 = [14, 26] keeps 1 and 3 only
    "t": [(0, 5, 1.0), (1, 20, 3.0), (2, 10, 3.0), (3, 19, 0.0), (4, 5, -1.0)],
    # two candidates of the best's length (band 0 keeps them)
    "z": [(0, 10, 2.0), (1, 10, 1.0), (2, 11, -5.0)],
}


def test_band_keeps_the_best_and_picks_the_worst_inside(tmp_path):
    cands, scores = write(tmp_path, *spec_rows(BAND))
    kept = pairs.length_controlled_scores(cands, scores, "band", 0.3)
    assert kept.column_names == schemas.CANDIDATE_SCORES.names
    assert [r[:2] for r in rewards(kept)] == [("t", 1), ("t", 3), ("w", 0), ("w", 1), ("w", 2), ("w", 5),
                                              ("z", 0), ("z", 1), ("z", 2)]
    assert [r[2] for r in rewards(kept) if r[0] == "t"] == [3.0, 0.0]  # rewards unchanged
    plain, _ = pairs.select_pairs(cands, scores)
    assert picks(plain) == {"t": (1, 4, 20, 5), "w": (0, 4, 10, 6), "z": (0, 2, 10, 11)}
    banded, _ = pairs.select_pairs(cands, scores, length_control="band", length_band=0.3)
    assert picks(banded) == {"t": (1, 3, 20, 19), "w": (0, 2, 10, 13), "z": (0, 2, 10, 11)}
    assert {r["prompt_id"]: r["n_candidates"] for r in banded.to_pylist()} == {"t": 2, "w": 3, "z": 3}


def test_band_zero_keeps_only_the_best_length(tmp_path):
    cands, scores = write(tmp_path, *spec_rows(BAND))
    kept = pairs.length_controlled_scores(cands, scores, "band", 0)
    assert [r[:2] for r in rewards(kept)] == [("t", 1), ("w", 0), ("w", 5), ("z", 0), ("z", 1)]
    draws = {r["prompt_id"]: r["outcome"] for r in pairs.draw_pairs(
        cands, scores, strategies=("west_of_n",), length_control="band", length_band=0.0).to_pylist()}
    assert draws == {"t": "fewer_than_2_valid", "w": "fewer_than_2_valid", "z": "pair"}
    banded, _ = pairs.select_pairs(cands, scores, length_control="band", length_band=0.0)
    assert picks(banded) == {"z": (0, 1, 10, 10)}


def test_negative_band_is_an_error(con, tmp_path):
    cands, scores = write(tmp_path, *spec_rows(BAND))
    with pytest.raises(ValueError, match="length_band must be a number >= 0"):
        pairs.select_pairs(cands, scores, length_control="band", length_band=-0.1)
    catalog.create_view(con, "candidates", cands, temporary=True)
    catalog.create_view(con, "candidate_scores", scores, temporary=True)
    pairs.register_candidate_pool(con)
    with pytest.raises(duckdb.Error, match="band must be >= 0, got -0.1"):
        catalog.run_sql_file(con, "length_control/length_band_scores", {"band": -0.1})


def test_band_report_agrees_with_the_draws(tmp_path):
    cands, scores = write(tmp_path, *spec_rows(BAND))
    options = {"length_control": "band", "length_band": 0.3}
    draws = pairs.draw_pairs(cands, scores, **options)
    report = {r["reason"]: r["count"] for r in pairs.selection_report(cands, scores, draws, "west_of_n", **options)
              .to_pylist() if r["selected"]}
    # the candidates are counted over the teacher's own scores, band or not: w 5 (NaN) and w 6 (+inf)
    # are not finite, the other 13 valid (the band's left-out ones are not "unscored")
    assert (report["unscored_candidates"], report["nonfinite_reward"], report["valid_candidates"]) == (0, 2, 13)
    assert report["pairs"] == 3 and report["prompts"] == 3
    assert report["fewer_than_2_in_band"] == 0 and "fewer_than_2_valid" not in report
    # band 0: only z has two valid candidates of its best's length; w and t have none beside the best
    options["length_band"] = 0.0
    draws = pairs.draw_pairs(cands, scores, **options)
    report = {r["reason"]: r["count"] for r in pairs.selection_report(cands, scores, draws, "west_of_n", **options)
              .to_pylist() if r["selected"]}
    assert (report["fewer_than_2_in_band"], report["pairs"], report["valid_candidates"]) == (2, 1, 13)
    plain = pairs.selection_report(cands, scores, pairs.draw_pairs(cands, scores), "west_of_n").to_pylist()
    assert {r["reason"]: r["count"] for r in plain if r["selected"]}["fewer_than_2_valid"] == 0


# --- finished answers only ------------------------------------------------------------------------

# prompt -> [(candidate_idx, num_tokens, reward, finish_reason)]: a cut answer (64 tokens, "length")
# is the teacher's best in c and its worst in d; e has one finished answer, so no pair under the control
FINISHED = {"c": [(0, 64, 2.0, "length"), (1, 20, 1.0, "stop"), (2, 30, -1.0, "stop"), (3, 10, 0.5, "stop")],
            "d": [(0, 15, 0.5, "stop"), (1, 64, -3.0, "length"), (2, 25, 1.5, "stop")],
            "e": [(0, 64, 1.0, "length"), (1, 12, 0.0, "stop")]}


def write_finished(tmp_path: Path) -> tuple[Path, Path]:
    cand_rows, score_rows = spec_rows({p: [(i, n, r) for i, n, r, _ in cs] for p, cs in FINISHED.items()})
    cands, scores = tmp_path / "candidates", tmp_path / "candidate_scores"
    reasons = [f for cs in FINISHED.values() for *_, f in cs]
    table = candidates_table(cand_rows)
    table = table.set_column(table.schema.get_field_index("finish_reason"), "finish_reason",
                             pa.array(reasons, pa.string()))
    catalog.write_parquet(table, cands)
    catalog.write_parquet(scores_table(score_rows), scores)
    return cands, scores


def test_finished_drops_the_cut_answers_before_the_strategy_picks(tmp_path):
    cands, scores = write_finished(tmp_path)
    kept = pairs.length_controlled_scores(cands, scores, "finished")
    assert kept.column_names == schemas.CANDIDATE_SCORES.names
    assert rewards(kept) == [("c", 1, 1.0), ("c", 2, -1.0), ("c", 3, 0.5), ("d", 0, 0.5), ("d", 2, 1.5),
                             ("e", 1, 0.0)]
    plain, _ = pairs.select_pairs(cands, scores)
    assert picks(plain) == {"c": (0, 2, 64, 30), "d": (2, 1, 25, 64), "e": (0, 1, 64, 12)}
    finished, _ = pairs.select_pairs(cands, scores, length_control="finished")
    assert picks(finished) == {"c": (1, 2, 20, 30), "d": (2, 0, 25, 15)}
    options = {"length_control": "finished"}
    report = {r["reason"]: r["count"] for r in pairs.selection_report(
        cands, scores, pairs.draw_pairs(cands, scores, **options), "west_of_n", **options).to_pylist()
        if r["selected"]}
    assert (report["fewer_than_2_finished"], report["pairs"], report["valid_candidates"]) == (1, 2, 9)


# --- balanced pairs -------------------------------------------------------------------------------


def pair_rows(spec: dict[str, tuple]) -> pa.Table:
    """spec: prompt_id -> (confidence, chosen_num_tokens, rejected_num_tokens)."""
    rows = []
    for prompt_id, (confidence, chosen_tokens, rejected_tokens) in spec.items():
        margin = math.log(confidence / (1 - confidence))
        rows.append({"prompt_id": prompt_id, "prompt": f"prompt {prompt_id}", "chosen": "good", "rejected": "bad",
                     "chosen_idx": 0, "rejected_idx": 1, "chosen_reward": margin, "rejected_reward": 0.0,
                     "margin": margin, "confidence": confidence, "chosen_logprob_sum": -1.0,
                     "rejected_logprob_sum": -1.0, "chosen_logprob_mean": -0.1, "rejected_logprob_mean": -0.1,
                     "chosen_num_tokens": chosen_tokens, "rejected_num_tokens": rejected_tokens,
                     "n_candidates": 4, "policy": "pi", "reward_model": "rm"})
    return pa.Table.from_pylist(rows, schema=schemas.PAIRS)


# 4 chosen-longer (l3 and l4 tie), 2 chosen-shorter, 2 equal; reversed so order comes from the SQL
BALANCE = dict(reversed({"l1": (0.9, 20, 10), "l2": (0.6, 30, 10), "l3": (0.8, 12, 11), "l4": (0.8, 15, 5),
                         "s1": (0.7, 5, 10), "s2": (0.95, 8, 9), "e1": (0.55, 7, 7), "e2": (0.99, 3, 3)}.items()))


def test_balance_keeps_equal_numbers_the_most_confident_and_every_equal_pair(tmp_path):
    balanced = pairs.balance_pairs(pair_rows(BALANCE))
    assert balanced.schema == schemas.PAIRS
    # k = min(4, 2) = 2: l1 (0.9) and l3 (0.8, before l4 by prompt_id); both shorter; both equal
    assert balanced.column("prompt_id").to_pylist() == ["e1", "e2", "l1", "l3", "s1", "s2"]
    stats = pairs.pair_stats(balanced)
    assert stats["chosen_longer_share"] == stats["chosen_shorter_share"] == pytest.approx(2 / 6)
    catalog.write_parquet(pair_rows(BALANCE), tmp_path / "pairs")  # a folder works too
    assert pairs.balance_pairs(tmp_path / "pairs").equals(balanced)


def test_balance_with_one_direction_keeps_only_the_equal_pairs():
    one_way = {p: v for p, v in BALANCE.items() if not p.startswith("s")}
    assert pairs.balance_pairs(pair_rows(one_way)).column("prompt_id").to_pylist() == ["e1", "e2"]


def test_balance_step_ends_the_funnel_with_what_the_balance_kept():
    funnel = pairs.pair_funnel(pair_rows(BALANCE), 0.0, 0.0)
    balanced = pairs.balance_pairs(pair_rows(BALANCE))
    steps = pairs.with_balance_step(funnel, balanced).to_pylist()
    assert [r["step"] for r in steps] == ["selected", "confidence", "likelihood", "margin", "max_tokens",
                                          "length_balance"]
    assert steps[:5] == funnel.to_pylist()
    last = steps[-1]
    assert (last["step_order"], last["pairs_in"], last["pairs_kept"], last["kept_share"]) == (6, 8, 6, 0.75)
    assert (last["strategy"], last["pair_seed"], last["threshold"]) == ("west_of_n", None, None)
    assert last["chosen_longer_share"] == last["chosen_shorter_share"] == pytest.approx(2 / 6)
    assert last["mean_length_gap"] == pytest.approx((10 + 1 - 5 - 1) / 6)  # l1, l3, s1, s2; e1, e2 equal
    assert last["mean_confidence"] == pytest.approx((0.55 + 0.99 + 0.9 + 0.8 + 0.7 + 0.95) / 6)
    # nothing left: counts, no length statistics (as sql/pair_funnel.sql writes an empty step)
    one_way = pair_rows({p: v for p, v in BALANCE.items() if p.startswith("l")})
    empty = pairs.with_balance_step(pairs.pair_funnel(one_way, 0.0, 0.0), pairs.balance_pairs(one_way))
    last = empty.to_pylist()[-1]
    assert (last["pairs_in"], last["pairs_kept"], last["kept_share"], last["chosen_longer_share"]) == (4, 0, 0.0, None)
    with pytest.raises(ValueError, match="no steps"):
        pairs.with_balance_step(schemas.PAIR_FUNNEL.empty_table(), balanced)


def test_balance_of_no_pairs_is_empty(tmp_path):
    empty = pairs.balance_pairs(schemas.PAIRS.empty_table())
    assert empty.num_rows == 0 and empty.schema == schemas.PAIRS
    with pytest.raises(FileNotFoundError, match="no \\*.parquet"):
        pairs.balance_pairs(tmp_path / "nothing")


# --- the Python API -------------------------------------------------------------------------------


def test_defaults_reproduce_the_selection_without_length_control(tmp_path):
    cands, scores = write(tmp_path, *crafted_rows())
    default, n = pairs.select_pairs(cands, scores)
    none, n_none = pairs.select_pairs(cands, scores, length_control="none", length_band=0.5)
    assert default.equals(none) and n == n_none == 13
    assert {r["prompt_id"]: (r["chosen_idx"], r["rejected_idx"]) for r in default.to_pylist()} == {
        p: e[:2] for p, e in EXPECTED_PAIRS.items()}
    assert pairs.draw_pairs(cands, scores).equals(pairs.draw_pairs(cands, scores, length_control="none"))
    draws = pairs.draw_pairs(cands, scores)
    assert pairs.selection_report(cands, scores, draws, "west_of_n").equals(
        pairs.selection_report(cands, scores, draws, "west_of_n", length_control="none"))


def test_pairwise_teacher_refuses_length_control(tmp_path):
    with pytest.raises(ValueError, match="length_control 'residual' needs a reward per candidate"):
        pairs.select_pairs(tmp_path, tmp_path, pairwise=True, length_control="residual")
    with pytest.raises(ValueError, match="length_control 'band'"):
        pairs.selection_report(tmp_path, tmp_path, None, "west_of_n", pairwise=True, length_control="band")


@pytest.mark.parametrize("control, band, message", [("length", 0.3, "length_control must be one of"),
                                                    ("none", -1, "length_band must be"),
                                                    ("band", NAN, "length_band must be"),
                                                    ("band", True, "length_band must be"),
                                                    ("band", "0.3", "length_band must be")])
def test_bad_length_settings_name_the_setting(tmp_path, control, band, message):
    with pytest.raises(ValueError, match=message):
        pairs.select_pairs(tmp_path, tmp_path, length_control=control, length_band=band)


def test_settings_defaults():
    settings = WofnSettings.from_profile("tiny")
    # the default is the measured winner of experiments/hh_length.yaml (docs/results_length.md)
    assert (settings.length_control, settings.length_band, settings.length_balance) == ("band", 0.3, True)
    assert WofnSettings.from_profile("default").length_control == "band"
    assert WofnSettings.from_profile("default").length_balance is True


# --- the pair assets ------------------------------------------------------------------------------


FLOAT_COLUMNS = ["chosen_reward", "rejected_reward", "margin", "confidence"]


def test_pair_assets_with_residual_control_and_balance(tmp_path):
    cand_rows, score_rows = crafted_rows()
    more_cands, more_scores = spec_rows(PER_PROMPT)
    cands, scores = write(tmp_path / "tables", cand_rows + more_cands, score_rows + more_scores)
    teacher = tmp_path / "models" / "base_reward_model"
    teacher.mkdir(parents=True)
    (teacher / "config.json").write_text("{}")
    (teacher / "manifest.json").write_text(json.dumps({"kind": "reward_model"}))

    result = materialize(
        list(defs.assets), selection=select("west_of_n_pairs", "filtered_pairs"),
        resources=wofn_resources(home=str(tmp_path), profile="tiny", length_control="residual",
                                 length_balance=True, confidence_quantile=0.0, logprob_quantile=0.0))
    assert result.success
    selected = result.asset_materializations_for_node("west_of_n_pairs")[0].metadata
    assert selected["length_control"].value == "residual"
    expected, _ = pairs.select_pairs(cands, scores, length_control="residual")
    # residual fits sum their points in DuckDB's order: equal to ~1e-12, not always to the last bit
    written = pq.read_table(tmp_path / "tables" / "west_of_n_pairs")
    assert written.drop(FLOAT_COLUMNS).equals(expected.drop(FLOAT_COLUMNS))
    for column in FLOAT_COLUMNS:
        assert written.column(column).to_pylist() == pytest.approx(expected.column(column).to_pylist(), rel=1e-9)
    # the residual pairs: c's chosen is longer; p01_normal's and p10_dup_rows' shorter; the rest equal
    unequal = {p: (c, r) for p, (_, _, c, r) in picks(expected).items() if c != r}
    assert unequal == {"c": (40, 30), "p01_normal": (5, 8), "p10_dup_rows": (2, 3)}
    assert expected.num_rows == 11

    kept = pq.read_table(tmp_path / "tables" / "filtered_pairs")
    # the filters keep every pair at q = 0; balancing drops the less confident chosen-shorter pair
    confidence = {r["prompt_id"]: r["confidence"] for r in expected.to_pylist()}
    assert confidence["p10_dup_rows"] < confidence["p01_normal"]
    assert kept.column("prompt_id").to_pylist() == [p for p in expected.column("prompt_id").to_pylist()
                                                    if p != "p10_dup_rows"]
    stats = pairs.pair_stats(kept)
    assert stats["chosen_longer_share"] == stats["chosen_shorter_share"] == pytest.approx(1 / 10)
    meta = result.asset_materializations_for_node("filtered_pairs")[0].metadata
    assert meta["length_balance"].value is True
    assert (meta["pairs_before_balance"].value, meta["pairs_after_balance"].value) == (11, 10)
    assert meta["chosen_longer_share_before_balance"].value == pytest.approx(1 / 11)
    assert meta["chosen_longer_share"].value == pytest.approx(1 / 10)
    assert meta["funnel"].value["length_balance"] == 10
    funnel = pq.read_table(tmp_path / "tables" / "pair_funnel").sort_by("step_order").to_pylist()
    assert [(r["step"], r["pairs_in"], r["pairs_kept"]) for r in funnel[-2:]] == [("max_tokens", 11, 11),
                                                                                 ("length_balance", 11, 10)]
    assert funnel[-1]["chosen_longer_share"] == pytest.approx(1 / 10)


def test_pair_assets_refuse_length_control_with_a_pairwise_teacher(tmp_path):
    write(tmp_path / "tables", *crafted_rows())
    teacher = tmp_path / "models" / "base_reward_model"
    teacher.mkdir(parents=True)
    (teacher / "config.json").write_text("{}")
    (teacher / "manifest.json").write_text(json.dumps({"kind": pairwise.KIND}))
    result = materialize(list(defs.assets), selection=select("west_of_n_pairs"),
                         resources=wofn_resources(home=str(tmp_path), profile="tiny", length_control="band"),
                         raise_on_error=False)
    assert not result.success
    error = result.get_step_failure_events()[0].event_specific_data.error
    assert "length_control 'band'" in error.message + (error.cause.message if error.cause else "")
