-- pair_funnel: how many of the selected pairs each filter step keeps, with the length balance
-- of what is left (the base reward model tends to prefer the shorter answer).
--
-- Reads:
--   pair_filter_flags  (sql/pair_filter_flags.sql, run first with this query's filter parameters;
--                      wofn.schemas.PAIR_FILTER_FLAGS) confidence, chosen_/rejected_num_tokens,
--                      min_confidence, min_likelihood, passes_confidence, passes_likelihood,
--                      passes_margin, passes_max_tokens
--
-- Produces (wofn.schemas.PAIR_FUNNEL, in this order):
--   strategy, pair_seed, step_order, step, setting, threshold, pairs_in, pairs_kept, kept_share,
--   chosen_longer_share, chosen_shorter_share, mean_length_gap, mean_confidence
--
-- Parameters (DuckDB named parameters, bound from Python):
--   $confidence_quantile, $confidence_measure, $logprob_quantile, $likelihood, $min_margin,
--   $max_tokens   those of sql/pair_filter_flags.sql, which computes the filters; here they only
--                 label the steps (setting).
--   $strategy     VARCHAR: the strategy that selected the input pairs (a label; one of
--                 west_of_n, random_pair, best_vs_random, worst_vs_random, else an error).
--   $pair_seed    BIGINT or NULL: that strategy's seed (a label; NULL for west_of_n).
--
-- Steps, in order, each applied to what the previous one kept (every threshold is computed
-- over all input pairs, by sql/pair_filter_flags.sql, so the last step keeps exactly the rows of
-- sql/filter_pairs.sql):
--   1 selected    the input pairs (threshold NULL)
--   2 confidence  confidence >= its q-quantile (threshold = that confidence; with
--                 $confidence_measure 'agreement', the key agreement * 1000 + confidence)
--   3 likelihood  both responses' likelihood >= the q-quantile of the pooled likelihoods
--                 (threshold in nats, of logprob_mean or logprob_sum)
--   4 margin      margin >= min_margin (threshold NULL when off)
--   5 max_tokens  both responses have <= max_tokens tokens (threshold NULL when off)
-- pairs_in = what the step received; kept_share = pairs_kept / pairs_in (NULL when 0 in).
-- Over the kept pairs (NULL when none): chosen_longer_share / chosen_shorter_share = share of
-- pairs whose chosen response has more / fewer tokens than the rejected one (equal lengths
-- count in neither); mean_length_gap = mean(chosen_num_tokens - rejected_num_tokens), in policy
-- tokens (EOS included); mean_confidence = mean(confidence).
-- Ordered by step_order.

with

flags as (

    select * from pair_filter_flags

),

checked_params as (

    select
        case
            when $strategy in ('west_of_n', 'random_pair', 'best_vs_random', 'worst_vs_random')
                then $strategy
            else error('pair_funnel: strategy must be one of west_of_n, random_pair, '
                || 'best_vs_random, worst_vs_random; got ' || coalesce(cast($strategy as varchar), 'NULL'))
        end as strategy,
        cast($pair_seed as bigint) as pair_seed

),

thresholds as (

    -- the same on every row of the flags; NULL when there are no pairs
    select
        max(min_confidence) as min_confidence,
        max(min_likelihood) as min_likelihood
    from flags

),

step_rows as (

    -- one row per (step, pair): is the pair still kept after this step?
    select 1 as step_order, true as kept, confidence,
        chosen_num_tokens - rejected_num_tokens as length_gap
    from flags
    union all
    select 2, passes_confidence, confidence, chosen_num_tokens - rejected_num_tokens
    from flags
    union all
    select 3, passes_confidence and passes_likelihood, confidence, chosen_num_tokens - rejected_num_tokens
    from flags
    union all
    select 4, passes_confidence and passes_likelihood and passes_margin, confidence,
        chosen_num_tokens - rejected_num_tokens
    from flags
    union all
    select 5, passes_confidence and passes_likelihood and passes_margin and passes_max_tokens,
        confidence, chosen_num_tokens - rejected_num_tokens
    from flags

),

steps as (

    select 1 as step_order, 'selected' as step, 'all pairs' as setting,
        cast(null as double) as threshold
    from thresholds
    union all
    select 2, 'confidence', 'q=' || cast($confidence_quantile as varchar)
            || case when $confidence_measure = 'agreement' then ' of agreement, then confidence' else '' end,
        min_confidence
    from thresholds
    union all
    select 3, 'likelihood', 'q=' || cast($logprob_quantile as varchar) || ' of logprob_' || $likelihood,
        min_likelihood
    from thresholds
    union all
    select 4, 'margin',
        case when $min_margin is null then 'off' else '>= ' || cast($min_margin as varchar) end,
        cast($min_margin as double)
    from thresholds
    union all
    select 5, 'max_tokens',
        case when $max_tokens is null then 'off' else '<= ' || cast($max_tokens as varchar) end,
        cast($max_tokens as double)
    from thresholds

),

step_counts as (

    select
        steps.step_order,
        steps.step,
        steps.setting,
        steps.threshold,
        count(*) filter (where step_rows.kept) as pairs_kept,
        avg(case when step_rows.length_gap > 0 then 1.0 else 0.0 end)
            filter (where step_rows.kept) as chosen_longer_share,
        avg(case when step_rows.length_gap < 0 then 1.0 else 0.0 end)
            filter (where step_rows.kept) as chosen_shorter_share,
        avg(step_rows.length_gap) filter (where step_rows.kept) as mean_length_gap,
        avg(step_rows.confidence) filter (where step_rows.kept) as mean_confidence
    from steps
    left join step_rows
        on steps.step_order = step_rows.step_order
    group by steps.step_order, steps.step, steps.setting, steps.threshold

),

step_inputs as (

    select
        *,
        coalesce(lag(pairs_kept) over (order by step_order), pairs_kept) as pairs_in
    from step_counts

),

final as (

    select
        checked_params.strategy,
        checked_params.pair_seed,
        cast(step_inputs.step_order as integer) as step_order,
        step_inputs.step,
        step_inputs.setting,
        cast(step_inputs.threshold as double) as threshold,
        cast(step_inputs.pairs_in as bigint) as pairs_in,
        cast(step_inputs.pairs_kept as bigint) as pairs_kept,
        cast(step_inputs.pairs_kept as double) / nullif(step_inputs.pairs_in, 0) as kept_share,
        cast(step_inputs.chosen_longer_share as double) as chosen_longer_share,
        cast(step_inputs.chosen_shorter_share as double) as chosen_shorter_share,
        cast(step_inputs.mean_length_gap as double) as mean_length_gap,
        cast(step_inputs.mean_confidence as double) as mean_confidence
    from step_inputs
    cross join checked_params

)

select * from final
order by step_order
