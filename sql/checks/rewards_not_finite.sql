-- Data gate on `candidate_scores`: rewards that are NULL, NaN or infinite.
--
-- Reads: $scores  candidate_scores Parquet (glob over batch=<key>/ folders): batch, prompt_id,
--   candidate_idx, reward (scalar head output, reward units)
-- Parameters: $batch (one batch key, or NULL = every batch)
-- Produces one row per bad reward: batch varchar, prompt_id varchar, candidate_idx integer, reward double
with scores as (
    select batch, prompt_id, candidate_idx, reward
    from read_parquet($scores, hive_partitioning = true, hive_types_autocast = false)
),

final as (
    select batch, prompt_id, candidate_idx, reward
    from scores
    where ($batch is null or batch = $batch)
      and (reward is null or isnan(reward) or isinf(reward))
)

select * from final order by batch, prompt_id, candidate_idx
