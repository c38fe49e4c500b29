"""The pairwise teacher: its input format, symmetrized comparisons, training, the Beam job's
pairwise mode, sql/label_tournaments.sql and sql/selection_report_pairwise.sql."""

from __future__ import annotations

import json
import math
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_toy_pairs

from beam_jobs import sample_candidates, score_candidates
from wofn import catalog, evaluation, models, pairwise, rm_format, schemas, tournament, training

MAX_LENGTH = 64


@pytest.fixture(scope="module")
def pairwise_rm(tmp_path_factory):
    """A tiny-bert pairwise teacher trained on the toy pairs: (model folder, training metrics)."""
    out = tmp_path_factory.mktemp("pairwise") / "teacher"
    # lr 3e-3, not the pointwise test's 1e-3: both orders of a pair are in every batch, so only
    # position-aware features get a gradient, and from random tiny-bert weights the loss sits at
    # ln 2 for ~20 epochs at 1e-3 (margins ~1e-4, "accurate" by chance); at 3e-3 it leaves the
    # plateau after ~15 steps.
    config = training.TrainConfig(epochs=8, batch_size=8, learning_rate=3e-3, max_length=MAX_LENGTH,
                                  log_every=1, seed=0)
    metrics = training.train_reward_model(models.TINY_BERT, make_toy_pairs(48, 0), config, out,
                                          objective=pairwise.PAIRWISE)
    return out, metrics


# --- encode_pair --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [models.TINY_BERT, models.TINY_LLAMA])
def test_encode_pair_untruncated_is_the_template(name):
    tok = models.load_tokenizer(models.resolve(name))
    prompt, a, b = "\n\nHuman: Is it going to rain?\n\nAssistant:", " Probably, take a coat. ", "No idea."
    text = rm_format.pair_text(prompt, a, b)
    assert text == prompt + "\n\n[Response A]: Probably, take a coat.\n\n[Response B]: No idea."
    ids = rm_format.encode_pair(tok, prompt, a, b, 256)
    assert ids == tok(text)["input_ids"]  # pieces tokenized alone give the whole text's tokens here


def _squeeze(text: str) -> str:
    """Lower case, no whitespace: decoders differ in the spaces they put back."""
    return re.sub(r"\s+", "", text.lower())


@pytest.mark.parametrize("name", [models.TINY_BERT, models.TINY_LLAMA])
def test_encode_pair_truncation_keeps_both_response_ends(name):
    tok = models.load_tokenizer(models.resolve(name))
    full = tok("x")["input_ids"]
    bare = tok("x", add_special_tokens=False)["input_ids"]
    start = full.index(bare[0])
    prefix, suffix = full[:start], full[start + len(bare):]
    prompt = "\n\nHuman: tell me a long story about ducks and geese " * 30 + "PROMPTEND\n\nAssistant:"
    long_a = "alpha beta gamma " * 80 + "zebra"
    long_b = "one two three " * 80 + "quokka"
    for max_length in (24, 48, 64, 128, 256):
        for a, b in ((long_a, long_b), (long_a, "short"), ("short", long_b)):
            ids = rm_format.encode_pair(tok, prompt, a, b, max_length)
            assert len(ids) <= max_length
            assert ids[: len(prefix)] == prefix and ids[len(ids) - len(suffix):] == suffix
            text = _squeeze(tok.decode(ids, skip_special_tokens=True))
            assert text.count("[responsea]:") == 1 and text.count("[responseb]:") == 1
            a_part, b_part = text.split("[responsea]:")[1].split("[responseb]:")
            assert a_part.endswith(a.split()[-1]), (max_length, text)
            assert b_part.endswith(b.split()[-1]), (max_length, text)
            if max_length >= 128:
                assert text.split("[responsea]:")[0].endswith("promptend\n\nassistant:".replace("\n", ""))
            # swapping A and B keeps the same tokens of each response
            swapped = _squeeze(tok.decode(rm_format.encode_pair(tok, prompt, b, a, max_length),
                                          skip_special_tokens=True))
            s_a, s_b = swapped.split("[responsea]:")[1].split("[responseb]:")
            assert (s_a, s_b) == (b_part, a_part)
    with pytest.raises(ValueError, match="max_length"):
        rm_format.encode_pair(tok, prompt, long_a, long_b, 8)


# --- compare ------------------------------------------------------------------------------------


