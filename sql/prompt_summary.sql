-- prompt_summary: every prompt that has candidate rows, with its valid candidates' count and
-- reward range (the second step of a strategy's draw; see sql/candidate_pool.sql).
--
-- Reads:
--   candidate_pool  (wofn.schemas.CANDIDATE_POOL)  prompt_id, prompt, reward, is_valid
--
-- Produces (wofn.schemas.PROMPT_SUMMARY, in this order; one row per prompt_id):
--   prompt_id, prompt, n_valid, min_reward, max_reward
--
-- Parameters: none.
--
-- prompt = the smallest prompt text among the prompt_id's rows; n_valid counts the valid
-- candidates (0 when none is), min_reward and max_reward are theirs (NULL when none is). Not ordered.

with

final as (

    select
        prompt_id,
        min(prompt) as prompt,
        count(*) filter (where is_valid) as n_valid,
        min(reward) filter (where is_valid) as min_reward,
        max(reward) filter (where is_valid) as max_reward
    from candidate_pool
    group by prompt_id

)

select * from final
