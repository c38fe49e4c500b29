-- west_of_n_pairs: the synthetic preference pairs of one selection strategy, one per prompt
-- at most (the asset of this name holds the configured strategy's, default west_of_n).
--
-- Reads:
--   pair_draws  (wofn.schemas.PAIR_DRAWS, written by sql/label_picks.sql)
--               every column but strategy, pair_seed and outcome; filters on strategy, outcome
--
-- Produces (wofn.schemas.PAIRS, in this order):
--   prompt_id, prompt, chosen, rejected, chosen_idx, rejected_idx,
--   chosen_reward, rejected_reward, margin, confidence,
--   chosen_logprob_sum, rejected_logprob_sum, chosen_logprob_mean, rejected_logprob_mean,
--   chosen_num_tokens, rejected_num_tokens, n_candidates, policy, reward_model, agreement
--
-- Parameters (DuckDB named parameters, bound from Python, e.g. {"strategy": "west_of_n"}):
--   $strategy  VARCHAR: west_of_n, random_pair, best_vs_random or worst_vs_random; anything
--              else is an error.
--
-- Keeps the rows with outcome = 'pair' (chosen_reward > rejected_reward, chosen <> rejected);
-- why the other prompts have no pair is counted by sql/selection_report.sql.
-- margin = chosen_reward - rejected_reward (> 0, reward-model units);
-- confidence = sigmoid(margin), in (0.5, 1]; agreement = an ensemble teacher's share of members
-- ranking chosen above rejected (NULL for a single reward model), see sql/label_picks.sql.
-- Ordered by prompt_id.

with

checked_params as (

    select
        case
            when $strategy in ('west_of_n', 'random_pair', 'best_vs_random', 'worst_vs_random')
                then $strategy
            else error('west_of_n_pairs: strategy must be one of west_of_n, random_pair, '
                || 'best_vs_random, worst_vs_random; got ' || coalesce(cast($strategy as varchar), 'NULL'))
        end as strategy

),

draws as (

    select * from pair_draws

),

final as (

    select
        draws.prompt_id,
        draws.prompt,
        draws.chosen,
        draws.rejected,
        draws.chosen_idx,
        draws.rejected_idx,
        draws.chosen_reward,
        draws.rejected_reward,
        draws.margin,
        draws.confidence,
        draws.chosen_logprob_sum,
        draws.rejected_logprob_sum,
        draws.chosen_logprob_mean,
        draws.rejected_logprob_mean,
        draws.chosen_num_tokens,
        draws.rejected_num_tokens,
        draws.n_candidates,
        draws.policy,
        draws.reward_model,
        draws.agreement
    from draws
    inner join checked_params
        on draws.strategy = checked_params.strategy
    where draws.outcome = 'pair'

)

select * from final
order by prompt_id
