-- pair_filter_flags: every selected pair with the filters' thresholds and whether it passes each
-- filter. The one place the filters are computed: sql/filter_pairs.sql keeps the pairs that pass
-- them all, sql/pair_funnel.sql counts what each step keeps.
--
-- Reads:
--   west_of_n_pairs  (wofn.schemas.PAIRS)
--                    all columns; filters on confidence (and agreement), margin,
--                    chosen_/rejected_logprob_mean (or _logprob_sum), chosen_/rejected_num_tokens
--
-- Produces (wofn.schemas.PAIR_FILTER_FLAGS, in this order):
--   prompt_id, prompt, chosen, rejected, chosen_idx, rejected_idx,
--   chosen_reward, rejected_reward, margin, confidence,
--   chosen_logprob_sum, rejected_logprob_sum, chosen_logprob_mean, rejected_logprob_mean,
--   chosen_num_tokens, rejected_num_tokens, n_candidates, policy, reward_model, agreement,
--   confidence_key, min_confidence, min_likelihood,
--   passes_confidence, passes_likelihood, passes_margin, passes_max_tokens
--
-- Parameters (DuckDB named parameters, bound from Python, e.g. {"confidence_quantile": 0.5,
--   "confidence_measure": "margin", "logprob_quantile": 0.1, "likelihood": "mean",
--   "min_margin": None, "max_tokens": None}):
--   $confidence_quantile  DOUBLE in [0, 1]: passes_confidence = confidence_key >= min_confidence,
--                         the quantile_cont of confidence_key over all pairs.
--   $confidence_measure   VARCHAR: what confidence_key is. 'margin' = confidence = sigmoid(margin)
--                         (the paper's). 'agreement' = an ensemble teacher's agreement first,
--                         confidence among equal agreements: agreement * 1000 + confidence
--                         (agreement moves in steps of at least 1/(2 * members) > 0.5 / 1000 and
--                         confidence spans 0.5, so the order is lexicographic up to 999 members).
--                         'agreement' with any pair whose agreement is NULL (a single teacher) is
--                         an error, as is any other value.
--   $logprob_quantile     DOUBLE in [0, 1]: passes_likelihood = the chosen AND the rejected
--                         likelihood are both >= min_likelihood, the quantile_cont of the pooled
--                         chosen + rejected likelihoods of all pairs.
--   $likelihood           VARCHAR: the likelihood measure, 'mean' = logprob_mean (mean log-prob
--                         per token; the default) or 'sum' = logprob_sum (summed log-prob, which
--                         penalises long responses).
--   $min_margin           DOUBLE >= 0 or NULL: passes_margin = margin >= it; NULL = off (true).
--   $max_tokens           INTEGER >= 1 or NULL: passes_max_tokens = chosen AND rejected have at
--                         most this many tokens; NULL = off (true).
--   q = 0 passes every pair (the threshold is the minimum). A value out of range, or of the
--   wrong type, is an error (DuckDB itself would read a negative quantile as "from the top", so
--   it is checked here). Every threshold is computed over all input pairs, so the filters commute.
--
-- Units: confidence = sigmoid(chosen_reward - rejected_reward), a probability in (0.5, 1];
-- margin in reward-model units; log-probabilities in nats under the policy at temperature 1
-- (<= 0; closer to 0 = more likely); num_tokens = generated tokens, EOS included.
-- min_confidence and min_likelihood are the same on every row (NULL when there are no pairs).
-- Ordered by prompt_id.

with

pairs as not materialized (

    select * from west_of_n_pairs

),

checked_params as (

    select
        case
            when $confidence_quantile >= 0 and $confidence_quantile <= 1 then true
            else error('pair_filter_flags: confidence_quantile must be in [0, 1], got '
                || coalesce(cast($confidence_quantile as varchar), 'NULL'))
        end as confidence_quantile_ok,
        case
            when $confidence_measure = 'margin' then true
            when $confidence_measure = 'agreement'
                and not exists (select 1 from pairs where agreement is null) then true
            when $confidence_measure = 'agreement'
                then error('pair_filter_flags: confidence_measure ''agreement'' needs a teacher ensemble '
                    || '(teacher_members >= 2, pointwise): '
                    || cast((select count(*) from pairs where agreement is null) as varchar)
                    || ' pairs have no agreement')
            else error('pair_filter_flags: confidence_measure must be ''margin'' or ''agreement'', got '
                || coalesce(cast($confidence_measure as varchar), 'NULL'))
        end as confidence_measure_ok,
        case
            when $logprob_quantile >= 0 and $logprob_quantile <= 1 then true
            else error('pair_filter_flags: logprob_quantile must be in [0, 1], got '
                || coalesce(cast($logprob_quantile as varchar), 'NULL'))
        end as logprob_quantile_ok,
        case
            when $likelihood in ('mean', 'sum') then true
            else error('pair_filter_flags: likelihood must be ''mean'' or ''sum'', got '
                || coalesce(cast($likelihood as varchar), 'NULL'))
        end as likelihood_ok,
        case
            when $min_margin is null or $min_margin >= 0 then true
            else error('pair_filter_flags: min_margin must be >= 0 or NULL (off), got '
                || cast($min_margin as varchar))
        end as min_margin_ok,
        case
            when $max_tokens is null or $max_tokens >= 1 then true
            else error('pair_filter_flags: max_tokens must be >= 1 or NULL (off), got '
                || cast($max_tokens as varchar))
        end as max_tokens_ok

),

pair_likelihoods as not materialized (

    -- each pair with its two responses' likelihood under the chosen measure, and its confidence key
    select
        *,
        case when $likelihood = 'sum' then chosen_logprob_sum else chosen_logprob_mean end
            as chosen_likelihood,
        case when $likelihood = 'sum' then rejected_logprob_sum else rejected_logprob_mean end
            as rejected_likelihood,
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

final as (

    select
        pair_likelihoods.prompt_id,
        pair_likelihoods.prompt,
        pair_likelihoods.chosen,
        pair_likelihoods.rejected,
        pair_likelihoods.chosen_idx,
        pair_likelihoods.rejected_idx,
        pair_likelihoods.chosen_reward,
        pair_likelihoods.rejected_reward,
        pair_likelihoods.margin,
        pair_likelihoods.confidence,
        pair_likelihoods.chosen_logprob_sum,
        pair_likelihoods.rejected_logprob_sum,
        pair_likelihoods.chosen_logprob_mean,
        pair_likelihoods.rejected_logprob_mean,
        pair_likelihoods.chosen_num_tokens,
        pair_likelihoods.rejected_num_tokens,
        pair_likelihoods.n_candidates,
        pair_likelihoods.policy,
        pair_likelihoods.reward_model,
        pair_likelihoods.agreement,
        cast(pair_likelihoods.confidence_key as double) as confidence_key,
        cast(confidence_threshold.min_confidence as double) as min_confidence,
        cast(likelihood_threshold.min_likelihood as double) as min_likelihood,
        pair_likelihoods.confidence_key >= confidence_threshold.min_confidence as passes_confidence,
        pair_likelihoods.chosen_likelihood >= likelihood_threshold.min_likelihood
            and pair_likelihoods.rejected_likelihood >= likelihood_threshold.min_likelihood as passes_likelihood,
        $min_margin is null or pair_likelihoods.margin >= $min_margin as passes_margin,
        $max_tokens is null
            or (pair_likelihoods.chosen_num_tokens <= $max_tokens
                and pair_likelihoods.rejected_num_tokens <= $max_tokens) as passes_max_tokens
    from pair_likelihoods
    cross join checked_params
    cross join confidence_threshold
    cross join likelihood_threshold
    where checked_params.confidence_quantile_ok
        and checked_params.confidence_measure_ok
        and checked_params.logprob_quantile_ok
        and checked_params.likelihood_ok
        and checked_params.min_margin_ok
        and checked_params.max_tokens_ok

)

select * from final
order by prompt_id
