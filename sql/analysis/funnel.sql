-- analysis/funnel: from prompts to filtered pairs, every loss on the way, for the selected
-- strategy: the prompt-level reasons of pair_selection_report, then the steps of pair_funnel.
--
-- Reads:
--   pair_selection_report  (wofn.schemas.SELECTION_REPORT)  strategy, step, reason, unit, count
--   pair_funnel            (wofn.schemas.PAIR_FUNNEL)       every column
--
-- Produces: one row per stage, in order, with columns
--   step, stage, count, share_of_prompts, setting, chosen_longer_share, chosen_shorter_share,
--   mean_length_gap
--
-- Parameters: none.
--
-- Stages: "prompts" (prompts with candidates); "no pair: <reason>" (prompts that gave no pair,
-- per reason); then each filter step with the pairs it kept ("selected" = every pair), and
-- "length_balance" when the run balanced the kept pairs (length_balance: true). Lengths
-- (policy tokens) describe the pairs kept at that step: chosen_longer_share / chosen_shorter_share
-- = share whose chosen response is longer / shorter than the rejected one; mean_length_gap =
-- mean(chosen - rejected tokens).
--
--   wofn sql sql/analysis/funnel.sql

with

funnel as (

    select * from pair_funnel

),

report as (

    select pair_selection_report.*
    from pair_selection_report
    inner join (select distinct strategy from funnel) as selected
        on pair_selection_report.strategy = selected.strategy

),

prompts as (

    select count as n from report where reason = 'prompts'

),

stages as (

    select
        step as stage_order,
        case when reason = 'prompts' then 'prompts' else 'no pair: ' || reason end as stage,
        count,
        cast(null as varchar) as setting,
        cast(null as double) as chosen_longer_share,
        cast(null as double) as chosen_shorter_share,
        cast(null as double) as mean_length_gap
    from report
    where unit = 'prompts' and reason <> 'pairs'
    union all
    select
        100 + step_order,
        step,
        pairs_kept,
        setting,
        chosen_longer_share,
        chosen_shorter_share,
        mean_length_gap
    from funnel

),

final as (

    select
        cast(row_number() over (order by stages.stage_order) as integer) as step,
        stages.stage,
        stages.count,
        round(stages.count / nullif(prompts.n, 0), 3) as share_of_prompts,
        stages.setting,
        round(stages.chosen_longer_share, 3) as chosen_longer_share,
        round(stages.chosen_shorter_share, 3) as chosen_shorter_share,
        round(stages.mean_length_gap, 2) as mean_length_gap
    from stages
    cross join prompts

)

select * from final
order by step
