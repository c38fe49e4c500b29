-- filtered_pairs: the selected pairs kept by the confidence and likelihood quantile filters,
-- and by the optional minimum-margin and maximum-length filters.
--
-- Reads:
--   pair_filter_flags  (sql/pair_filter_flags.sql, run first with this query's parameters;
--                      wofn.schemas.PAIR_FILTER_FLAGS) the PAIRS columns and passes_confidence,
--                      passes_likelihood, passes_margin, passes_max_tokens
--
-- Produces (wofn.schemas.PAIRS, same columns and order as the input):
--   prompt_id, prompt, chosen, rejected, chosen_idx, rejected_idx,
--   chosen_reward, rejected_reward, margin, confidence,
--   chosen_logprob_sum, rejected_logprob_sum, chosen_logprob_mean, rejected_logprob_mean,
--   chosen_num_tokens, rejected_num_tokens, n_candidates, policy, reward_model, agreement
--
-- Parameters: those of sql/pair_filter_flags.sql, which computes the filters ($confidence_quantile,
--   $confidence_measure, $logprob_quantile, $likelihood, $min_margin, $max_tokens; see its header).
--
-- Keeps the pairs that pass every filter. Ordered by prompt_id.
--
--   wofn sql sql/filter_pairs.sql --param confidence_quantile=0.5 --param confidence_measure=margin \
--       --param logprob_quantile=0.1 --param likelihood=mean --param min_margin=null --param max_tokens=null

with

flags as (

    select * from pair_filter_flags

),

final as (

    select
        prompt_id,
        prompt,
        chosen,
        rejected,
        chosen_idx,
        rejected_idx,
        chosen_reward,
        rejected_reward,
        margin,
        confidence,
        chosen_logprob_sum,
        rejected_logprob_sum,
        chosen_logprob_mean,
        rejected_logprob_mean,
        chosen_num_tokens,
        rejected_num_tokens,
        n_candidates,
        policy,
        reward_model,
        agreement
    from flags
    where passes_confidence
        and passes_likelihood
        and passes_margin
        and passes_max_tokens

)

select * from final
order by prompt_id
