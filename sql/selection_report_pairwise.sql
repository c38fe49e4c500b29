-- pair_selection_report for a pairwise teacher: how West-of-N selection by knockout tournaments
-- went, every reason a prompt has no pair counted, zeros included.
--
-- Reads:
--   candidates        (wofn.schemas.CANDIDATES)        prompt_id, candidate_idx, response
--   tournament_pairs  (wofn.schemas.TOURNAMENT_PAIRS)  prompt_id, chosen_idx, rejected_idx, logit
--
-- Produces (wofn.schemas.SELECTION_REPORT, in this order):
--   strategy, pair_seed, selected, step, reason, unit, count
--
-- Parameters: none (a pairwise teacher supports only west_of_n: strategy = 'west_of_n',
-- pair_seed = NULL, selected = true).
--
-- The rules are those of sql/west_of_n_pairs_pairwise.sql; one row per reason, by step:
--   1  candidate_rows            rows     rows of candidates
--   2  duplicate_candidate_rows  rows     rows beyond the first of a (prompt_id, candidate_idx)
--   3  duplicate_tournament_rows rows     tournament_pairs rows beyond the first of a prompt_id
--   4  prompts                   prompts  prompt_ids with candidate rows
--   5  no_tournament_pair        prompts  no pair: the teacher wrote no tournament row (fewer
--                                         than 2 candidates, or best and worst brackets ended
--                                         on the same candidate)
--   6  teacher_prefers_rejected  prompts  no pair: the direct comparison's logit is NULL, not
--                                         finite, or <= 0 (a tie included)
--   7  missing_candidate         prompts  no pair: chosen_idx = rejected_idx, or one of them has
--                                         no candidate row
--   8  identical_texts           prompts  no pair: the two responses have the same text
--   9  pairs                     prompts  a pair; 5 + 6 + 7 + 8 + 9 = 4
-- Ordered by step.

with

candidate_keys as (

    select
        prompt_id,
        candidate_idx,
        count(*) as copies,
        min(response) as response
    from candidates
    group by prompt_id, candidate_idx

),

tournament_rows as (

    select
        prompt_id,
        chosen_idx,
        rejected_idx,
        logit,
        row_number() over (
            partition by prompt_id
            order by chosen_idx, rejected_idx, logit, reward_model
        ) as copy_rank
    from tournament_pairs

),

prompts as (

    select distinct prompt_id from candidate_keys

),

prompt_outcomes as (

    select
        case
            when tournament_rows.prompt_id is null then 'no_tournament_pair'
            when tournament_rows.logit is null
                or not isfinite(tournament_rows.logit)
                or tournament_rows.logit <= 0 then 'teacher_prefers_rejected'
            when tournament_rows.chosen_idx = tournament_rows.rejected_idx
                or chosen_candidate.prompt_id is null
                or rejected_candidate.prompt_id is null then 'missing_candidate'
            when chosen_candidate.response = rejected_candidate.response then 'identical_texts'
            else 'pairs'
        end as outcome
    from prompts
    left join tournament_rows
        on prompts.prompt_id = tournament_rows.prompt_id
        and tournament_rows.copy_rank = 1
    left join candidate_keys as chosen_candidate
        on tournament_rows.prompt_id = chosen_candidate.prompt_id
        and tournament_rows.chosen_idx = chosen_candidate.candidate_idx
    left join candidate_keys as rejected_candidate
        on tournament_rows.prompt_id = rejected_candidate.prompt_id
        and tournament_rows.rejected_idx = rejected_candidate.candidate_idx

),

report as (

    select 1 as step, 'candidate_rows' as reason, 'rows' as unit, count(*) as count
    from candidates
    union all
    select 2, 'duplicate_candidate_rows', 'rows', coalesce(sum(copies - 1), 0) from candidate_keys
    union all
    select 3, 'duplicate_tournament_rows', 'rows', count(*) filter (where copy_rank > 1)
    from tournament_rows
    union all
    select 4, 'prompts', 'prompts', count(*) from prompts
    union all
    select 5, 'no_tournament_pair', 'prompts', count(*) filter (where outcome = 'no_tournament_pair')
    from prompt_outcomes
    union all
    select 6, 'teacher_prefers_rejected', 'prompts',
        count(*) filter (where outcome = 'teacher_prefers_rejected')
    from prompt_outcomes
    union all
    select 7, 'missing_candidate', 'prompts', count(*) filter (where outcome = 'missing_candidate')
    from prompt_outcomes
    union all
    select 8, 'identical_texts', 'prompts', count(*) filter (where outcome = 'identical_texts')
    from prompt_outcomes
    union all
    select 9, 'pairs', 'prompts', count(*) filter (where outcome = 'pairs')
    from prompt_outcomes

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
