-- analysis/teacher_student_agreement: does the student reward model, trained on the synthetic
-- pairs, agree with the teacher that labelled them? On the pairs it was trained on, and on the
-- selected pairs the filters dropped (which it never saw).
--
-- Reads:
--   west_of_n_pairs  (wofn.schemas.PAIRS)  prompt_id, chosen_idx, rejected_idx, margin
--   filtered_pairs   (wofn.schemas.PAIRS)  prompt_id
--   student_scores   (wofn.schemas.CANDIDATE_SCORES: prompt_id, candidate_idx, reward): the
--                    student's reward for every candidate. Not a pipeline table: score the
--                    candidates with the student and pass the folder with --view, e.g.
--                      python -m beam_jobs.score_candidates --candidates .wofn/tables/candidates \
--                          --output /tmp/student_scores --reward-model .wofn/models/student_reward_model
--                      wofn sql sql/analysis/teacher_student_agreement.sql --view student_scores=/tmp/student_scores
--                    In a run with rounds >= 2, .wofn/rounds/round_2/candidate_scores are round 1's
--                    student's rewards already (round 2 uses that student as its teacher).
--
-- Produces: one row per pair set (filtered_pairs = the student's synthetic training pairs,
--   dropped_by_filters, west_of_n_pairs = both), with columns pair_set, pairs, scored (both
--   responses have a valid student reward), student_agrees (share of scored pairs where the
--   student's reward for chosen > rejected), student_ties, mean_teacher_margin,
--   mean_student_margin, margin_correlation (Pearson, teacher vs student margin)
--
-- Parameters: none.
--
-- A candidate's student reward counts when its score rows agree and it is finite (the rule of
-- sql/candidate_pool.sql). Margins are each model's own reward units.

with

student as (

    select
        prompt_id,
        candidate_idx,
        min(reward) as reward
    from student_scores
    group by prompt_id, candidate_idx
    having (count(reward) = count(*) and min(reward) = max(reward))
        and isfinite(min(reward))

),

kept as (

    select distinct prompt_id from filtered_pairs

),

judged as (

    select
        case when kept.prompt_id is null then 3 else 2 end as set_order,
        west_of_n_pairs.margin as teacher_margin,
        chosen_student.reward - rejected_student.reward as student_margin
    from west_of_n_pairs
    left join kept
        on west_of_n_pairs.prompt_id = kept.prompt_id
    left join student as chosen_student
        on west_of_n_pairs.prompt_id = chosen_student.prompt_id
        and west_of_n_pairs.chosen_idx = chosen_student.candidate_idx
    left join student as rejected_student
        on west_of_n_pairs.prompt_id = rejected_student.prompt_id
        and west_of_n_pairs.rejected_idx = rejected_student.candidate_idx

),

pair_sets as (

    select set_order, teacher_margin, student_margin from judged
    union all
    select 1, teacher_margin, student_margin from judged

),

set_names as (

    select *
    from (values (1, 'west_of_n_pairs'), (2, 'filtered_pairs'), (3, 'dropped_by_filters')) as t(set_order, pair_set)

),

final as (

    select
        set_names.pair_set,
        count(pair_sets.set_order) as pairs,
        count(pair_sets.student_margin) as scored,
        round(avg(case when pair_sets.student_margin > 0 then 1.0 else 0.0 end)
            filter (where pair_sets.student_margin is not null), 3) as student_agrees,
        round(avg(case when pair_sets.student_margin = 0 then 1.0 else 0.0 end)
            filter (where pair_sets.student_margin is not null), 3) as student_ties,
        round(avg(pair_sets.teacher_margin), 4) as mean_teacher_margin,
        round(avg(pair_sets.student_margin), 4) as mean_student_margin,
        round(corr(pair_sets.teacher_margin, pair_sets.student_margin), 3) as margin_correlation
    from set_names
    left join pair_sets
        on set_names.set_order = pair_sets.set_order
    group by set_names.set_order, set_names.pair_set

)

select * from final
order by list_position(['west_of_n_pairs', 'filtered_pairs', 'dropped_by_filters'], pair_set)
