-- strategies/west_of_n: best vs worst candidate per prompt, the West-of-N method (Pace et al.
-- 2024): the teacher's highest- and lowest-rewarded of the N responses.
--
-- Reads:
--   candidate_pool  (wofn.schemas.CANDIDATE_POOL)  prompt_id, candidate_idx, reward, is_valid
--
-- Produces (wofn.schemas.PAIR_PICKS, in this order; two rows per prompt with 2 or more valid candidates):
--   prompt_id, candidate_idx, pick
--
-- Parameters: none (nothing is random; label_picks gets pair_seed NULL).
--
-- Picks: best = highest reward, ties broken by the lowest candidate_idx; worst = lowest reward,
-- ties broken by the highest candidate_idx (so best and worst differ when n_valid >= 2).
--
-- The candidate pool (the same for every strategy: sql/candidate_pool.sql) holds the valid
-- candidates, duplicate rows collapsed; n_valid counts them. Labelling and outcome (the same for
-- every strategy: sql/label_picks.sql): chosen = the higher-reward pick; policy comes from the chosen
-- candidate's row, reward_model from its score row.
-- wofn.pairs.draw_pairs runs candidate_pool, prompt_summary, this file, then label_picks, which
-- turns the picks into pair_draws (wofn.schemas.PAIR_DRAWS).

with

-- ---- shared candidate pool (sql/candidate_pool.sql; the same text in every strategy file) ----

valid_candidates as (

    select prompt_id, candidate_idx, reward
    from candidate_pool
    where is_valid

),

-- ---- end of the shared candidate pool ----

ranked as (

    select
        *,
        row_number() over (partition by prompt_id order by reward desc, candidate_idx asc) as best_rank,
        row_number() over (partition by prompt_id order by reward asc, candidate_idx desc) as worst_rank,
        count(*) over (partition by prompt_id) as n_valid
    from valid_candidates

),

picks as (

    -- pick 1 = the best, pick 2 = the worst
    select prompt_id, candidate_idx, 1 as pick
    from ranked
    where best_rank = 1 and n_valid >= 2
    union all
    select prompt_id, candidate_idx, 2 as pick
    from ranked
    where worst_rank = 1 and n_valid >= 2

),

-- ---- shared labelling (sql/label_picks.sql labels the picks; the same text in every strategy file) ----

final as (

    select prompt_id, candidate_idx, cast(pick as integer) as pick
    from picks

)

-- ---- end of the shared labelling ----

select * from final
order by prompt_id, pick
