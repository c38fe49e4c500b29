"""Crafted candidate / score / pair tables for the SQL tests, with every selection edge case."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pyarrow as pa

from wofn import catalog, pairs, schemas
from wofn.paths import WofnHome


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --- builders -----------------------------------------------------------------------------------


def prompt_text(prompt_id: str) -> str:
    """Each prompt's text; p13_text_twin deliberately has the same text as p01_normal."""
    twin = {"p13_text_twin": "p01_normal"}.get(prompt_id, prompt_id)
    return f"\n\nHuman: question {twin}\n\nAssistant:"



def candidates_table(rows: list[tuple]) -> pa.Table:
    """rows: (prompt_id, candidate_idx, response, num_tokens, logprob_sum)."""
    out = {f.name: [] for f in schemas.CANDIDATES}
    for prompt_id, idx, response, num_tokens, logprob_sum in rows:
        out["prompt_id"].append(prompt_id)
        out["candidate_idx"].append(idx)
        out["prompt"].append(prompt_text(prompt_id))
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
        out["logprob_mode"].append("raw")
    return pa.Table.from_pydict(out, schema=schemas.CANDIDATES)


# Scores may carry NULL rewards in these tests (the SQL must drop them), so the reward field is
# made nullable here; everything else is schemas.CANDIDATE_SCORES.
SCORES_WITH_NULLS = schemas.CANDIDATE_SCORES.set(
    schemas.CANDIDATE_SCORES.get_field_index("reward"), pa.field("reward", pa.float64())
)