def test_compare_is_antisymmetric(tiny_rm):
    pairs = make_toy_pairs(12, 5)
    prompts = [p["prompt"] for p in pairs]
    chosen, rejected = [p["chosen"] for p in pairs], [p["rejected"] for p in pairs]
    forward = pairwise.compare(tiny_rm, prompts, chosen, rejected, MAX_LENGTH)
    backward = pairwise.compare(tiny_rm, prompts, rejected, chosen, MAX_LENGTH)
    assert forward == [-x for x in backward]
    assert all(math.isfinite(x) for x in forward) and len({round(x, 6) for x in forward}) > 1
    # a response against itself is an exact tie; small token budgets give the same logits
    assert pairwise.compare(tiny_rm, prompts[:2], chosen[:2], chosen[:2], MAX_LENGTH) == [0.0, 0.0]
    small = pairwise.compare(tiny_rm, prompts, chosen, rejected, MAX_LENGTH, token_budget=64)
    assert small == pytest.approx(forward, abs=1e-5)
    assert pairwise.pair_margins(tiny_rm, pairs, MAX_LENGTH) == forward
    with pytest.raises(ValueError):
        pairwise.compare(tiny_rm, prompts, chosen, rejected[:-1], MAX_LENGTH)


def test_objective_loss_and_margins():
    import torch

    outputs = torch.tensor([[2.0, -1.0], [-2.0, 3.0]])  # [slots, pairs]
    assert pairwise.PAIRWISE.margins(outputs).tolist() == [2.0, -2.0]
    expected = (-math.log(1 / (1 + math.exp(-2.0))) - math.log(1 / (1 + math.exp(1.0)))
                - math.log(1 / (1 + math.exp(-2.0))) - math.log(1 / (1 + math.exp(3.0)))) / 4
    assert pairwise.PAIRWISE.loss(outputs).item() == pytest.approx(expected, rel=1e-6)
    assert pairwise.PAIRWISE.kind == "pairwise_preference_model" and pairwise.PAIRWISE.slots == 2


# --- training -----------------------------------------------------------------------------------


def test_training_pairwise_separates_held_out_pairs(pairwise_rm):
    out, metrics = pairwise_rm
    losses = [r["loss"] for r in metrics["history"]]
    assert sum(losses[-5:]) / 5 < 0.5 < losses[0], losses  # really learned, not stuck at ln 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "pairwise_preference_model" and manifest["max_length"] == MAX_LENGTH
    assert pairwise.is_pairwise(str(out)) and not pairwise.is_pairwise(models.TINY_BERT)
    rm = models.load_reward_model(str(out))
    held_out = make_toy_pairs(40, 1)
    margins = pairwise.pair_margins(rm, held_out, MAX_LENGTH)
    assert sum(m > 0 for m in margins) >= 0.9 * len(held_out), margins
    assert sum(margins) / len(margins) > 0.5, margins  # confident, not a coin flip on tiny logits
    # wofn evaluate / evaluation.evaluate recognise the pairwise model and use the same margins
    result = evaluation.evaluate(str(out), held_out)
    assert result["accuracy"] == pytest.approx(sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins) / 40)
    assert result["mean_margin"] == pytest.approx(sum(margins) / 40, abs=1e-6)


# --- the Beam job in pairwise mode --------------------------------------------------------------


