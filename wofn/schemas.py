"""The one place that defines every wofn table's Arrow schema.

Readers, writers, Beam jobs and SQL outputs are all checked against these. The SQL files in
`sql/` document the same columns at their top; `tests/sql/test_schemas.py` keeps the two in step.
"""

from __future__ import annotations

import pyarrow as pa

ADDED = b"wofn.added"  # field metadata key: the column came after the table's first release


def _added(field: pa.Field) -> pa.Field:
    """A nullable column added to a table after tables were written without it: readers of such
    tables (`conform`, `wofn.catalog.create_view`) give it nulls instead of refusing them."""
    assert field.nullable, field
    return field.with_metadata({ADDED: b"1"})


def is_added(field: pa.Field) -> bool:
    return bool(field.metadata and field.metadata.get(ADDED))


# D_L and held-out human pairs: one row per labelled comparison.
PREFERENCES = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),  # stable id (source id or content hash)
        pa.field("prompt", pa.string(), nullable=False),  # conversation up to "\n\nAssistant:"
        pa.field("chosen", pa.string(), nullable=False),  # preferred final assistant turn
        pa.field("rejected", pa.string(), nullable=False),  # dispreferred final assistant turn
        pa.field("source", pa.string()),  # dataset and split name
    ]
)

# D_U: unlabeled prompts, deduplicated by prompt_id.
PROMPTS = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),  # sha256 of the normalized text, 16 hex
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("source", pa.string()),
    ]
)

# N sampled responses per prompt, with their likelihood under the policy (temperature 1).
CANDIDATES = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("candidate_idx", pa.int32(), nullable=False),  # 0 .. N-1
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("response", pa.string(), nullable=False),  # generated text, stripped, no EOS
        pa.field("num_tokens", pa.int32(), nullable=False),  # generated tokens, EOS included
        pa.field("logprob_sum", pa.float64(), nullable=False),  # sum of log pi(token) in nats
        pa.field("logprob_mean", pa.float64(), nullable=False),  # logprob_sum / num_tokens
        pa.field("finish_reason", pa.string(), nullable=False),  # "stop" (EOS) or "length" (cap)
        pa.field("temperature", pa.float32(), nullable=False),
        pa.field("top_p", pa.float32(), nullable=False),
        pa.field("max_new_tokens", pa.int32(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),  # per (prompt, sample): reruns reproduce it
        pa.field("policy", pa.string(), nullable=False),  # model name as given
        pa.field("policy_revision", pa.string(), nullable=False),  # content hash of the weights
        # which distribution logprob_sum is under: "raw" (the model's own, temperature 1; the torch
        # engine, vLLM V1) or "processed" (after temperature and top-p; vLLM V0). Null: written before.
        _added(pa.field("logprob_mode", pa.string())),
    ]
)

# The reward model's score for every candidate.
CANDIDATE_SCORES = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("candidate_idx", pa.int32(), nullable=False),
        pa.field("reward", pa.float64(), nullable=False),  # scalar head output, unnormalized
        pa.field("reward_model", pa.string(), nullable=False),
        pa.field("reward_model_revision", pa.string(), nullable=False),
        # an ensemble teacher's (wofn.reward_ensemble) members' rewards, whose mean is `reward`;
        # null for a single reward model
        _added(pa.field("member_rewards", pa.list_(pa.float64()))),
    ]
)

# At most one synthetic pair per prompt, from the configured strategy (west_of_n_pairs; the
# pair_draws rows with outcome "pair"), and the subset kept by the filters (filtered_pairs).
# Same columns for both. The strategy and its seed are recorded in pair_selection_report and
# pair_funnel, not per row.
PAIRS = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("chosen", pa.string(), nullable=False),
        pa.field("rejected", pa.string(), nullable=False),
        pa.field("chosen_idx", pa.int32(), nullable=False),
        pa.field("rejected_idx", pa.int32(), nullable=False),
        pa.field("chosen_reward", pa.float64(), nullable=False),
        pa.field("rejected_reward", pa.float64(), nullable=False),
        pa.field("margin", pa.float64(), nullable=False),  # chosen_reward - rejected_reward > 0
        pa.field("confidence", pa.float64(), nullable=False),  # sigmoid(margin), in (0.5, 1]
        pa.field("chosen_logprob_sum", pa.float64(), nullable=False),
        pa.field("rejected_logprob_sum", pa.float64(), nullable=False),
        pa.field("chosen_logprob_mean", pa.float64(), nullable=False),
        pa.field("rejected_logprob_mean", pa.float64(), nullable=False),
        pa.field("chosen_num_tokens", pa.int32(), nullable=False),
        pa.field("rejected_num_tokens", pa.int32(), nullable=False),
        pa.field("n_candidates", pa.int32(), nullable=False),  # valid candidates of the prompt (pairwise: judged)
        pa.field("policy", pa.string(), nullable=False),
        pa.field("reward_model", pa.string(), nullable=False),
        # an ensemble teacher's share of members with chosen above rejected (a tie counts half), in
        # [0, 1]; null for a single reward model or a pairwise teacher
        _added(pa.field("agreement", pa.float64())),
    ]
)

