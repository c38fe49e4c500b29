-- pair_selection_report for a pairwise teacher: how West-of-N selection by knockout tournaments
-- went, every reason a prompt has no pair counted, zeros included.
--
-- Reads:
--   candidates        (wofn.schemas.CANDIDATES)        prompt_id, candidate_idx
--   tournament_pairs  (wofn.schemas.TOURNAMENT_PAIRS)  prompt_id
--   pair_draws        (wofn.schemas.PAIR_DRAWS, written by sql/label_tournaments.sql)  outcome
--
-- Produces (wofn.schemas.SELECTION_REPORT, in this order):
--   strategy, pair_seed, selected, step, reason, unit, count
--
-- Parameters: none (a pairwise teacher supports only west_of_n: strategy = 'west_of_n',
-- pair_seed = NULL, selected = true).
--
-- One row per reason, by step; the outcomes (5 to 9) are sql/label_tournaments.sql's, counted:
--   1  candidate_rows            rows     rows of candidates
--   2  duplicate_candidate_rows  rows     rows beyond the first of a (prompt_id, candidate_idx)
--   3  duplicate_tournament_rows rows     tournament_pairs rows beyond the first of a prompt_id
--   4  prompts                   prompts  prompt_ids with candidate rows (one draw each)
--   5  no_tournament_pair        prompts  no pair: the teacher wrote no tournament row
--   6  teacher_prefers_rejected  prompts  no pair: the direct comparison's logit is <= 0 or not finite
--   7  missing_candidate         prompts  no pair: chosen_idx = rejected_idx, or a candidate row is missing
--   8  identical_texts           prompts  no pair: the two responses have the same text
--   9  pairs                     prompts  a pair; 5 + 6 + 7 + 8 + 9 = 4
-- Ordered by step.

with

candidate_keys as (

    select prompt_id, candidate_idx, count(*) as copies
    from candidates
    group by prompt_id, candidate_idx

),

tournament_keys as (

    select prompt_id, count(*) as copies
    from tournament_pairs
    group by prompt_id

),

outcomes as (

    select *
    from (values
        (5, 'no_tournament_pair', 'no_tournament_pair'),
        (6, 'teacher_prefers_rejected', 'teacher_prefers_rejected'),
        (7, 'missing_candidate', 'missing_candidate'),
        (8, 'identical_texts', 'identical_texts'),
        (9, 'pair', 'pairs')
    ) as t(step, outcome, reason)

),

outcome_counts as (

    select outcomes.step, outcomes.reason, 'prompts' as unit, count(pair_draws.prompt_id) as count
    from outcomes
    left join pair_draws
        on pair_draws.outcome = outcomes.outcome
    group by outcomes.step, outcomes.reason

),

report as (

    select 1 as step, 'candidate_rows' as reason, 'rows' as unit, count(*) as count
    from candidates
    union all
    select 2, 'duplicate_candidate_rows', 'rows', coalesce(sum(copies - 1), 0) from candidate_keys
    union all
    select 3, 'duplicate_tournament_rows', 'rows', coalesce(sum(copies - 1), 0) from tournament_keys
    union all
    select 4, 'prompts', 'prompts', count(*) from pair_draws
    union all
    select step, reason, unit, count from outcome_counts

),

final as (

    select
        'west_of_n' as strategy,
        cast(null as bigint) as pair_seed,
        true as selected,
        cast(step as integer) as step,
        reason,
        unit,
        cast(count as bigint) as count
    from report

)

select * from final
order by step
