-- pair_selection_report: how pair selection went, per strategy: every reason a candidate or a
-- prompt was left out, counted, zeros included.
--
-- Reads:
--   candidates        (wofn.schemas.CANDIDATES)        prompt_id, candidate_idx, response
--   candidate_scores  (wofn.schemas.CANDIDATE_SCORES)  prompt_id, candidate_idx, reward
--   pair_draws        (wofn.schemas.PAIR_DRAWS)        strategy, pair_seed, prompt_id, outcome
--
-- Produces (wofn.schemas.SELECTION_REPORT, in this order):
--   strategy, pair_seed, selected, step, reason, unit, count
--
-- Parameters (DuckDB named parameters, bound from Python, e.g. {"strategy": "west_of_n"}):
--   $strategy  VARCHAR: the strategy whose pairs are west_of_n_pairs (selected = true); one of
--              west_of_n, random_pair, best_vs_random, worst_vs_random, else an error.
--   $length_control  VARCHAR: the length control the draws were made with (none, residual,
--              residual_per_prompt, band, finished; else an error). candidate_scores are the
--              teacher's own scores either way; under 'band' step 11 is named
--              fewer_than_2_in_band (the draws only saw the candidates within the band of the
--              best one), under 'finished' fewer_than_2_finished (only those that ended with EOS).
--
-- One row per (strategy in pair_draws, reason), by step. The candidate rules are those of
-- sql/candidate_pool.sql; the candidate-level counts are the same for every strategy.
--   1  candidate_rows            rows        rows of candidates
--   2  duplicate_candidate_rows  rows        rows beyond the first of a (prompt_id, candidate_idx)
--   3  duplicate_score_rows      rows        the same, in candidate_scores
--   4  scores_without_candidate  rows        candidate_scores rows of no candidate (ignored)
--   5  conflicting_copies        candidates  duplicate rows that disagree (response or reward): dropped
--   6  unscored_candidates       candidates  no candidate_scores row: dropped
--   7  null_reward               candidates  reward is NULL: dropped
--   8  nonfinite_reward          candidates  reward is NaN, +inf or -inf: dropped
--   9  valid_candidates          candidates  the rest; 5 + 6 + 7 + 8 + 9 = distinct candidates
--  10  prompts                   prompts     prompt_ids with candidate rows
--  11  fewer_than_2_valid        prompts     no pair: fewer than 2 valid candidates (under 'band':
--      fewer_than_2_in_band                  fewer than 2 valid candidates within the length band;
--      fewer_than_2_finished                 under 'finished': fewer than 2 valid finished ones)
--  12  all_rewards_equal         prompts     no pair: every valid candidate has the same reward
--  13  tied_rewards              prompts     no pair: the strategy's two picks tie
--  14  identical_texts           prompts     no pair: the two picks have the same text
--  15  pairs                     prompts     a pair; 11 + 12 + 13 + 14 + 15 = 10
-- Ordered by strategy (west_of_n, random_pair, best_vs_random, worst_vs_random), then step.

with

checked_params as (

    select
        case
            when $strategy in ('west_of_n', 'random_pair', 'best_vs_random', 'worst_vs_random')
                then $strategy
            else error('selection_report: strategy must be one of west_of_n, random_pair, '
                || 'best_vs_random, worst_vs_random; got ' || coalesce(cast($strategy as varchar), 'NULL'))
        end as selected_strategy,
        case
            when $length_control in ('none', 'residual', 'residual_per_prompt') then 'fewer_than_2_valid'
            when $length_control = 'band' then 'fewer_than_2_in_band'
            when $length_control = 'finished' then 'fewer_than_2_finished'
            else error('selection_report: length_control must be one of none, residual, '
                || 'residual_per_prompt, band, finished; got ' || coalesce(cast($length_control as varchar), 'NULL'))
        end as too_few_reason

),

candidate_keys as (

    select
        prompt_id,
        candidate_idx,
        count(*) as copies,
        min(response) = max(response) as copies_agree
    from candidates
    group by prompt_id, candidate_idx

),

