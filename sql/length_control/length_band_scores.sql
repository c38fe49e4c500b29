-- length_control/length_band_scores: candidate_scores restricted to the candidates about as long
-- as their prompt's best candidate, so that a strategy (west_of_n: best vs worst) compares
-- responses of similar length and its pairs cannot teach "shorter is better".
--
-- Reads:
--   candidate_pool    (wofn.schemas.CANDIDATE_POOL)     prompt_id, candidate_idx, num_tokens,
--                                                       reward, is_valid (sql/candidate_pool.sql
--                                                       over the candidate_scores below)
--   candidate_scores  (wofn.schemas.CANDIDATE_SCORES)   every column (its rows are passed through)
--
-- Produces (wofn.schemas.CANDIDATE_SCORES, the same columns and order as candidate_scores):
--   prompt_id, candidate_idx, reward, reward_model, reward_model_revision, member_rewards
--
-- Parameters (DuckDB named parameters, bound from Python, e.g. {"band": 0.3}):
--   $band  DOUBLE >= 0: the band's half-width as a share of the best candidate's length
--          (0.3 = within 30%; 0 = the same length only). Negative or NULL is an error.
--
-- Per prompt_id, best = the valid candidate (candidate_pool.is_valid: its candidate rows agree on
-- the response, its score rows on one finite reward) with the highest reward, ties broken by
-- the lowest candidate_idx; best_len = its num_tokens (policy tokens, EOS included; a candidate's
-- smallest num_tokens over its rows). Kept: every candidate_scores row, rewards unchanged, of a
-- candidate with best_len * (1 - $band) <= num_tokens <= best_len * (1 + $band); the best is
-- always kept. Dropped: the rows of the other candidates (to the strategies they are unscored:
-- not valid), of prompts with no valid candidate, and of no candidate. Duplicate score rows of a
-- kept candidate stay duplicates, one to one. Ordered by prompt_id, candidate_idx.

with

checked_params as (

    select
        case
            when $band >= 0 then cast($band as double)
            else error('length_band_scores: band must be >= 0, got '
                || coalesce(cast($band as varchar), 'NULL'))
        end as band

),

ranked as (

    -- the valid candidates, best first
    select
        prompt_id,
        num_tokens,
        row_number() over (
            partition by prompt_id
            order by reward desc, candidate_idx asc
        ) as best_rank
    from candidate_pool
    where is_valid

),

bands as (

    select
        ranked.prompt_id,
        ranked.num_tokens * (1 - checked_params.band) as min_tokens,
        ranked.num_tokens * (1 + checked_params.band) as max_tokens
    from ranked
    cross join checked_params
    where ranked.best_rank = 1

),

in_band as (

    select
        candidate_pool.prompt_id,
        candidate_pool.candidate_idx
    from candidate_pool
    inner join bands
        on candidate_pool.prompt_id = bands.prompt_id
    where candidate_pool.num_tokens >= bands.min_tokens
        and candidate_pool.num_tokens <= bands.max_tokens

),

final as (

    select
        candidate_scores.prompt_id,
        candidate_scores.candidate_idx,
        candidate_scores.reward,
        candidate_scores.reward_model,
        candidate_scores.reward_model_revision,
        candidate_scores.member_rewards
    from candidate_scores
    inner join in_band
        on candidate_scores.prompt_id = in_band.prompt_id
        and candidate_scores.candidate_idx = in_band.candidate_idx

)

select * from final
order by prompt_id, candidate_idx
