-- label_picks: a strategy's two picks per prompt, labelled by the teacher: the last step of every
-- strategy's draw (sql/candidate_pool.sql, sql/prompt_summary.sql, sql/strategies/<strategy>.sql,
-- then this file).
--
-- Reads:
--   pair_picks      (wofn.schemas.PAIR_PICKS)      prompt_id, candidate_idx, pick
--   candidate_pool  (wofn.schemas.CANDIDATE_POOL)  prompt_id, candidate_idx, response, num_tokens,
--                                                  logprob_sum, logprob_mean, policy, reward, reward_model,
--                                                  member_rewards
--   prompt_summary  (wofn.schemas.PROMPT_SUMMARY)  prompt_id, prompt, n_valid, min_reward, max_reward
--
-- Produces (wofn.schemas.PAIR_DRAWS, in this order; one row per prompt_id with candidate rows):
--   strategy, pair_seed, prompt_id, outcome, prompt, chosen, rejected, chosen_idx, rejected_idx,
--   chosen_reward, rejected_reward, margin, confidence,
--   chosen_logprob_sum, rejected_logprob_sum, chosen_logprob_mean, rejected_logprob_mean,
--   chosen_num_tokens, rejected_num_tokens, n_candidates, policy, reward_model, agreement
--
-- Parameters (DuckDB named parameters, bound from Python, e.g. {"strategy": "random_pair", "pair_seed": 0}):
--   $strategy   VARCHAR: the strategy that made pair_picks; one of west_of_n, random_pair,
--               best_vs_random, worst_vs_random, else an error.
--   $pair_seed  BIGINT: the seed the strategy drew with; NULL for west_of_n (and only for it).
--
-- Labelling and outcome (the same for every strategy): the teacher labels the two picks,
-- chosen = the higher reward (on a tie, pick 1). outcome is the first that applies:
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
-- agreement (an ensemble teacher, whose reward is its members' mean): the share of members whose
-- own reward ranks chosen above rejected, a tie counting half, in [0, 1]; NULL when either pick has
-- no member_rewards (a single reward model) or the two lists differ in length.
-- Ordered by prompt_id. The pairs themselves: sql/west_of_n_pairs.sql.

with

draw_params as (

    select
        case
            when $strategy in ('west_of_n', 'random_pair', 'best_vs_random', 'worst_vs_random')
                then $strategy
            else error('label_picks: strategy must be one of west_of_n, random_pair, '
                || 'best_vs_random, worst_vs_random; got ' || coalesce(cast($strategy as varchar), 'NULL'))
        end as strategy,
        case
            when ($strategy = 'west_of_n') = ($pair_seed is null)
                then cast($pair_seed as bigint)
            else error('label_picks: pair_seed must be NULL for west_of_n and an integer for the random '
                || 'strategies; got ' || coalesce(cast($pair_seed as varchar), 'NULL'))
        end as pair_seed

),

labelled as (

    -- the teacher labels the two picks: chosen = the higher reward (on a tie, the first pick)
    select
        candidate_pool.prompt_id,
        candidate_pool.candidate_idx,
        candidate_pool.response,
        candidate_pool.num_tokens,
        candidate_pool.logprob_sum,
        candidate_pool.logprob_mean,
        candidate_pool.policy,
        candidate_pool.reward,
        candidate_pool.reward_model,
        candidate_pool.member_rewards,
        row_number() over (
            partition by pair_picks.prompt_id
            order by candidate_pool.reward desc, pair_picks.pick asc
        ) as label_rank
    from pair_picks
    inner join candidate_pool
        on pair_picks.prompt_id = candidate_pool.prompt_id
        and pair_picks.candidate_idx = candidate_pool.candidate_idx

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
        chosen.reward_model,
        cast(
            case
                when len(chosen.member_rewards) = len(rejected.member_rewards)
                    and len(chosen.member_rewards) > 0
                    then list_avg(list_transform(
                        list_zip(chosen.member_rewards, rejected.member_rewards),
                        lambda members: case
                            when members[1] > members[2] then 1.0
                            when members[1] = members[2] then 0.5
                            else 0.0
                        end))
            end as double
        ) as agreement
    from prompt_summary
    cross join draw_params
    left join chosen
        on prompt_summary.prompt_id = chosen.prompt_id
    left join rejected
        on prompt_summary.prompt_id = rejected.prompt_id

)

select * from final
order by prompt_id
