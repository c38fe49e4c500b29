"""Crafted candidate / score / pair tables for the SQL tests, with every selection edge case."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa

from wofn import catalog, schemas


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
