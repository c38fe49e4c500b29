-- strategies/extreme_vs_random: the best (strategy best_vs_random) or the worst (worst_vs_random)
-- candidate vs a random other one, labelled by the teacher (West-of-N ablation baselines, Pace et al.
-- 2024; worst_vs_random is the mirror of best_vs_random).
--
-- Reads:
--   candidate_pool  (wofn.schemas.CANDIDATE_POOL)  prompt_id, candidate_idx, reward, is_valid
--
-- Produces (wofn.schemas.PAIR_PICKS, in this order; two rows per prompt with 2 or more valid candidates):
--   prompt_id, candidate_idx, pick
--
-- Parameters (DuckDB named parameters, bound from Python, e.g. {"seed": 0, "extreme": "best"}):
--   $seed     BIGINT: the draw's seed (pair_seed); another seed gives another draw. Anything that is
--             not an integer (NULL, 0.5, text) is an error.
--   $extreme  VARCHAR: 'best' or 'worst' (anything else is an error), the fixed pick.
--
-- Randomness is a hash, so reruns give the same pairs: a candidate's draw key is
--   md5(prompt_id || ':' || candidate_idx || ':' || seed)    (hex text; the lowest key wins)
-- (md5 rather than DuckDB's hash(), which is not promised stable across DuckDB versions).
--
-- Picks: best = highest reward, ties broken by the lowest candidate_idx; worst = lowest reward, ties
-- broken by the highest candidate_idx (both as in west_of_n); the other = the valid candidate with
-- the lowest draw key among the rest. When the other ties with the fixed pick, the outcome is
-- tied_rewards (no pair).
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

draw_params as (

    select
        case
            when cast($seed as varchar) = cast(try_cast($seed as bigint) as varchar)
                then cast($seed as bigint)
            else error('strategies/extreme_vs_random: seed must be an integer, got '
                || coalesce(cast($seed as varchar), 'NULL'))
        end as pair_seed,
        case
            when $extreme = 'best' then 1
            when $extreme = 'worst' then -1
            else error('strategies/extreme_vs_random: extreme must be ''best'' or ''worst'', got '
                || coalesce(cast($extreme as varchar), 'NULL'))
        end as direction

),

ranked as (

    select
        valid_candidates.*,
        row_number() over (
            partition by valid_candidates.prompt_id
            -- best: reward desc, candidate_idx asc; worst: reward asc, candidate_idx desc
            order by draw_params.direction * reward desc, draw_params.direction * candidate_idx asc
        ) as extreme_rank,
        md5(valid_candidates.prompt_id || ':' || cast(valid_candidates.candidate_idx as varchar)
            || ':' || cast(draw_params.pair_seed as varchar)) as draw_key,
        count(*) over (partition by valid_candidates.prompt_id) as n_valid
    from valid_candidates
    cross join draw_params

),

others as (

    -- every valid candidate but the fixed pick, in draw order
    select
        *,
        row_number() over (partition by prompt_id order by draw_key, candidate_idx) as draw_rank
    from ranked
    where extreme_rank > 1

),

picks as (

    -- pick 1 = the best (worst), pick 2 = a random other candidate
    select prompt_id, candidate_idx, 1 as pick
    from ranked
    where extreme_rank = 1 and n_valid >= 2
    union all
    select prompt_id, candidate_idx, 2 as pick
    from others
    where draw_rank = 1

),

-- ---- shared labelling (sql/label_picks.sql labels the picks; the same text in every strategy file) ----

final as (

    select prompt_id, candidate_idx, cast(pick as integer) as pick
    from picks

)

-- ---- end of the shared labelling ----

select * from final
order by prompt_id, pick
