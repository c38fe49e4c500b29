-- analysis/strategies: the four selection strategies side by side, on the same candidates and
-- the same teacher rewards (before the filters).
--
-- Reads:
--   pair_draws  (wofn.schemas.PAIR_DRAWS)  strategy, pair_seed, prompt_id, outcome, chosen_idx,
--               rejected_idx, margin, confidence, chosen_num_tokens, rejected_num_tokens
--
-- Produces: one row per strategy (west_of_n, random_pair, best_vs_random, worst_vs_random), with
--   columns strategy, pair_seed, prompts, pairs, no_pair (prompts without one; the reasons are in
--   pair_selection_report), same_as_west_of_n, mean_margin, mean_confidence,
--   chosen_longer_share, chosen_shorter_share, mean_length_gap
--
-- Parameters: none.
--
-- Over each strategy's pairs (outcome = 'pair'): same_as_west_of_n = share that are the very
-- pair west_of_n picked for the prompt (same chosen and rejected candidate); margin in reward
-- units, confidence = sigmoid(margin); lengths in policy tokens, chosen_longer_share /
-- chosen_shorter_share = share whose chosen has more / fewer tokens than the rejected,
-- mean_length_gap = mean(chosen - rejected tokens). West-of-N should have the largest margins;
-- the baselines show what the best-vs-worst choice adds.
--
--   wofn sql sql/analysis/strategies.sql

with

draws as (

    select * from pair_draws

),

west_of_n as (

    select prompt_id, chosen_idx, rejected_idx
    from draws
    where strategy = 'west_of_n' and outcome = 'pair'

),

per_strategy as (

    select
        draws.strategy,
        min(draws.pair_seed) as pair_seed,
        count(*) as prompts,
        count(*) filter (where draws.outcome = 'pair') as pairs,
        count(*) filter (where draws.outcome <> 'pair') as no_pair,
        avg(case
                when west_of_n.chosen_idx = draws.chosen_idx and west_of_n.rejected_idx = draws.rejected_idx
                    then 1.0
                else 0.0
            end) filter (where draws.outcome = 'pair') as same_as_west_of_n,
        avg(draws.margin) filter (where draws.outcome = 'pair') as mean_margin,
        avg(draws.confidence) filter (where draws.outcome = 'pair') as mean_confidence,
        avg(case when draws.chosen_num_tokens > draws.rejected_num_tokens then 1.0 else 0.0 end)
            filter (where draws.outcome = 'pair') as chosen_longer_share,
        avg(case when draws.chosen_num_tokens < draws.rejected_num_tokens then 1.0 else 0.0 end)
            filter (where draws.outcome = 'pair') as chosen_shorter_share,
        avg(draws.chosen_num_tokens - draws.rejected_num_tokens)
            filter (where draws.outcome = 'pair') as mean_length_gap
    from draws
    left join west_of_n
        on draws.prompt_id = west_of_n.prompt_id
    group by draws.strategy

),

final as (

    select
        strategy,
        pair_seed,
        prompts,
        pairs,
        no_pair,
        round(same_as_west_of_n, 3) as same_as_west_of_n,
        round(mean_margin, 4) as mean_margin,
        round(mean_confidence, 4) as mean_confidence,
        round(chosen_longer_share, 3) as chosen_longer_share,
        round(chosen_shorter_share, 3) as chosen_shorter_share,
        round(mean_length_gap, 2) as mean_length_gap
    from per_strategy

)

select * from final
order by list_position(['west_of_n', 'random_pair', 'best_vs_random', 'worst_vs_random'], strategy)
