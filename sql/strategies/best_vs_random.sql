-- strategies/best_vs_random: the best candidate vs a random other one, labelled by the teacher
-- (a West-of-N ablation baseline, Pace et al. 2024).
--
-- Reads:
--   candidates        (wofn.schemas.CANDIDATES)
--                     prompt_id, candidate_idx, prompt, response, num_tokens,
--                     logprob_sum, logprob_mean, policy
--   candidate_scores  (wofn.schemas.CANDIDATE_SCORES)
--                     prompt_id, candidate_idx, reward, reward_model
--
-- Produces (wofn.schemas.PAIR_DRAWS, in this order; one row per prompt_id with candidate rows):
--   strategy, pair_seed, prompt_id, outcome, prompt, chosen, rejected, chosen_idx, rejected_idx,
--   chosen_reward, rejected_reward, margin, confidence,
--   chosen_logprob_sum, rejected_logprob_sum, chosen_logprob_mean, rejected_logprob_mean,
--   chosen_num_tokens, rejected_num_tokens, n_candidates, policy, reward_model
--
-- Parameters (DuckDB named parameters, bound from Python, e.g. {"seed": 0}):
--   $seed  BIGINT: the draw's seed (pair_seed); another seed gives another draw. Anything that is
--          not an integer (NULL, 0.5, text) is an error.
--
-- Randomness is a hash, so reruns give the same pairs: a candidate's draw key is
--   md5(prompt_id || ':' || candidate_idx || ':' || seed)    (hex text; the lowest key wins)
-- (md5 rather than DuckDB's hash(), which is not promised stable across DuckDB versions).
--
-- Picks: best = highest reward, ties broken by the lowest candidate_idx (as in west_of_n); the
-- other = the valid candidate with the lowest draw key among the rest. When the other ties with
-- the best, the outcome is tied_rewards (no pair).
--
-- The candidate pool (the same in every strategy file):
--   * Prompts are keyed by prompt_id, never by their text: two prompt_ids with the same text
--     are two prompts; prompt = the smallest prompt text among the prompt_id's rows.
--   * A candidate is one (prompt_id, candidate_idx). Duplicate rows of it (in candidates or in
--     candidate_scores) collapse to one when the copies agree (same response; same reward).
--     When they disagree the candidate is dropped: neither copy can be trusted.
--   * Valid = it has a score row, its copies agree, and its reward is not NULL and finite
--     (NULL, NaN, +inf and -inf rewards are dropped). n_candidates = valid candidates.
-- Labelling and outcome (the same in every strategy file): the teacher labels the two picks,
-- chosen = the higher reward. outcome is the first that applies:
--   fewer_than_2_valid  fewer than 2 valid candidates (the pair columns are NULL)
--   all_rewards_equal   every valid candidate has the same reward
--   tied_rewards        the two picks have the same reward
--   identical_texts     the two picks have the same response text
--   pair                a pair: chosen_reward > rejected_reward and chosen <> rejected
-- So chosen is never rejected, and duplicate rows never give a prompt a second row.
-- margin = chosen_reward - rejected_reward (reward-model units); confidence = sigmoid(margin) =
-- 1 / (1 + exp(-margin)) (the Bradley-Terry probability); logprob_* (nats, temperature 1) and
-- num_tokens (EOS included) are the policy's for each response; policy comes from the chosen
-- candidate's row, reward_model from its score row.
-- Ordered by prompt_id. The pairs themselves: sql/west_of_n_pairs.sql.

with

draw_params as (

    select
        'best_vs_random' as strategy,
        case
            when cast($seed as varchar) = cast(try_cast($seed as bigint) as varchar)
                then cast($seed as bigint)
            else error('strategies/best_vs_random: seed must be an integer, got '
                || coalesce(cast($seed as varchar), 'NULL'))
        end as pair_seed

),

-- ---- shared candidate pool (the same text in every sql/strategies/*.sql file) ----

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
        count(reward) = 0 or (count(reward) = count(*) and min(reward) = max(reward)) as copies_agree
    from candidate_scores
    group by prompt_id, candidate_idx

),

pool as (

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
        ) as is_valid
    from candidate_rows
    left join score_rows
        on candidate_rows.prompt_id = score_rows.prompt_id
        and candidate_rows.candidate_idx = score_rows.candidate_idx

),

valid_candidates as (

    select
        prompt_id,
        candidate_idx,
        response,
        num_tokens,
        logprob_sum,
        logprob_mean,
        policy,
        reward,
        reward_model
    from pool
    where is_valid

),

prompt_summary as (

    -- every prompt that has candidate rows, with its valid candidates' count and reward range
    select
        prompt_id,
        min(prompt) as prompt,
        count(*) filter (where is_valid) as n_valid,
        min(reward) filter (where is_valid) as min_reward,
        max(reward) filter (where is_valid) as max_reward
    from pool
    group by prompt_id

),

-- ---- end of the shared candidate pool ----

ranked as (

    select
        valid_candidates.*,
        row_number() over (
            partition by valid_candidates.prompt_id
            order by reward desc, candidate_idx asc
        ) as extreme_rank,
        md5(valid_candidates.prompt_id || ':' || cast(valid_candidates.candidate_idx as varchar)
            || ':' || cast(draw_params.pair_seed as varchar)) as draw_key,
        count(*) over (partition by valid_candidates.prompt_id) as n_valid
    from valid_candidates
    cross join draw_params

),

others as (

    -- every valid candidate but the best, in draw order
    select
        *,
        row_number() over (partition by prompt_id order by draw_key, candidate_idx) as draw_rank
    from ranked
    where extreme_rank > 1

),

picks as (

    -- pick 1 = the best, pick 2 = a random other candidate
    select
        prompt_id, candidate_idx, response, num_tokens, logprob_sum, logprob_mean, policy,
        reward, reward_model, 1 as pick
    from ranked
    where extreme_rank = 1 and n_valid >= 2
    union all
    select
        prompt_id, candidate_idx, response, num_tokens, logprob_sum, logprob_mean, policy,
        reward, reward_model, 2 as pick
    from others
    where draw_rank = 1

),

-- ---- shared labelling (the same text in every sql/strategies/*.sql file) ----

labelled as (

    -- the teacher labels the two picks: chosen = the higher reward (on a tie, the first pick)
    select
        prompt_id,
        candidate_idx,
        response,
        num_tokens,
        logprob_sum,
        logprob_mean,
        policy,
        reward,
        reward_model,
        row_number() over (partition by prompt_id order by reward desc, pick asc) as label_rank
    from picks

),

chosen as (

    select * from labelled where label_rank = 1

),

rejected as (

    select * from labelled where label_rank = 2

),

final as (

    select
        draw_params.strategy,
        draw_params.pair_seed,
        prompt_summary.prompt_id,
        case
            when prompt_summary.n_valid < 2 then 'fewer_than_2_valid'
            when prompt_summary.max_reward = prompt_summary.min_reward then 'all_rewards_equal'
            when chosen.reward = rejected.reward then 'tied_rewards'
            when chosen.response = rejected.response then 'identical_texts'
            else 'pair'
        end as outcome,
        prompt_summary.prompt,
        chosen.response as chosen,
        rejected.response as rejected,
        cast(chosen.candidate_idx as integer) as chosen_idx,
        cast(rejected.candidate_idx as integer) as rejected_idx,
        cast(chosen.reward as double) as chosen_reward,
        cast(rejected.reward as double) as rejected_reward,
        cast(chosen.reward - rejected.reward as double) as margin,
        cast(1.0 / (1.0 + exp(-(chosen.reward - rejected.reward))) as double) as confidence,
        cast(chosen.logprob_sum as double) as chosen_logprob_sum,
        cast(rejected.logprob_sum as double) as rejected_logprob_sum,
        cast(chosen.logprob_mean as double) as chosen_logprob_mean,
        cast(rejected.logprob_mean as double) as rejected_logprob_mean,
        cast(chosen.num_tokens as integer) as chosen_num_tokens,
        cast(rejected.num_tokens as integer) as rejected_num_tokens,
        cast(prompt_summary.n_valid as integer) as n_candidates,
        chosen.policy,
        chosen.reward_model
    from prompt_summary
    cross join draw_params
    left join chosen
        on prompt_summary.prompt_id = chosen.prompt_id
    left join rejected
        on prompt_summary.prompt_id = rejected.prompt_id

)

-- ---- end of the shared labelling ----

select * from final
order by prompt_id