score_keys as (

    select
        prompt_id,
        candidate_idx,
        count(*) as copies,
        count(reward) = 0
            or (count(reward) = count(*) and min(reward) = max(reward)) as copies_agree,
        min(reward) as reward
    from candidate_scores
    group by prompt_id, candidate_idx

),

candidate_status as (

    select
        case
            when not candidate_keys.copies_agree
                or not coalesce(score_keys.copies_agree, true) then 'conflicting_copies'
            when score_keys.prompt_id is null then 'unscored_candidates'
            when score_keys.reward is null then 'null_reward'
            when not isfinite(score_keys.reward) then 'nonfinite_reward'
            else 'valid_candidates'
        end as status
    from candidate_keys
    left join score_keys
        on candidate_keys.prompt_id = score_keys.prompt_id
        and candidate_keys.candidate_idx = score_keys.candidate_idx

),

orphan_scores as (

    select score_keys.copies
    from score_keys
    anti join candidate_keys
        on score_keys.prompt_id = candidate_keys.prompt_id
        and score_keys.candidate_idx = candidate_keys.candidate_idx

),

candidate_counts as (

    select 1 as step, 'candidate_rows' as reason, 'rows' as unit, count(*) as count
    from candidates
    union all
    select 2, 'duplicate_candidate_rows', 'rows', coalesce(sum(copies - 1), 0) from candidate_keys
    union all
    select 3, 'duplicate_score_rows', 'rows', coalesce(sum(copies - 1), 0) from score_keys
    union all
    select 4, 'scores_without_candidate', 'rows', coalesce(sum(copies), 0) from orphan_scores
    union all
    select 5, 'conflicting_copies', 'candidates', count(*) filter (where status = 'conflicting_copies')
    from candidate_status
    union all
    select 6, 'unscored_candidates', 'candidates', count(*) filter (where status = 'unscored_candidates')
    from candidate_status
    union all
    select 7, 'null_reward', 'candidates', count(*) filter (where status = 'null_reward')
    from candidate_status
    union all
    select 8, 'nonfinite_reward', 'candidates', count(*) filter (where status = 'nonfinite_reward')
    from candidate_status
    union all
    select 9, 'valid_candidates', 'candidates', count(*) filter (where status = 'valid_candidates')
    from candidate_status

),

strategies as (

    select
        strategy,
        min(pair_seed) as pair_seed,
        count(*) as prompts
    from pair_draws
    group by strategy

),

outcomes as (

    select *
    from (values
        (11, 'fewer_than_2_valid', 'fewer_than_2_valid'),
        (12, 'all_rewards_equal', 'all_rewards_equal'),
        (13, 'tied_rewards', 'tied_rewards'),
        (14, 'identical_texts', 'identical_texts'),
        (15, 'pair', 'pairs')
    ) as t(step, outcome, reason)

),

outcome_counts as (

    select
        strategies.strategy,
        outcomes.step,
        case when outcomes.step = 11 then checked_params.too_few_reason else outcomes.reason end as reason,
        'prompts' as unit,
        count(pair_draws.prompt_id) as count
    from strategies
    cross join outcomes
    cross join checked_params
    left join pair_draws
        on pair_draws.strategy = strategies.strategy
        and pair_draws.outcome = outcomes.outcome
    group by strategies.strategy, outcomes.step, outcomes.reason, checked_params.too_few_reason

),

report as (

    select strategies.strategy, candidate_counts.step, candidate_counts.reason, candidate_counts.unit,
        candidate_counts.count
    from strategies
    cross join candidate_counts
    union all
    select strategy, 10, 'prompts', 'prompts', prompts
    from strategies
    union all
    select strategy, step, reason, unit, count
    from outcome_counts

),

final as (

    select
        report.strategy,
        strategies.pair_seed,
        report.strategy = checked_params.selected_strategy as selected,
        cast(report.step as integer) as step,
        report.reason,
        report.unit,
        cast(report.count as bigint) as count
    from report
    inner join strategies
        on report.strategy = strategies.strategy
    cross join checked_params

)

select * from final
order by
    list_position(['west_of_n', 'random_pair', 'best_vs_random', 'worst_vs_random'], strategy),
    step