# Every selected pair with the filters' thresholds and verdicts (sql/pair_filter_flags.sql): what
# sql/filter_pairs.sql keeps and sql/pair_funnel.sql counts. Held only in wofn.pairs' DuckDB.
PAIR_FILTER_FLAGS = pa.schema(
    [*PAIRS,
     pa.field("confidence_key", pa.float64()),  # what the confidence filter ranks by (confidence_measure)
     pa.field("min_confidence", pa.float64()),  # the confidence filter's threshold on confidence_key
     pa.field("min_likelihood", pa.float64()),  # the likelihood filter's threshold, nats
     pa.field("passes_confidence", pa.bool_()),
     pa.field("passes_likelihood", pa.bool_()),
     pa.field("passes_margin", pa.bool_()),
     pa.field("passes_max_tokens", pa.bool_())]
)

# Pair selection strategies (sql/strategies/<name>.sql): west_of_n is the method, the other three
# are the paper's ablation baselines. Only west_of_n works with a pairwise teacher.
STRATEGIES = ("west_of_n", "random_pair", "best_vs_random", "worst_vs_random")

# Why a prompt does or does not yield a pair (pair_draws.outcome), checked in this order.
OUTCOMES = ("fewer_than_2_valid", "all_rewards_equal", "tied_rewards", "identical_texts", "pair")
# The same under a pairwise teacher (sql/label_tournaments.sql).
PAIRWISE_OUTCOMES = ("no_tournament_pair", "teacher_prefers_rejected", "missing_candidate", "identical_texts", "pair")

# The steps of a strategy's draw (sql/candidate_pool.sql -> sql/prompt_summary.sql ->
# sql/strategies/<name>.sql -> sql/label_picks.sql), held only in wofn.pairs' in-memory DuckDB.
# One row per candidate (prompt_id, candidate_idx), its duplicate rows collapsed; is_valid = its
# copies agree, it has a score row, and its reward is not NULL and finite.
CANDIDATE_POOL = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("candidate_idx", pa.int32(), nullable=False),
        pa.field("prompt", pa.string()),
        pa.field("response", pa.string()),
        pa.field("num_tokens", pa.int32()),
        pa.field("logprob_sum", pa.float64()),
        pa.field("logprob_mean", pa.float64()),
        pa.field("policy", pa.string()),
        pa.field("reward", pa.float64()),  # null when unscored
        pa.field("reward_model", pa.string()),
        pa.field("is_valid", pa.bool_(), nullable=False),
        pa.field("member_rewards", pa.list_(pa.float64())),  # as in CANDIDATE_SCORES
        pa.field("finish_reason", pa.string()),  # as in CANDIDATES: "stop" (EOS) or "length" (cap)
    ]
)
# One row per prompt_id with candidate rows: its valid candidates' count and reward range.
PROMPT_SUMMARY = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("n_valid", pa.int64(), nullable=False),
        pa.field("min_reward", pa.float64()),  # null when n_valid = 0
        pa.field("max_reward", pa.float64()),
    ]
)
# A strategy's two picks per prompt with at least 2 valid candidates (pick 1 and pick 2).
PAIR_PICKS = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("candidate_idx", pa.int32(), nullable=False),
        pa.field("pick", pa.int32(), nullable=False),  # 1 or 2; on a reward tie pick 1 is chosen
    ]
)

