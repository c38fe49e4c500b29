-- Data gate on `candidates`: prompts of a batch that do not have exactly $n candidates.
--
-- Reads: Parquet, partitioned by prompt batch in batch=<key>/ folders, globs bound as parameters:
--   $prompts     prompts:    batch (from the folder), prompt_id
--   $candidates  candidates: batch (from the folder), prompt_id, candidate_idx
-- Parameters: $n (candidates per prompt, the `n` setting); $batch (one batch key, or NULL = every
--   batch that has candidates: batches still being sampled are not judged).
-- Produces one row per prompt short of (or over) N:
--   batch varchar, prompt_id varchar, candidates bigint (distinct candidate_idx found)
-- A prompt whose sampling failed and was recorded as a failure is excused by the caller.
with prompts as (
    select batch, prompt_id
    from read_parquet($prompts, hive_partitioning = true, hive_types_autocast = false)
),

sampled as (
    select batch, prompt_id, count(distinct candidate_idx) as candidates
    from read_parquet($candidates, hive_partitioning = true, hive_types_autocast = false)
    group by batch, prompt_id
),

judged_batches as (
    select distinct batch from sampled where $batch is null
    union
    select $batch::varchar as batch where $batch is not null
),

final as (
    select prompts.batch, prompts.prompt_id, coalesce(sampled.candidates, 0) as candidates
    from prompts
    join judged_batches on judged_batches.batch = prompts.batch
    left join sampled on sampled.batch = prompts.batch and sampled.prompt_id = prompts.prompt_id
    where coalesce(sampled.candidates, 0) <> $n
)

select * from final order by batch, prompt_id
