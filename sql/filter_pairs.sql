-- filtered_pairs: the West-of-N pairs kept by the confidence and likelihood quantile filters.
--
-- Reads:
--   west_of_n_pairs  (wofn.schemas.PAIRS)
--                    all columns; filters on confidence, chosen_logprob_mean,
--                    rejected_logprob_mean
--
-- Produces (wofn.schemas.PAIRS, same columns and order as the input):
--   prompt_id, prompt, chosen, rejected, chosen_idx, rejected_idx,
--   chosen_reward, rejected_reward, margin, confidence,
--   chosen_logprob_sum, rejected_logprob_sum, chosen_logprob_mean, rejected_logprob_mean,
--   chosen_num_tokens, rejected_num_tokens, n_candidates, policy, reward_model
--
-- Parameters (DuckDB named parameters, bound from Python, e.g.
--   con.execute(sql, {"confidence_quantile": 0.5, "logprob_quantile": 0.1})):
--   $confidence_quantile  DOUBLE in [0, 1]: keep pairs whose confidence is >= the
--                         quantile_cont of confidence over all pairs.
--   $logprob_quantile     DOUBLE in [0, 1]: keep pairs whose chosen_logprob_mean AND
--                         rejected_logprob_mean are both >= the quantile_cont of the pooled
--                         chosen + rejected logprob_mean values of all pairs.
--   q = 0 keeps every pair (the threshold is the minimum). A value outside [0, 1] is an error
--   (DuckDB itself would read a negative quantile as "from the top", so it is checked here).
--
-- Units: confidence = sigmoid(chosen_reward - rejected_reward), a probability in (0.5, 1];
-- logprob_mean is the mean log-probability per generated token, in nats, under the policy at
-- temperature 1 (<= 0; closer to 0 = more likely).
-- Ordered by prompt_id.

with

pairs as (

    select * from west_of_n_pairs

),

checked_params as (

    select
        case
            when $confidence_quantile >= 0 and $confidence_quantile <= 1 then true
            else error('filter_pairs: confidence_quantile must be in [0, 1], got '
                || cast($confidence_quantile as varchar))
        end as confidence_quantile_ok,
        case
            when $logprob_quantile >= 0 and $logprob_quantile <= 1 then true
            else error('filter_pairs: logprob_quantile must be in [0, 1], got '
                || cast($logprob_quantile as varchar))
        end as logprob_quantile_ok

),

confidence_threshold as (

    select quantile_cont(confidence, $confidence_quantile) as min_confidence
    from pairs

),

pooled_logprob_means as (

    select chosen_logprob_mean as logprob_mean from pairs
    union all
    select rejected_logprob_mean as logprob_mean from pairs

),

logprob_threshold as (

    select quantile_cont(logprob_mean, $logprob_quantile) as min_logprob_mean
    from pooled_logprob_means

),

final as (

    select
        pairs.prompt_id,
        pairs.prompt,
        pairs.chosen,
        pairs.rejected,
        pairs.chosen_idx,
        pairs.rejected_idx,
        pairs.chosen_reward,
        pairs.rejected_reward,
        pairs.margin,
        pairs.confidence,
        pairs.chosen_logprob_sum,
        pairs.rejected_logprob_sum,
        pairs.chosen_logprob_mean,
        pairs.rejected_logprob_mean,
        pairs.chosen_num_tokens,
        pairs.rejected_num_tokens,
        pairs.n_candidates,
        pairs.policy,
        pairs.reward_model
    from pairs
    cross join checked_params
    cross join confidence_threshold
    cross join logprob_threshold
    where checked_params.confidence_quantile_ok
        and checked_params.logprob_quantile_ok
        and pairs.confidence >= confidence_threshold.min_confidence
        and pairs.chosen_logprob_mean >= logprob_threshold.min_logprob_mean
        and pairs.rejected_logprob_mean >= logprob_threshold.min_logprob_mean

)

select * from final
order by prompt_id