# Every strategy's draw for every prompt that has candidate rows: the two candidates it picked,
# labelled by the teacher (chosen = the higher reward), and whether they make a pair. The pair
# columns are null when the prompt has fewer than 2 valid candidates. A pairwise teacher's draws
# (west_of_n only) are its tournaments' winners and losers (sql/label_tournaments.sql).
PAIR_DRAWS = pa.schema(
    [
        pa.field("strategy", pa.string(), nullable=False),  # one of STRATEGIES
        pa.field("pair_seed", pa.int64()),  # seed of the random draw; null for west_of_n (no randomness)
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("outcome", pa.string(), nullable=False),  # one of (PAIRWISE_)OUTCOMES; "pair" = kept
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("chosen", pa.string()),
        pa.field("rejected", pa.string()),
        pa.field("chosen_idx", pa.int32()),
        pa.field("rejected_idx", pa.int32()),
        pa.field("chosen_reward", pa.float64()),
        pa.field("rejected_reward", pa.float64()),
        pa.field("margin", pa.float64()),  # > 0 for pairs; >= 0 otherwise (a pairwise teacher's: any sign)
        pa.field("confidence", pa.float64()),  # sigmoid(margin)
        pa.field("chosen_logprob_sum", pa.float64()),
        pa.field("rejected_logprob_sum", pa.float64()),
        pa.field("chosen_logprob_mean", pa.float64()),
        pa.field("rejected_logprob_mean", pa.float64()),
        pa.field("chosen_num_tokens", pa.int32()),
        pa.field("rejected_num_tokens", pa.int32()),
        pa.field("n_candidates", pa.int32(), nullable=False),  # valid candidates of the prompt (pairwise: judged)
        pa.field("policy", pa.string()),
        pa.field("reward_model", pa.string()),
        _added(pa.field("agreement", pa.float64())),  # as in PAIRS
    ]
)

# How selection went, per strategy: one row per reason, zeros included, in a fixed order. Rows
# count table rows, candidates (distinct prompt_id, candidate_idx) or prompts (see `unit`).
SELECTION_REPORT = pa.schema(
    [
        pa.field("strategy", pa.string(), nullable=False),
        pa.field("pair_seed", pa.int64()),  # null for west_of_n
        pa.field("selected", pa.bool_(), nullable=False),  # this strategy's pairs are west_of_n_pairs
        pa.field("step", pa.int32(), nullable=False),  # order of the reasons
        pa.field("reason", pa.string(), nullable=False),
        pa.field("unit", pa.string(), nullable=False),  # "rows", "candidates" or "prompts"
        pa.field("count", pa.int64(), nullable=False),
    ]
)

# How many pairs each filter step kept (sql/pair_funnel.sql), then, when length_balance is on, what
# the length balance kept (wofn.pairs.with_balance_step). Steps are cumulative; every threshold is
# computed over all selected pairs. Lengths are policy tokens (EOS included).
PAIR_FUNNEL = pa.schema(
    [
        pa.field("strategy", pa.string(), nullable=False),  # of the selected pairs
        pa.field("pair_seed", pa.int64()),
        pa.field("step_order", pa.int32(), nullable=False),
        # selected, confidence, likelihood, margin, max_tokens[, length_balance]
        pa.field("step", pa.string(), nullable=False),
        pa.field("setting", pa.string(), nullable=False),  # the configured value, as text ("off" = no-op)
        pa.field("threshold", pa.float64()),  # the value applied (e.g. the confidence quantile); null = off
        pa.field("pairs_in", pa.int64(), nullable=False),
        pa.field("pairs_kept", pa.int64(), nullable=False),
        pa.field("kept_share", pa.float64()),  # pairs_kept / pairs_in; null when pairs_in = 0
        pa.field("chosen_longer_share", pa.float64()),  # of kept pairs: chosen has more tokens
        pa.field("chosen_shorter_share", pa.float64()),  # of kept pairs: chosen has fewer tokens
        pa.field("mean_length_gap", pa.float64()),  # of kept pairs: mean chosen - rejected tokens
        pa.field("mean_confidence", pa.float64()),  # of kept pairs
    ]
)

