-- candidate_pool: one row per candidate (prompt_id, candidate_idx), with whether a strategy may
-- pick it. The first step of every strategy's draw (wofn.pairs.draw_pairs runs, in order:
-- candidate_pool, prompt_summary, strategies/<strategy>, label_picks).
--
-- Reads:
--   candidates        (wofn.schemas.CANDIDATES)
--                     prompt_id, candidate_idx, prompt, response, num_tokens,
--                     logprob_sum, logprob_mean, policy, finish_reason
--   candidate_scores  (wofn.schemas.CANDIDATE_SCORES)
--                     prompt_id, candidate_idx, reward, reward_model, member_rewards
--
-- Produces (wofn.schemas.CANDIDATE_POOL, in this order; one row per prompt_id and candidate_idx):
--   prompt_id, candidate_idx, prompt, response, num_tokens, logprob_sum, logprob_mean, policy,
--   reward, reward_model, is_valid, member_rewards, finish_reason
--
-- Parameters: none.
--
-- The candidate pool (the same for every strategy):
--   * Prompts are keyed by prompt_id, never by their text: two prompt_ids with the same text
--     are two prompts; prompt = the smallest prompt text among the prompt_id's rows.
--   * A candidate is one (prompt_id, candidate_idx). Duplicate rows of it (in candidates or in
--     candidate_scores) collapse to one when the copies agree (same response; same reward).
--     When they disagree the candidate is dropped: neither copy can be trusted.
--   * Valid = it has a score row, its copies agree, and its reward is not NULL and finite
--     (NULL, NaN, +inf and -inf rewards are dropped). n_candidates = valid candidates.
--   * member_rewards: an ensemble teacher's per-member rewards (NULL for a single model); copies
--     that agree on the reward are the same scoring, so the smallest list is taken.
--   * finish_reason: "stop" (ended with EOS) or "length" (cut at max_new_tokens); copies with the
--     same response that disagree on it count as cut ("length" is the smaller).
-- Score rows of no candidate are ignored. Not ordered.

with

candidate_rows as (

    -- one candidate = one (prompt_id, candidate_idx), however many rows it has; its copies
    -- agree when they have the same response (then min() of each column is that copy's value)
    select
        prompt_id,
        candidate_idx,
        min(prompt) as prompt,
        min(response) as response,
        min(num_tokens) as num_tokens,
        min(logprob_sum) as logprob_sum,
        min(logprob_mean) as logprob_mean,
        min(policy) as policy,
        min(finish_reason) as finish_reason,
        min(response) = max(response) as copies_agree
    from candidates
    group by prompt_id, candidate_idx

),

score_rows as (

    -- copies agree when all their rewards are NULL, or none is and they are equal
    select
        prompt_id,
        candidate_idx,
        min(reward) as reward,
        min(reward_model) as reward_model,
        min(member_rewards) as member_rewards,
        count(reward) = 0 or (count(reward) = count(*) and min(reward) = max(reward)) as copies_agree
    from candidate_scores
    group by prompt_id, candidate_idx

),

final as (

    -- valid = its copies agree, it has a score row, and its reward is not NULL and finite
    select
        candidate_rows.prompt_id,
        candidate_rows.candidate_idx,
        candidate_rows.prompt,
        candidate_rows.response,
        candidate_rows.num_tokens,
        candidate_rows.logprob_sum,
        candidate_rows.logprob_mean,
        candidate_rows.policy,
        score_rows.reward,
        score_rows.reward_model,
        coalesce(
            candidate_rows.copies_agree
                and score_rows.copies_agree
                and isfinite(score_rows.reward),
            false
        ) as is_valid,
        score_rows.member_rewards,
        candidate_rows.finish_reason
    from candidate_rows
    left join score_rows
        on candidate_rows.prompt_id = score_rows.prompt_id
        and candidate_rows.candidate_idx = score_rows.candidate_idx

)

select * from final
