-- pair_funnel: how many of the selected pairs each filter step keeps, with the length balance
-- of what is left (the base reward model tends to prefer the shorter answer).
--
-- Reads:
--   west_of_n_pairs  (wofn.schemas.PAIRS)
--                    confidence, agreement, margin, chosen_/rejected_logprob_mean (or _logprob_sum),
--                    chosen_/rejected_num_tokens
--
-- Produces (wofn.schemas.PAIR_FUNNEL, in this order):
--   strategy, pair_seed, step_order, step, setting, threshold, pairs_in, pairs_kept, kept_share,
--   chosen_longer_share, chosen_shorter_share, mean_length_gap, mean_confidence
--
-- Parameters (DuckDB named parameters, bound from Python):
--   $confidence_quantile, $confidence_measure, $logprob_quantile, $likelihood, $min_margin,
--   $max_tokens   exactly as in sql/filter_pairs.sql (same checks, same thresholds).
--   $strategy     VARCHAR: the strategy that selected the input pairs (a label; one of
--                 west_of_n, random_pair, best_vs_random, worst_vs_random, else an error).
--   $pair_seed    BIGINT or NULL: that strategy's seed (a label; NULL for west_of_n).
--
-- Steps, in order, each applied to what the previous one kept (every threshold is computed
-- over all input pairs, as in sql/filter_pairs.sql, so the last step keeps exactly its rows):
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

pairs as (

    select * from west_of_n_pairs

),

checked_params as (

    select
        case
            when $confidence_quantile >= 0 and $confidence_quantile <= 1 then true
            else error('pair_funnel: confidence_quantile must be in [0, 1], got '
                || coalesce(cast($confidence_quantile as varchar), 'NULL'))
        end as confidence_quantile_ok,
        case
            when $confidence_measure = 'margin' then true
            when $confidence_measure = 'agreement'
                and not exists (select 1 from pairs where agreement is null) then true
            when $confidence_measure = 'agreement'
                then error('pair_funnel: confidence_measure ''agreement'' needs a teacher ensemble '
                    || '(teacher_members >= 2, pointwise): '
                    || cast((select count(*) from pairs where agreement is null) as varchar)
                    || ' pairs have no agreement')
            else error('pair_funnel: confidence_measure must be ''margin'' or ''agreement'', got '
                || coalesce(cast($confidence_measure as varchar), 'NULL'))
        end as confidence_measure_ok,
        case
            when $logprob_quantile >= 0 and $logprob_quantile <= 1 then true
            else error('pair_funnel: logprob_quantile must be in [0, 1], got '
                || coalesce(cast($logprob_quantile as varchar), 'NULL'))
        end as logprob_quantile_ok,
        case
            when $likelihood in ('mean', 'sum') then true
            else error('pair_funnel: likelihood must be ''mean'' or ''sum'', got '
                || coalesce(cast($likelihood as varchar), 'NULL'))
        end as likelihood_ok,
        case
            when $min_margin is null or $min_margin >= 0 then true
            else error('pair_funnel: min_margin must be >= 0 or NULL (off), got '
                || cast($min_margin as varchar))
        end as min_margin_ok,
        case
            when $max_tokens is null or $max_tokens >= 1 then true
            else error('pair_funnel: max_tokens must be >= 1 or NULL (off), got '
                || cast($max_tokens as varchar))
        end as max_tokens_ok,
        case
            when $strategy in ('west_of_n', 'random_pair', 'best_vs_random', 'worst_vs_random')
                then $strategy
            else error('pair_funnel: strategy must be one of west_of_n, random_pair, '
                || 'best_vs_random, worst_vs_random; got ' || coalesce(cast($strategy as varchar), 'NULL'))
        end as strategy,
        cast($pair_seed as bigint) as pair_seed

),

pair_likelihoods as (

    -- each pair with its two responses' likelihood under the chosen measure
    select
        *,
        case when $likelihood = 'sum' then chosen_logprob_sum else chosen_logprob_mean end
            as chosen_likelihood,
        case when $likelihood = 'sum' then rejected_logprob_sum else rejected_logprob_mean end
            as rejected_likelihood,
        -- what the confidence filter ranks by: sigmoid(margin), or agreement first and sigmoid(margin)
        -- among equal agreements (agreement moves in steps of at least 1/(2 * members) > 0.5 / 1000,
        -- confidence spans 0.5, so the order is lexicographic for ensembles of up to 999 members)
        case when $confidence_measure = 'agreement' then agreement * 1000 + confidence else confidence end
            as confidence_key
    from pairs

),

confidence_threshold as (

    -- clamped so that DuckDB's own range check does not pre-empt checked_params' clearer error
    select quantile_cont(confidence_key, least(greatest(coalesce($confidence_quantile, 0), 0), 1))
        as min_confidence
    from pair_likelihoods

),

pooled_likelihoods as (

    select chosen_likelihood as likelihood from pair_likelihoods
    union all
    select rejected_likelihood as likelihood from pair_likelihoods

),

likelihood_threshold as (

    select quantile_cont(likelihood, least(greatest(coalesce($logprob_quantile, 0), 0), 1))
        as min_likelihood
    from pooled_likelihoods

),

thresholds as (

    select
        confidence_threshold.min_confidence,
        likelihood_threshold.min_likelihood
    from confidence_threshold
    cross join likelihood_threshold

),

pair_checks as (

    -- per pair: does it pass each filter on its own?
    select
        pair_likelihoods.confidence,
        pair_likelihoods.chosen_num_tokens - pair_likelihoods.rejected_num_tokens as length_gap,
        pair_likelihoods.confidence_key >= thresholds.min_confidence as passes_confidence,
        pair_likelihoods.chosen_likelihood >= thresholds.min_likelihood
            and pair_likelihoods.rejected_likelihood >= thresholds.min_likelihood as passes_likelihood,
        $min_margin is null or pair_likelihoods.margin >= $min_margin as passes_margin,
        $max_tokens is null
            or (pair_likelihoods.chosen_num_tokens <= $max_tokens
                and pair_likelihoods.rejected_num_tokens <= $max_tokens) as passes_max_tokens
    from pair_likelihoods
    cross join thresholds

),

step_rows as (

    -- one row per (step, pair): is the pair still kept after this step?
    select 1 as step_order, true as kept, confidence, length_gap
    from pair_checks
    union all
    select 2, passes_confidence, confidence, length_gap
    from pair_checks
    union all
    select 3, passes_confidence and passes_likelihood, confidence, length_gap
    from pair_checks
    union all
    select 4, passes_confidence and passes_likelihood and passes_margin, confidence, length_gap
    from pair_checks
    union all
    select 5, passes_confidence and passes_likelihood and passes_margin and passes_max_tokens,
        confidence, length_gap
    from pair_checks

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
    where checked_params.confidence_measure_ok
        and checked_params.confidence_quantile_ok
        and checked_params.logprob_quantile_ok
        and checked_params.likelihood_ok
        and checked_params.min_margin_ok
        and checked_params.max_tokens_ok

)

select * from final
order by step_order
