-- Data gate on `candidate_scores` with a pairwise teacher (table tournament_pairs): verdicts whose
-- logit is NULL, NaN or infinite.
--
-- Reads: $scores  tournament_pairs Parquet (glob over batch=<key>/ folders): batch, prompt_id, logit
-- Parameters: $batch (one batch key, or NULL = every batch)
-- Produces one row per bad verdict: batch varchar, prompt_id varchar, logit double
with verdicts as (
    select batch, prompt_id, logit
    from read_parquet($scores, hive_partitioning = true, hive_types_autocast = false)
),

final as (
    select batch, prompt_id, logit
    from verdicts
    where ($batch is null or batch = $batch)
      and (logit is null or isnan(logit) or isinf(logit))
)

select * from final order by batch, prompt_id