def scores_table(rows: list[tuple]) -> pa.Table:
    """rows: (prompt_id, candidate_idx, reward[, member_rewards])."""
    return pa.Table.from_pydict(
        {
            "prompt_id": [r[0] for r in rows],
            "candidate_idx": [r[1] for r in rows],
            "reward": [r[2] for r in rows],
            "reward_model": [f"rm@{r[1]}" for r in rows],
            "reward_model_revision": ["def456"] * len(rows),
            "member_rewards": [r[3] if len(r) > 3 else None for r in rows],
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
    # idx 0 has two identical candidate rows and two identical score rows: they count once.
    "p10_dup_rows": [(0, "a", 2, -1.0, (1.0, 1.0)), (0, "a", 2, -1.0, "missing"), (1, "b", 3, -2.0, 0.0)],
    # idx 0's two candidate rows disagree on the text: idx 0 is dropped (it would be the best).
    "p11_conflicting_text": [
        (0, "a", 2, -1.0, 3.0),
        (0, "a2", 2, -1.0, "missing"),
        (1, "b", 2, -1.0, 1.0),
        (2, "c", 2, -1.0, 0.0),
    ],
    # idx 0's two score rows disagree on the reward: idx 0 is dropped.
    "p12_conflicting_reward": [(0, "a", 2, -1.0, (3.0, -3.0)), (1, "b", 2, -1.0, 1.0), (2, "c", 2, -1.0, 0.0)],
    # the same prompt text as p01_normal under another prompt_id: a prompt of its own.
    "p13_text_twin": [(0, "x", 2, -1.0, 1.0), (1, "y", 2, -1.0, 0.0)],
}

# prompt_id -> (chosen_idx, rejected_idx, chosen_reward, rejected_reward, n_candidates)
EXPECTED_PAIRS = {
    "p01_normal": (1, 2, 2.0, -1.0, 4),
    "p02_tie_max": (1, 3, 3.0, 0.0, 4),
    "p03_tie_min": (1, 2, 1.5, -2.0, 4),
    "p06_nan": (0, 2, 1.0, -0.5, 2),
    "p07_null": (2, 1, 0.4, 0.1, 2),
    "p10_dup_rows": (0, 1, 1.0, 0.0, 2),
    "p11_conflicting_text": (1, 2, 1.0, 0.0, 2),
    "p12_conflicting_reward": (1, 2, 1.0, 0.0, 2),
    "p13_text_twin": (0, 1, 1.0, 0.0, 2),
}
# prompt_id -> outcome of west_of_n for the prompts without a pair
EXPECTED_NO_PAIR = {
    "p04_single": "fewer_than_2_valid",
    "p05_all_equal": "all_rewards_equal",
    "p08_one_finite": "fewer_than_2_valid",
    "p09_same_text": "identical_texts",
}

# score rows of no candidate: ignored by selection, counted by the selection report
ORPHAN_SCORES = [("p01_normal", 9, 7.0), ("p99_no_candidates", 0, 1.0)]


def crafted_rows() -> tuple[list[tuple], list[tuple]]:
    """(candidate rows, score rows) of PROMPTS, in shuffled order so nothing depends on input order."""
    cand_rows, score_rows = [], []
    for prompt_id in sorted(PROMPTS, reverse=True):
        for idx, response, num_tokens, logprob_sum, reward in reversed(PROMPTS[prompt_id]):
            cand_rows.append((prompt_id, idx, response, num_tokens, logprob_sum))
            for value in reward if isinstance(reward, tuple) else () if reward == "missing" else (reward,):
                score_rows.append((prompt_id, idx, value))
    return cand_rows, score_rows + ORPHAN_SCORES


# --- an independent reference of the documented rules -------------------------------------------


def _same(values: list) -> bool:
    """Copies agree: all NULL, or none NULL and all equal (NaN equal to NaN, as in DuckDB)."""
    if all(v is None for v in values):
        return True
    if any(v is None for v in values):
        return False
    keys = {"nan" if isinstance(v, float) and math.isnan(v) else v for v in values}
    return len(keys) == 1


def reference(cand_rows: list[tuple], score_rows: list[tuple], strategy: str, seed: int) -> dict[str, tuple]:
    """prompt_id -> (outcome, chosen_idx, rejected_idx, n_candidates), from the header's rules."""
    cands: dict[tuple, list[tuple]] = {}
    for row in cand_rows:
        cands.setdefault((row[0], row[1]), []).append(row)
    scores: dict[tuple, list[float | None]] = {}
    for prompt_id, idx, reward in score_rows:
        scores.setdefault((prompt_id, idx), []).append(reward)
    valid: dict[str, list[tuple]] = {}
    for key, rows in cands.items():
        valid.setdefault(key[0], [])
        if len({r[2] for r in rows}) != 1 or key not in scores or not _same(scores[key]):
            continue
        reward = scores[key][0]
        if reward is None or not math.isfinite(reward):
            continue
        valid[key[0]].append((key[1], rows[0][2], reward))  # (idx, response, reward)

    def draw_key(prompt_id: str, idx: int) -> tuple:
        return hashlib.md5(f"{prompt_id}:{idx}:{seed}".encode()).hexdigest(), idx

    out = {}
    for prompt_id, vs in valid.items():
        n = len(vs)
        if n < 2:
            out[prompt_id] = ("fewer_than_2_valid", None, None, n)
            continue
        best = min(vs, key=lambda v: (-v[2], v[0]))
        worst = min(vs, key=lambda v: (v[2], -v[0]))
        by_draw = sorted(vs, key=lambda v: draw_key(prompt_id, v[0]))
        if strategy == "west_of_n":
            first, second = best, worst
        elif strategy == "random_pair":
            first, second = by_draw[0], by_draw[1]
        else:
            first = best if strategy == "best_vs_random" else worst
            second = next(v for v in by_draw if v[0] != first[0])
        chosen, rejected = (first, second) if first[2] >= second[2] else (second, first)
        if max(v[2] for v in vs) == min(v[2] for v in vs):
            outcome = "all_rewards_equal"
        elif chosen[2] == rejected[2]:
            outcome = "tied_rewards"
        elif chosen[1] == rejected[1]:
            outcome = "identical_texts"
        else:
            outcome = "pair"
        out[prompt_id] = (outcome, chosen[0], rejected[0], n)
    return out


# --- a whole crafted run home -----------------------------------------------------------------

FILTERS = {"confidence_quantile": 0.5, "logprob_quantile": 0.0}
HUMAN_PAIRS = [("h1", "short", "a much longer answer"), ("h2", "a longer chosen answer", "no"),
               ("h3", "same", "same")]


def publish(home: WofnHome, name: str, table: pa.Table, folder: Path | None = None) -> Path:
    folder = folder or home.table_dir(name)
    catalog.write_parquet(table, folder)
    if folder == home.table_dir(name):
        catalog.refresh_view(home.catalog_path, name, folder)
    return folder


def build_home(root: Path, round_2: bool = True) -> WofnHome:
    """A run's tables from the crafted edge cases, written the way the pair assets write them.

    Round 2 (when asked) re-scores the candidates with a teacher that reverses every reward, so
    its west_of_n pairs are round 1's flipped.
    """
    home = WofnHome(root)
    cand_rows, score_rows = crafted_rows()
    cands = publish(home, "candidates", candidates_table(cand_rows))
    scores = publish(home, "candidate_scores", scores_table(score_rows))
    publish(home, "human_preferences", pa.Table.from_pylist(
        [{"pair_id": i, "prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": c, "rejected": r, "source": "test"}
         for i, c, r in HUMAN_PAIRS], schema=schemas.PREFERENCES))
    draws = pairs.draw_pairs(cands, scores, seed=0)
    publish(home, "pair_draws", draws)
    publish(home, "pair_selection_report", pairs.selection_report(cands, scores, draws, "west_of_n"))
    selected = publish(home, "west_of_n_pairs", pairs.pairs_from_draws(draws, "west_of_n"))
    kept, _ = pairs.filter_pairs(selected, **FILTERS)
    publish(home, "filtered_pairs", kept)
    publish(home, "pair_funnel", pairs.pair_funnel(selected, **FILTERS))
    if round_2:
        rdir = home.round_dir(2)
        flipped = [(p, i, None if r is None else -r) for p, i, r in score_rows]
        scores_2 = publish(home, "candidate_scores", scores_table(flipped), rdir / "candidate_scores")
        selected_2, _ = pairs.select_pairs(cands, scores_2)
        publish(home, "west_of_n_pairs", selected_2, rdir / "west_of_n_pairs")
        kept_2, _ = pairs.filter_pairs(rdir / "west_of_n_pairs", **FILTERS)
        publish(home, "filtered_pairs", kept_2, rdir / "filtered_pairs")
    return home
