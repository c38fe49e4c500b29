-- length_control/balance_pairs: a pair set with as many chosen-longer as chosen-shorter pairs,
-- so that a student trained on it cannot learn length as a shortcut for preference.
--
-- Reads:
--   pairs_in  (wofn.schemas.PAIRS; e.g. filtered_pairs, registered under this name)
--             every column; directs on chosen_/rejected_num_tokens, ranks by confidence
--             (and agreement first, with $confidence_measure 'agreement')
--
-- Produces (wofn.schemas.PAIRS, the same columns and order as the input):
--   prompt_id, prompt, chosen, rejected, chosen_idx, rejected_idx,
--   chosen_reward, rejected_reward, margin, confidence,
--   chosen_logprob_sum, rejected_logprob_sum, chosen_logprob_mean, rejected_logprob_mean,
--   chosen_num_tokens, rejected_num_tokens, n_candidates, policy, reward_model, agreement
--
-- Parameters (DuckDB named parameters, bound from Python, e.g. {"confidence_measure": "margin"}):
--   $confidence_measure  VARCHAR: what "most confident" means, as in sql/filter_pairs.sql:
--                        'margin' = confidence; 'agreement' = agreement, then confidence.
--
-- Direction of a pair: longer (chosen_num_tokens > rejected_num_tokens), shorter (<) or equal
-- (num_tokens = policy tokens, EOS included). Kept: every equal pair, and from each of longer and
-- shorter the k = min(#longer, #shorter) most confident pairs (ties broken by prompt_id,
-- then chosen_idx, rejected_idx). So #longer = #shorter = k in the output; with no pair of one
-- direction, only the equal pairs remain. Ordered by prompt_id.

with

checked_params as (

    select
        case
            when $confidence_measure in ('margin', 'agreement') then $confidence_measure
            else error('balance_pairs: confidence_measure must be ''margin'' or ''agreement'', got '
                || coalesce(cast($confidence_measure as varchar), 'NULL'))
        end as confidence_measure

),

pairs as (

    select * from pairs_in

),

directed as not materialized (

    select
        *,
        case
            when chosen_num_tokens > rejected_num_tokens then 'longer'
            when chosen_num_tokens < rejected_num_tokens then 'shorter'
            else 'equal'
        end as direction
    from pairs

),

direction_counts as (

    select
        least(
            count(*) filter (where direction = 'longer'),
            count(*) filter (where direction = 'shorter')
        ) as k
    from directed

),

ranked as (

    select
        directed.*,
        row_number() over (
            partition by directed.direction
            order by
                case when checked_params.confidence_measure = 'agreement' then directed.agreement end
                    desc nulls last,
                directed.confidence desc, directed.prompt_id asc, directed.chosen_idx asc,
                directed.rejected_idx asc
        ) as direction_rank
    from directed
    cross join checked_params

),

final as (

    select
        ranked.prompt_id,
        ranked.prompt,
        ranked.chosen,
        ranked.rejected,
        ranked.chosen_idx,
        ranked.rejected_idx,
        ranked.chosen_reward,
        ranked.rejected_reward,
        ranked.margin,
        ranked.confidence,
        ranked.chosen_logprob_sum,
        ranked.rejected_logprob_sum,
        ranked.chosen_logprob_mean,
        ranked.rejected_logprob_mean,
        ranked.chosen_num_tokens,
        ranked.rejected_num_tokens,
        ranked.n_candidates,
        ranked.policy,
        ranked.reward_model,
        ranked.agreement
    from ranked
    cross join direction_counts
    where ranked.direction = 'equal'
        or ranked.direction_rank <= direction_counts.k

)

select * from final
order by prompt_id, chosen_idx, rejected_idx