def _read_dir(path):
    files = sorted(path.glob("*.parquet"))
    assert files, f"no shards in {path}"
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def test_score_candidates_pairwise_job(tmp_path, prompts_file, pairwise_rm):
    n = 4
    cands = tmp_path / "candidates"
    sample_candidates.run(["--prompts", str(prompts_file), "--output", str(cands), "--policy", "tiny-llama",
                           "--n", str(n), "--max-new-tokens", "4"], save_main_session=False)
    candidates = _read_dir(cands)
    prompt_ids = sorted({c["prompt_id"] for c in candidates})
    teacher, _ = pairwise_rm
    assert score_candidates.teacher_kind(str(teacher)) == "pairwise"
    out = tmp_path / "tournaments"
    stats = score_candidates.run(["--candidates", str(cands), "--output", str(out), "--reward-model", str(teacher),
                                  "--prompts-per-batch", "2", "--num-shards", "2"], save_main_session=False)
    for f in out.glob("*.parquet"):
        assert pq.read_schema(f).remove_metadata().equals(schemas.TOURNAMENT_PAIRS, check_metadata=False)
    rows = _read_dir(out)
    assert sorted(r["prompt_id"] for r in rows) == prompt_ids  # one row per prompt
    bound = tournament.bracket_comparisons(n)  # 4 in the brackets, +1 final unless they already met
    for row in rows:
        assert row["n_candidates"] == n
        assert bound <= row["comparisons"] <= bound + 1
        assert row["chosen_idx"] != row["rejected_idx"]
        assert {row["chosen_idx"], row["rejected_idx"]} <= set(range(n))
        assert math.isfinite(row["logit"]) and row["confidence"] == pytest.approx(tournament.sigmoid(row["logit"]))
        assert row["reward_model"] == str(teacher) and row["reward_model_revision"].startswith("sha256:")
    assert stats["prompts_judged"] == len(prompt_ids)
    assert stats["comparisons"] == sum(r["comparisons"] for r in rows)
    assert stats["rows_written"] == len(rows)


# --- sql/label_tournaments.sql, sql/selection_report_pairwise.sql -------------------------------


def _candidates_table(rows: list[tuple]) -> pa.Table:
    """rows: (prompt_id, candidate_idx, response, num_tokens, logprob_sum)."""
    return pa.Table.from_pylist([
        {"prompt_id": p, "candidate_idx": i, "prompt": f"\n\nHuman: q {p}\n\nAssistant:", "response": r,
         "num_tokens": t, "logprob_sum": s, "logprob_mean": s / t, "finish_reason": "stop", "temperature": 1.0,
         "top_p": 1.0, "max_new_tokens": 16, "seed": 7, "policy": f"pi@{i}", "policy_revision": "abc"}
        for p, i, r, t, s in rows], schema=schemas.CANDIDATES)


def _tournaments_table(rows: list[tuple]) -> pa.Table:
    """rows: (prompt_id, chosen_idx, rejected_idx, logit, n_candidates)."""
    return pa.Table.from_pylist([
        {"prompt_id": p, "chosen_idx": c, "rejected_idx": r, "logit": x, "confidence": tournament.sigmoid(x),
         "comparisons": 3, "n_candidates": n, "reward_model": "teacher", "reward_model_revision": "rev"}
        for p, c, r, x, n in rows], schema=schemas.TOURNAMENT_PAIRS)


CANDIDATE_ROWS = [
    ("a_normal", 0, "good", 4, -2.0), ("a_normal", 1, "bad", 2, -3.0), ("a_normal", 2, "meh", 5, -5.0),
    ("b_negative", 0, "x", 1, -1.0), ("b_negative", 1, "y", 1, -1.0),
    ("c_same_text", 0, "same", 3, -1.5), ("c_same_text", 1, "same", 3, -1.5),
    ("d_zero", 0, "p", 2, -1.0), ("d_zero", 1, "q", 2, -1.0),
    ("e_reversed", 0, "first", 2, -4.0), ("e_reversed", 1, "second", 8, -2.0),
    ("f_untried", 0, "alone", 1, -1.0),  # no tournament row
    ("g_missing", 0, "here", 1, -1.0), ("g_missing", 0, "here", 1, -1.0),  # a duplicate row; idx 3 is missing
]
TOURNAMENT_ROWS = [
    ("e_reversed", 1, 0, 0.5, 2),
    ("d_zero", 0, 1, 0.0, 2),  # a tie: no pair
    ("c_same_text", 0, 1, 2.0, 2),  # identical responses: no pair
    ("b_negative", 0, 1, -1.0, 2),  # the direct comparison disagrees with the brackets: no pair
    ("a_normal", 2, 1, 3.0, 3),
    ("g_missing", 3, 0, 1.0, 2),  # chosen_idx 3 has no candidate row
    ("g_missing", 3, 0, 1.0, 2),  # a duplicate tournament row
    ("h_orphan", 0, 1, 1.0, 2),  # a tournament row of no candidate: ignored
]


@pytest.fixture
def pairwise_con(tmp_path):
    con = catalog.connect()
    table_dir = tmp_path / "tables" / "candidates"
    catalog.write_parquet(_candidates_table(list(reversed(CANDIDATE_ROWS))), table_dir)
    catalog.create_view(con, "candidates", table_dir, temporary=True)
    tournaments = _tournaments_table(TOURNAMENT_ROWS)
    con.register("tournament_pairs", tournaments)
    yield con
    con.close()


