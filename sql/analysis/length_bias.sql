-- analysis/length_bias: is the chosen response longer or shorter than the rejected one? In the
-- synthetic pairs (before and after the filters) and, for reference, in the human pairs.
--
-- Reads:
--   west_of_n_pairs    (wofn.schemas.PAIRS)        prompt_id, chosen, rejected,
--                                                  chosen_num_tokens, rejected_num_tokens
--   filtered_pairs     (wofn.schemas.PAIRS)        prompt_id
--   human_preferences  (wofn.schemas.PREFERENCES)  chosen, rejected
--
-- Produces: one row per pair set (west_of_n_pairs, filtered_pairs, dropped_by_filters = selected
--   but not kept, human_preferences; empty sets too), with columns pair_set, pairs, chosen_longer_share,
--   chosen_shorter_share, mean_chosen_tokens, mean_rejected_tokens, mean_length_gap,
--   chosen_longer_share_chars, mean_length_gap_chars
--
-- Parameters: none.
--
-- Token columns count policy tokens (EOS included); the human pairs have none (NULL), so the
-- _chars columns compare the texts' lengths in characters for every set.
-- chosen_longer_share / chosen_shorter_share = share of pairs whose chosen response has more /
-- fewer tokens than the rejected one (equal lengths count in neither); mean_length_gap =
-- mean(chosen - rejected tokens). A reward model that prefers short answers gives synthetic
-- pairs with a negative gap; a student trained on them learns that preference.
--
--   wofn sql sql/analysis/length_bias.sql

with

kept as (

    select distinct prompt_id from filtered_pairs

),

synthetic as (

    select
        case when kept.prompt_id is null then 'dropped_by_filters' else 'filtered_pairs' end as filter_set,
        west_of_n_pairs.chosen_num_tokens,
        west_of_n_pairs.rejected_num_tokens,
        length(west_of_n_pairs.chosen) as chosen_chars,
        length(west_of_n_pairs.rejected) as rejected_chars
    from west_of_n_pairs
    left join kept
        on west_of_n_pairs.prompt_id = kept.prompt_id

),

pair_sets as (

    select 1 as set_order, chosen_num_tokens, rejected_num_tokens, chosen_chars, rejected_chars
    from synthetic
    union all
    select 2, chosen_num_tokens, rejected_num_tokens, chosen_chars, rejected_chars
    from synthetic
    where filter_set = 'filtered_pairs'
    union all
    select 3, chosen_num_tokens, rejected_num_tokens, chosen_chars, rejected_chars
    from synthetic
    where filter_set = 'dropped_by_filters'
    union all
    select 4, cast(null as integer), cast(null as integer), length(chosen), length(rejected)
    from human_preferences

),

set_names as (

    select *
    from (values
        (1, 'west_of_n_pairs'), (2, 'filtered_pairs'), (3, 'dropped_by_filters'), (4, 'human_preferences')
    ) as t(set_order, pair_set)

),

final as (

    select
        set_names.pair_set,
        count(pair_sets.set_order) as pairs,
        round(avg(case when pair_sets.chosen_num_tokens > pair_sets.rejected_num_tokens then 1.0
                       when pair_sets.chosen_num_tokens is not null then 0.0 end), 3) as chosen_longer_share,
        round(avg(case when pair_sets.chosen_num_tokens < pair_sets.rejected_num_tokens then 1.0
                       when pair_sets.chosen_num_tokens is not null then 0.0 end), 3) as chosen_shorter_share,
        round(avg(pair_sets.chosen_num_tokens), 2) as mean_chosen_tokens,
        round(avg(pair_sets.rejected_num_tokens), 2) as mean_rejected_tokens,
        round(avg(pair_sets.chosen_num_tokens - pair_sets.rejected_num_tokens), 2) as mean_length_gap,
        round(avg(case when pair_sets.chosen_chars > pair_sets.rejected_chars then 1.0
                       when pair_sets.chosen_chars is not null then 0.0 end), 3) as chosen_longer_share_chars,
        round(avg(pair_sets.chosen_chars - pair_sets.rejected_chars), 1) as mean_length_gap_chars
    from set_names
    left join pair_sets
        on set_names.set_order = pair_sets.set_order
    group by set_names.set_order, set_names.pair_set

)

select * from final
order by list_position(['west_of_n_pairs', 'filtered_pairs', 'dropped_by_filters', 'human_preferences'], pair_set)
