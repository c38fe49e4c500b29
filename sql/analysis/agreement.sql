-- analysis/agreement: a teacher ensemble's pairs by agreement level (the share of its members that
-- rank the pair as the ensemble does), with how many the filters kept and what else marks them.
--
-- Reads:
--   west_of_n_pairs  (wofn.schemas.PAIRS)  prompt_id, agreement, margin, confidence,
--                                          chosen_num_tokens, rejected_num_tokens
--   filtered_pairs   (wofn.schemas.PAIRS)  prompt_id
--
-- Produces: one row per agreement level, highest first (NULL last: pairs of a single teacher), with
-- columns agreement, selected (pairs in west_of_n_pairs), kept (of those, in filtered_pairs),
-- kept_share, mean_margin, mean_confidence, chosen_longer_share (chosen has more policy tokens)
--
-- Parameters: none.
--
-- With teacher_members: K, agreement takes the values k / (2K) (a member's tie counts half); a run
-- with confidence_measure: agreement keeps the top levels first. Shares and means are rounded to 3
-- decimals, 4 for margin and confidence.
--
--   wofn sql sql/analysis/agreement.sql

with

selected as (

    select prompt_id, agreement, margin, confidence, chosen_num_tokens, rejected_num_tokens
    from west_of_n_pairs

),

kept as (

    select distinct prompt_id from filtered_pairs

),

final as (

    select
        selected.agreement,
        count(*) as selected,
        count(kept.prompt_id) as kept,
        round(count(kept.prompt_id) / count(*), 3) as kept_share,
        round(avg(selected.margin), 4) as mean_margin,
        round(avg(selected.confidence), 4) as mean_confidence,
        round(avg(case when selected.chosen_num_tokens > selected.rejected_num_tokens then 1.0 else 0.0 end), 3)
            as chosen_longer_share
    from selected
    left join kept
        on selected.prompt_id = kept.prompt_id
    group by selected.agreement

)

select * from final
order by agreement desc nulls last