# The pairwise teacher's knockout tournaments (wofn.tournament): one row per prompt that has a
# pair (best != worst), with the teacher's own verdict on the two finalists.
TOURNAMENT_PAIRS = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("chosen_idx", pa.int32(), nullable=False),  # the best bracket's champion
        pa.field("rejected_idx", pa.int32(), nullable=False),  # the worst bracket's last one
        pa.field("logit", pa.float64(), nullable=False),  # symmetrized logit that chosen beats rejected
        pa.field("confidence", pa.float64(), nullable=False),  # sigmoid(logit); may be <= 0.5
        pa.field("comparisons", pa.int32(), nullable=False),  # teacher comparisons for this prompt
        pa.field("n_candidates", pa.int32(), nullable=False),  # candidates in the tournament
        pa.field("reward_model", pa.string(), nullable=False),  # the pairwise teacher
        pa.field("reward_model_revision", pa.string(), nullable=False),
    ]
)

# Every reward model of a run (base = round 0, then each round's student) on the evaluation pairs.
EVALUATIONS = pa.schema(
    [
        pa.field("round", pa.int32(), nullable=False),  # 0 = base, k = student of round k
        pa.field("role", pa.string(), nullable=False),  # "base" or "student"
        pa.field("model", pa.string(), nullable=False),  # model folder
        pa.field("revision", pa.string(), nullable=False),  # content hash of its weights
        pa.field("teacher", pa.string()),  # the teacher's folder (students only)
        pa.field("n", pa.int32(), nullable=False),  # evaluation pairs
        pa.field("accuracy", pa.float64(), nullable=False),  # ties count half
        pa.field("length_balanced_accuracy", pa.float64()),  # mean of chosen-longer and chosen-shorter accuracy
        pa.field("high_confidence_accuracy", pa.float64(), nullable=False),  # on the most confident share
        pa.field("mean_margin", pa.float64(), nullable=False),
        pa.field("calibration_error", pa.float64(), nullable=False),  # ECE of sigmoid(|margin|)
        pa.field("longer_wins_accuracy", pa.float64(), nullable=False),  # length baseline
        pa.field("shorter_wins_accuracy", pa.float64(), nullable=False),  # length baseline
        pa.field("by_source", pa.string(), nullable=False),  # JSON: {source: {n, accuracy, ...}}
        pa.field("eval_data_version", pa.string(), nullable=False),  # content hash of the evaluated pairs
        # which held-out set: "eval_pairs" (eval_preferences) or "human_holdout" (the human pairs no model
        # trained on, setting human_holdout); one row per model and set
        pa.field("eval_set", pa.string(), nullable=False),
        # this model minus the base on the same set and pairs, with a 95% paired bootstrap interval
        # (wofn.stats.paired_difference); null for the base
        pa.field("delta_accuracy", pa.float64()),
        pa.field("delta_accuracy_low", pa.float64()),
        pa.field("delta_accuracy_high", pa.float64()),
        pa.field("delta_length_balanced_accuracy", pa.float64()),
        pa.field("delta_length_balanced_accuracy_low", pa.float64()),
        pa.field("delta_length_balanced_accuracy_high", pa.float64()),
    ]
)

# `wofn export`: pairs in TRL's preference format, standard (text) or conversational (message
# lists), with wofn's measurements and provenance as extra columns. Files, not catalog tables.
_MESSAGES = pa.list_(pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())]))
_EXPORT_EXTRAS = [
    pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("margin", pa.float64(), nullable=False),  # teacher reward of chosen - rejected
    pa.field("confidence", pa.float64(), nullable=False),  # sigmoid(margin)
    pa.field("chosen_reward", pa.float64(), nullable=False),
    pa.field("rejected_reward", pa.float64(), nullable=False),
    pa.field("chosen_logprob_sum", pa.float64(), nullable=False),  # under the policy, nats
    pa.field("rejected_logprob_sum", pa.float64(), nullable=False),
    pa.field("chosen_logprob_mean", pa.float64(), nullable=False),
    pa.field("rejected_logprob_mean", pa.float64(), nullable=False),
    pa.field("chosen_num_tokens", pa.int32(), nullable=False),
    pa.field("rejected_num_tokens", pa.int32(), nullable=False),
    pa.field("policy", pa.string(), nullable=False),  # the policy that sampled both responses
    pa.field("teacher", pa.string(), nullable=False),  # the reward model that labelled the pair
    pa.field("round", pa.int32(), nullable=False),  # West-of-N round (1 = the main assets)
    pa.field("strategy", pa.string(), nullable=False),  # pair selection strategy
    pa.field("seed", pa.int64()),  # the strategy's pair_seed; null for west_of_n (no randomness)
    pa.field("agreement", pa.float64()),  # a teacher ensemble's share of members that agree; null otherwise
]
# prompt: the HH transcript ending in "\n\nAssistant:"; chosen / rejected: " " + the response,
# so that prompt + chosen is exactly the text wofn's reward models score (wofn.rm_format).
TRL_PAIRS = pa.schema([pa.field("prompt", pa.string(), nullable=False),
                       pa.field("chosen", pa.string(), nullable=False),
                       pa.field("rejected", pa.string(), nullable=False), *_EXPORT_EXTRAS])
