-- analysis/rounds: iterative West-of-N round by round: how many pairs each round's teacher
-- selected and the filters kept, their confidence and length balance, and how much the pairs
-- changed from the round before.
--
-- Reads:
--   (views that `wofn sql` adds over every round's tables, each with a leading `round` column:
--   round 1 = $WOFN_HOME/tables/<table>, round k >= 2 = $WOFN_HOME/rounds/round_k/<table>)
--   rounds_west_of_n_pairs  (round + wofn.schemas.PAIRS)  round, prompt_id, chosen_idx,
--                           rejected_idx, reward_model
--   rounds_filtered_pairs   (round + wofn.schemas.PAIRS)  round, prompt_id, confidence,
--                           chosen_num_tokens, rejected_num_tokens
--
-- Produces: one row per round, with columns round, teacher, selected, kept, kept_share,
--   mean_confidence_kept, chosen_longer_share_kept, chosen_shorter_share_kept,
--   mean_length_gap_kept, same_pair_as_previous, flipped_vs_previous
--
-- Parameters: none.
--
-- teacher = the reward model that scored the round's candidates (the previous round's student
-- from round 2 on). Over the round's selected pairs whose prompt had a pair in the round before:
-- same_pair_as_previous = share with the same chosen and rejected candidate; flipped_vs_previous
-- = share whose chosen was the previous round's rejected and vice versa (NULL for round 1).
-- Lengths in policy tokens over the kept pairs; confidence = sigmoid(margin) under the round's
-- teacher, so rounds with different teachers are on different scales.
--
--   wofn sql sql/analysis/rounds.sql

with

selected as (

    select round, prompt_id, chosen_idx, rejected_idx, reward_model from rounds_west_of_n_pairs

),

kept as (

    select round, prompt_id, confidence, chosen_num_tokens, rejected_num_tokens from rounds_filtered_pairs

),

compared as (

    select
        selected.round,
        previous.prompt_id is not null as had_previous,
        previous.chosen_idx = selected.chosen_idx and previous.rejected_idx = selected.rejected_idx as same_pair,
        previous.chosen_idx = selected.rejected_idx and previous.rejected_idx = selected.chosen_idx as flipped
    from selected
    left join selected as previous
        on previous.round = selected.round - 1
        and previous.prompt_id = selected.prompt_id

),

per_round_selected as (

    select
        selected.round,
        min(selected.reward_model) as teacher,
        count(*) as selected
    from selected
    group by selected.round

),

per_round_changes as (

    select
        round,
        avg(case when same_pair then 1.0 else 0.0 end) filter (where had_previous) as same_pair_as_previous,
        avg(case when flipped then 1.0 else 0.0 end) filter (where had_previous) as flipped_vs_previous
    from compared
    group by round

),

per_round_kept as (

    select
        round,
        count(*) as kept,
        avg(confidence) as mean_confidence_kept,
        avg(case when chosen_num_tokens > rejected_num_tokens then 1.0 else 0.0 end) as chosen_longer_share_kept,
        avg(case when chosen_num_tokens < rejected_num_tokens then 1.0 else 0.0 end) as chosen_shorter_share_kept,
        avg(chosen_num_tokens - rejected_num_tokens) as mean_length_gap_kept
    from kept
    group by round

),

final as (

    select
        per_round_selected.round,
        per_round_selected.teacher,
        per_round_selected.selected,
        coalesce(per_round_kept.kept, 0) as kept,
        round(coalesce(per_round_kept.kept, 0) / per_round_selected.selected, 3) as kept_share,
        round(per_round_kept.mean_confidence_kept, 4) as mean_confidence_kept,
        round(per_round_kept.chosen_longer_share_kept, 3) as chosen_longer_share_kept,
        round(per_round_kept.chosen_shorter_share_kept, 3) as chosen_shorter_share_kept,
        round(per_round_kept.mean_length_gap_kept, 2) as mean_length_gap_kept,
        round(per_round_changes.same_pair_as_previous, 3) as same_pair_as_previous,
        round(per_round_changes.flipped_vs_previous, 3) as flipped_vs_previous
    from per_round_selected
    left join per_round_kept
        on per_round_selected.round = per_round_kept.round
    left join per_round_changes
        on per_round_selected.round = per_round_changes.round

)

select * from final
order by round
