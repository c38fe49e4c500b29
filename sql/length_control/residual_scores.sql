-- length_control/residual_scores: candidate_scores with each reward replaced by its residual
-- from a least-squares line of reward on response length, so that a strategy ranks candidates
-- by what the reward says beyond length (the base reward model tends to prefer short answers).
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
-- Parameters (DuckDB named parameters, bound from Python, e.g. {"per_prompt": False}):
--   $per_prompt  BOOLEAN: false = one fit over every candidate of the run; true = one fit per
--                prompt_id. NULL is an error.
--
-- The fit: reward ~ intercept + slope * num_tokens, by least squares (regr_slope,
-- regr_intercept), over one point per candidate (prompt_id, candidate_idx) that the strategies
-- count as valid (candidate_pool.is_valid: its candidate rows agree on the response, its score
-- rows agree on one reward, and that reward is finite). A fit whose points all have the same length
-- (e.g. a prompt whose candidates are equally long) has slope 0, so residual = reward - the mean
-- reward; a group with no point keeps its rewards (intercept 0, slope 0).
-- reward := reward - (intercept + slope * num_tokens) for finite rewards; NULL, NaN, +inf and
-- -inf rewards are passed through unchanged (the strategies drop them). An ensemble teacher's
-- member_rewards each lose the same fit (so their mean is still the residual reward, and the
-- pairs' agreement compares residuals too); NULL member_rewards stay NULL. Units: reward-model
-- units; num_tokens = policy tokens, EOS included (a candidate's smallest num_tokens over its
-- rows). Per prompt, a fit through two points leaves both residuals 0 (no pair): it needs three
-- or more candidates of at least two lengths to rank anything.
-- The fit's sums run in DuckDB's (parallel) order, so residuals repeat to ~1e-12, not always to
-- the last bit; a pick can only change on a tie that close.
-- Rows: one output row per candidate_scores row that has a candidate row (duplicate score rows
-- stay duplicates, one to one, so the strategies judge their copies as before); score rows of no
-- candidate are dropped. Ordered by prompt_id, candidate_idx.

with

checked_params as (

    select
        case
            when $per_prompt is not null then cast($per_prompt as boolean)
            else error('residual_scores: per_prompt must be true or false, got NULL')
        end as per_prompt

),

fit_points as (

    -- the valid candidates; fit_group = their prompt_id per prompt, '' for one global fit
    select
        case when checked_params.per_prompt then candidate_pool.prompt_id else '' end as fit_group,
        cast(candidate_pool.num_tokens as double) as num_tokens,
        candidate_pool.reward
    from candidate_pool
    cross join checked_params
    where candidate_pool.is_valid

),

fits as (

    -- regr_slope is NaN (not NULL) when every length is the same: regr_sxx = 0 there, slope 0
    select
        fit_group,
        case
            when regr_sxx(reward, num_tokens) > 0 then regr_slope(reward, num_tokens)
            else 0.0
        end as slope,
        case
            when regr_sxx(reward, num_tokens) > 0 then regr_intercept(reward, num_tokens)
            else avg(reward)
        end as intercept
    from fit_points
    group by fit_group

),

scored_rows as (

    -- every score row with its candidate's length and its fit group
    select
        candidate_scores.prompt_id,
        candidate_scores.candidate_idx,
        candidate_scores.reward,
        candidate_scores.reward_model,
        candidate_scores.reward_model_revision,
        candidate_scores.member_rewards,
        candidate_pool.num_tokens,
        case when checked_params.per_prompt then candidate_scores.prompt_id else '' end as fit_group
    from candidate_scores
    inner join candidate_pool
        on candidate_scores.prompt_id = candidate_pool.prompt_id
        and candidate_scores.candidate_idx = candidate_pool.candidate_idx
    cross join checked_params

),

final as (

    select
        scored_rows.prompt_id,
        scored_rows.candidate_idx,
        cast(
            case
                when isfinite(scored_rows.reward) then scored_rows.reward
                    - (coalesce(fits.intercept, 0.0) + coalesce(fits.slope, 0.0) * scored_rows.num_tokens)
                else scored_rows.reward
            end as double
        ) as reward,
        scored_rows.reward_model,
        scored_rows.reward_model_revision,
        -- an ensemble's members lose the same fit, so their mean stays the residual reward
        list_transform(scored_rows.member_rewards, lambda member: cast(
            case
                when isfinite(scored_rows.reward) then member
                    - (coalesce(fits.intercept, 0.0) + coalesce(fits.slope, 0.0) * scored_rows.num_tokens)
                else member
            end as double
        )) as member_rewards
    from scored_rows
    left join fits
        on scored_rows.fit_group = fits.fit_group

)

select * from final
order by prompt_id, candidate_idx
