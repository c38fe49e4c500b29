-- west_of_n_pairs: one West-of-N synthetic preference pair per prompt (Pace et al. 2024).
--
-- Reads:
--   candidates        (wofn.schemas.CANDIDATES)
--                     prompt_id, candidate_idx, prompt, response, num_tokens,
--                     logprob_sum, logprob_mean, policy
--   candidate_scores  (wofn.schemas.CANDIDATE_SCORES)
--                     prompt_id, candidate_idx, reward, reward_model
--
-- Produces (wofn.schemas.PAIRS, in this order):
--   prompt_id, prompt, chosen, rejected, chosen_idx, rejected_idx,
--   chosen_reward, rejected_reward, margin, confidence,
--   chosen_logprob_sum, rejected_logprob_sum, chosen_logprob_mean, rejected_logprob_mean,
--   chosen_num_tokens, rejected_num_tokens, n_candidates, policy, reward_model
--
-- Parameters: none.
--
-- Per prompt_id, over the valid candidates (a score row exists and reward is not null and
-- finite, so NULL, NaN and +-inf rewards are dropped):
--   chosen   = highest reward, ties broken by the lowest candidate_idx
--   rejected = lowest reward, ties broken by the highest candidate_idx
-- A pair is emitted only when the prompt has >= 2 valid candidates, chosen reward > rejected
-- reward strictly (so chosen_idx <> rejected_idx, and all-equal rewards give no pair), and the
-- two responses differ as text.
-- margin = chosen_reward - rejected_reward (> 0, reward-model units);
-- confidence = sigmoid(margin) = 1 / (1 + exp(-margin)), in (0.5, 1] (Bradley-Terry probability);
-- logprob_* and num_tokens are the policy's (temperature 1, nats) for each response;
-- n_candidates = number of valid candidates of the prompt; policy comes from the chosen
-- candidate's row, reward_model from the chosen candidate's score row.
-- Ordered by prompt_id.

with

source_candidates as (

    select
        prompt_id,
        candidate_idx,
        prompt,
        response,
        num_tokens,
        logprob_sum,
        logprob_mean,
        policy
    from candidates

),

source_scores as (

    select
        prompt_id,
        candidate_idx,
        reward,
        reward_model
    from candidate_scores

),

valid_candidates as (

    select
        source_candidates.*,
        source_scores.reward,
        source_scores.reward_model
    from source_candidates
    inner join source_scores
        on source_candidates.prompt_id = source_scores.prompt_id
        and source_candidates.candidate_idx = source_scores.candidate_idx
    where source_scores.reward is not null
        and isfinite(source_scores.reward)

),

ranked as (

    select
        *,
        row_number() over (
            partition by prompt_id
            order by reward desc, candidate_idx asc
        ) as best_rank,
        row_number() over (
            partition by prompt_id
            order by reward asc, candidate_idx desc
        ) as worst_rank,
        count(*) over (partition by prompt_id) as n_valid
    from valid_candidates

),

best as (

    select * from ranked where best_rank = 1

),

worst as (

    select * from ranked where worst_rank = 1

),

paired as (

    select
        best.prompt_id,
        best.prompt,
        best.response as chosen,
        worst.response as rejected,
        best.candidate_idx as chosen_idx,
        worst.candidate_idx as rejected_idx,
        best.reward as chosen_reward,
        worst.reward as rejected_reward,
        best.reward - worst.reward as margin,
        best.logprob_sum as chosen_logprob_sum,
        worst.logprob_sum as rejected_logprob_sum,
        best.logprob_mean as chosen_logprob_mean,
        worst.logprob_mean as rejected_logprob_mean,
        best.num_tokens as chosen_num_tokens,
        worst.num_tokens as rejected_num_tokens,
        best.n_valid as n_candidates,
        best.policy,
        best.reward_model
    from best
    inner join worst
        on best.prompt_id = worst.prompt_id
    where best.n_valid >= 2
        and best.reward > worst.reward
        and best.candidate_idx <> worst.candidate_idx
        and best.response <> worst.response

),

final as (

    select
        prompt_id,
        prompt,
        chosen,
        rejected,
        cast(chosen_idx as integer) as chosen_idx,
        cast(rejected_idx as integer) as rejected_idx,
        cast(chosen_reward as double) as chosen_reward,
        cast(rejected_reward as double) as rejected_reward,
        cast(margin as double) as margin,
        cast(1.0 / (1.0 + exp(-margin)) as double) as confidence,
        cast(chosen_logprob_sum as double) as chosen_logprob_sum,
        cast(rejected_logprob_sum as double) as rejected_logprob_sum,
        cast(chosen_logprob_mean as double) as chosen_logprob_mean,
        cast(rejected_logprob_mean as double) as rejected_logprob_mean,
        cast(chosen_num_tokens as integer) as chosen_num_tokens,
        cast(rejected_num_tokens as integer) as rejected_num_tokens,
        cast(n_candidates as integer) as n_candidates,
        policy,
        reward_model
    from paired

)

select * from final
order by prompt_id
