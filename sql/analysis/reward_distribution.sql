-- analysis/reward_distribution: how the teacher's rewards spread over each prompt's N candidates.
-- A narrow spread means a West-of-N pair with a small margin (low confidence).
--
-- Reads:
--   candidate_scores  (wofn.schemas.CANDIDATE_SCORES)  prompt_id, candidate_idx, reward
--
-- Produces: one row per prompt_id, widest spread first, with columns
--   prompt_id, scored (score rows), valid (distinct candidates with a finite reward),
--   min_reward, q25_reward, median_reward, q75_reward, max_reward, spread (max - min),
--   stddev_reward, distinct_rewards
--
-- Parameters: none.
--
-- Rewards are reward-model units (unnormalized). As in sql/candidate_pool.sql, a candidate with
-- several score rows counts once when they agree and not at all when they disagree, and NULL,
-- NaN and +-inf rewards are not valid; invalid candidates are left out of the statistics.
-- Quantiles are quantile_cont (interpolated).
--
--   wofn sql sql/analysis/reward_distribution.sql --max-rows 10

with

scores as (

    select prompt_id, candidate_idx, reward from candidate_scores

),

per_candidate as (

    select
        prompt_id,
        candidate_idx,
        count(*) as score_rows,
        count(reward) = 0
            or (count(reward) = count(*) and min(reward) = max(reward)) as copies_agree,
        min(reward) as reward
    from scores
    group by prompt_id, candidate_idx

),

valid as (

    select * from per_candidate
    where copies_agree and reward is not null and isfinite(reward)

),

per_prompt as (

    select
        per_candidate.prompt_id,
        sum(per_candidate.score_rows) as scored,
        count(valid.candidate_idx) as valid,
        min(valid.reward) as min_reward,
        quantile_cont(valid.reward, 0.25) as q25_reward,
        quantile_cont(valid.reward, 0.5) as median_reward,
        quantile_cont(valid.reward, 0.75) as q75_reward,
        max(valid.reward) as max_reward,
        max(valid.reward) - min(valid.reward) as spread,
        stddev_samp(valid.reward) as stddev_reward,
        count(distinct valid.reward) as distinct_rewards
    from per_candidate
    left join valid
        on per_candidate.prompt_id = valid.prompt_id
        and per_candidate.candidate_idx = valid.candidate_idx
    group by per_candidate.prompt_id

),

final as (

    select
        prompt_id,
        cast(scored as bigint) as scored,
        valid,
        round(min_reward, 4) as min_reward,
        round(q25_reward, 4) as q25_reward,
        round(median_reward, 4) as median_reward,
        round(q75_reward, 4) as q75_reward,
        round(max_reward, 4) as max_reward,
        round(spread, 4) as spread,
        round(stddev_reward, 4) as stddev_reward,
        distinct_rewards
    from per_prompt

)

select * from final
order by spread desc nulls last, prompt_id