# prompt: the conversation as [{"role": "user" | "assistant", "content"}]; chosen / rejected:
# one assistant message each (wofn.generation.prompt_to_messages, as the policy saw it).
TRL_CONVERSATIONAL_PAIRS = pa.schema([pa.field("prompt", _MESSAGES, nullable=False),
                                      pa.field("chosen", _MESSAGES, nullable=False),
                                      pa.field("rejected", _MESSAGES, nullable=False), *_EXPORT_EXTRAS])

# Dead letters: an input row, prompt or candidate that a stage could not use, with why. Every
# input prompt ends up either with its candidates or here. stage: "prompts" (reading the input
# file), "sampling" or "scoring"; reason: a short code (ERROR_REASONS); detail: the message.
ERRORS = pa.schema(
    [
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("prompt_id", pa.string()),  # null where the row never got one
        pa.field("candidate_idx", pa.int32()),  # scoring and per-candidate sampling errors
        pa.field("source", pa.string()),  # input file (stage "prompts")
        pa.field("row", pa.int64()),  # 0-based row in that file (JSONL: line number - 1)
        pa.field("detail", pa.string(), nullable=False),
    ]
)
ERROR_REASONS = (
    "empty_prompt", "nul_bytes", "prompt_too_long", "duplicate_prompt",  # stage prompts
    "tokenizer_error", "out_of_memory", "sampling_error", "non_finite_logprob",  # stage sampling
    "non_finite_reward", "scoring_error",  # stage scoring
)

# Table name -> schema. Each name is an asset key, except: tournament_pairs, which the
# candidate_scores asset writes instead of per-candidate scores when the teacher is pairwise;
# pair_draws and pair_selection_report, which the west_of_n_pairs asset writes beside its pairs;
# pair_funnel, which filtered_pairs writes; and the
# dead-letter tables prompt_errors, candidate_errors and score_errors, which prompts, candidates
# and candidate_scores write beside their tables.
TABLES: dict[str, pa.Schema] = {
    "human_preferences": PREFERENCES,
    "eval_preferences": PREFERENCES,
    "prompts": PROMPTS,
    "candidates": CANDIDATES,
    "candidate_scores": CANDIDATE_SCORES,
    "west_of_n_pairs": PAIRS,
    "filtered_pairs": PAIRS,
    "tournament_pairs": TOURNAMENT_PAIRS,
    "pair_draws": PAIR_DRAWS,
    "pair_selection_report": SELECTION_REPORT,
    "pair_funnel": PAIR_FUNNEL,
    "reward_model_evaluations": EVALUATIONS,
    "prompt_errors": ERRORS,
    "candidate_errors": ERRORS,
    "score_errors": ERRORS,
}


class SchemaError(ValueError):
    """A table does not have the columns or types wofn expects."""


def conform(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    """Select and cast `table` to `schema`, or raise SchemaError naming `where` and the column."""
    for field in schema:
        if field.name not in table.column_names and is_added(field):
            table = table.append_column(field.name, pa.nulls(table.num_rows, field.type))
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise SchemaError(
            f"{where}: missing column(s) {missing}; expected {schema.names}, got {table.column_names}"
        )
    columns = []
    for field in schema:
        column = table.column(field.name)
        try:
            column = column.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SchemaError(
                f"{where}: column {field.name!r} has type {column.type}, expected {field.type}: {exc}"
            ) from exc
        if not field.nullable and column.null_count:
            row = next(i for i, v in enumerate(column.is_null().to_pylist()) if v)
            raise SchemaError(f"{where}: column {field.name!r} is null at row {row}")
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)
