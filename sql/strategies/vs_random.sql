-- strategies/vs_random: an anchor candidate vs a random other one, labelled by the teacher: the
-- West-of-N baselines of Pace et al. 2024. The anchor is the best candidate (strategy
-- best_vs_random), the worst (worst_vs_random, its mirror) or a random one (random_pair: two random
-- candidates, the paper's naive self-training baseline).
--
-- Reads:
--   candidate_pool  (wofn.schemas.CANDIDATE_POOL)  prompt_id, candidate_idx, reward, is_valid
--
-- Produces (wofn.schemas.PAIR_PICKS, in this order; two rows per prompt with 2 or more valid candidates):
--   prompt_id, candidate_idx, pick
--
-- Parameters (DuckDB named parameters, bound from Python, e.g. {"seed": 0, "anchor": "best"}):
--   $seed    BIGINT: the draw's seed (pair_seed); another seed gives another draw. Anything that is
--            not an integer (NULL, 0.5, text) is an error.
--   $anchor  VARCHAR: 'best', 'worst' or 'random' (anything else is an error), the first pick.
--
-- Randomness is a hash, so reruns give the same pairs: a candidate's draw key is
--   md5(prompt_id || ':' || candidate_idx || ':' || seed)    (hex text; the lowest key wins)
-- (md5 rather than DuckDB's hash(), which is not promised stable across DuckDB versions).
--
-- Picks: the anchor (pick 1) is, for best, the highest reward, ties broken by the lowest
-- candidate_idx; for worst, the lowest reward, ties broken by the highest candidate_idx (both as in
-- west_of_n); for random, the valid candidate with the lowest draw key. Pick 2 = the valid candidate
-- with the lowest draw key among the rest (ties, never seen, by candidate_idx). When pick 2 ties
-- with the anchor, the outcome is tied_rewards (no pair).
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
            else error('strategies/vs_random: seed must be an integer, got '
                || coalesce(cast($seed as varchar), 'NULL'))
        end as pair_seed,
        case
            when $anchor = 'best' then 1
            when $anchor = 'worst' then -1
            when $anchor = 'random' then 0
            else error('strategies/vs_random: anchor must be ''best'', ''worst'' or ''random'', got '
                || coalesce(cast($anchor as varchar), 'NULL'))
        end as direction

),

keyed as (

    select
        valid_candidates.*,
        draw_params.direction,
        md5(valid_candidates.prompt_id || ':' || cast(valid_candidates.candidate_idx as varchar)
            || ':' || cast(draw_params.pair_seed as varchar)) as draw_key
    from valid_candidates
    cross join draw_params

),

ranked as (

    select
        *,
        -- best: reward desc, candidate_idx asc; worst: reward asc, candidate_idx desc; random
        -- (direction 0): the draw key
        row_number() over (
            partition by prompt_id
            order by direction * reward desc, direction * candidate_idx asc, draw_key, candidate_idx
        ) as anchor_rank,
        count(*) over (partition by prompt_id) as n_valid
    from keyed

),

others as (

    -- every valid candidate but the anchor, in draw order
    select
        *,
        row_number() over (partition by prompt_id order by draw_key, candidate_idx) as draw_rank
    from ranked
    where anchor_rank > 1

),

picks as (

    -- pick 1 = the anchor, pick 2 = a random other candidate
    select prompt_id, candidate_idx, 1 as pick
    from ranked
    where anchor_rank = 1 and n_valid >= 2
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