def test_label_tournaments_draws_every_prompt_with_its_outcome(pairwise_con):
    raw = catalog.run_sql_file(pairwise_con, "label_tournaments")
    assert raw.column_names == schemas.PAIR_DRAWS.names
    draws = catalog.run_sql_file(pairwise_con, "label_tournaments", schema=schemas.PAIR_DRAWS)
    assert {r["prompt_id"]: r["outcome"] for r in draws.to_pylist()} == {
        "a_normal": "pair", "b_negative": "teacher_prefers_rejected", "c_same_text": "identical_texts",
        "d_zero": "teacher_prefers_rejected", "e_reversed": "pair", "f_untried": "no_tournament_pair",
        "g_missing": "missing_candidate"}
    assert set(draws.column("outcome").to_pylist()) == set(schemas.PAIRWISE_OUTCOMES)
    assert set(draws.column("strategy").to_pylist()) == {"west_of_n"} and draws.column("pair_seed").null_count == 7
    by_prompt = {r["prompt_id"]: r for r in draws.to_pylist()}
    assert by_prompt["f_untried"]["n_candidates"] == 1 and by_prompt["f_untried"]["chosen"] is None
    assert by_prompt["b_negative"]["margin"] == -1.0  # the teacher's logit as it is: no pair


def test_label_tournaments_pairs_exact(pairwise_con):
    pairwise_con.register("pair_draws", catalog.run_sql_file(pairwise_con, "label_tournaments",
                                                             schema=schemas.PAIR_DRAWS))
    table = catalog.run_sql_file(pairwise_con, "west_of_n_pairs", {"strategy": "west_of_n"}, schema=schemas.PAIRS)
    assert table.schema.equals(schemas.PAIRS)
    assert table.to_pylist() == [
        {"prompt_id": "a_normal", "prompt": "\n\nHuman: q a_normal\n\nAssistant:", "chosen": "meh", "rejected": "bad",
         "chosen_idx": 2, "rejected_idx": 1, "chosen_reward": 1.5, "rejected_reward": -1.5, "margin": 3.0,
         "confidence": tournament.sigmoid(3.0), "chosen_logprob_sum": -5.0, "rejected_logprob_sum": -3.0,
         "chosen_logprob_mean": -1.0, "rejected_logprob_mean": -1.5, "chosen_num_tokens": 5,
         "rejected_num_tokens": 2, "n_candidates": 3, "policy": "pi@2", "reward_model": "teacher", "agreement": None},
        {"prompt_id": "e_reversed", "prompt": "\n\nHuman: q e_reversed\n\nAssistant:", "chosen": "second",
         "rejected": "first", "chosen_idx": 1, "rejected_idx": 0, "chosen_reward": 0.25, "rejected_reward": -0.25,
         "margin": 0.5, "confidence": tournament.sigmoid(0.5), "chosen_logprob_sum": -2.0,
         "rejected_logprob_sum": -4.0, "chosen_logprob_mean": -0.25, "rejected_logprob_mean": -2.0,
         "chosen_num_tokens": 8, "rejected_num_tokens": 2, "n_candidates": 2, "policy": "pi@1",
         "reward_model": "teacher", "agreement": None},  # one pairwise teacher: no members to agree
    ]


def test_selection_report_pairwise_counts_the_draws(pairwise_con):
    pairwise_con.register("pair_draws", catalog.run_sql_file(pairwise_con, "label_tournaments",
                                                             schema=schemas.PAIR_DRAWS))
    report = catalog.run_sql_file(pairwise_con, "selection_report_pairwise", schema=schemas.SELECTION_REPORT)
    assert [(r["step"], r["reason"], r["count"]) for r in report.to_pylist()] == [
        (1, "candidate_rows", 14), (2, "duplicate_candidate_rows", 1), (3, "duplicate_tournament_rows", 1),
        (4, "prompts", 7), (5, "no_tournament_pair", 1), (6, "teacher_prefers_rejected", 2),
        (7, "missing_candidate", 1), (8, "identical_texts", 1), (9, "pairs", 2)]
    assert {(r["strategy"], r["pair_seed"], r["selected"]) for r in report.to_pylist()} == {("west_of_n", None, True)}
