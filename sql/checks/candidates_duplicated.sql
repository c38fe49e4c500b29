-- Data gate on `candidates`: (prompt_id, candidate_idx) keys that occur more than once, across
-- every prompt batch (the pair SQL reads them all together).
--
-- Reads: $candidates  candidates Parquet (glob over batch=<key>/ folders): batch, prompt_id, candidate_idx
-- Parameters: none besides the glob
-- Produces one row per duplicated key:
--   prompt_id varchar, candidate_idx integer, copies bigint, batches varchar (the batch keys, comma-separated)
-- The keys are counted first and the batches gathered for the duplicated ones only: a distinct
-- string_agg over every key held 1 GB at 2M candidates. The candidates CTE, read twice, is not
-- materialized (at 2M candidates: 804 -> 729 MB peak, the check's process included).
with candidates as not materialized (
    select batch, prompt_id, candidate_idx
    from read_parquet($candidates, hive_partitioning = true, hive_types_autocast = false)
),

duplicated as (
    select prompt_id, candidate_idx, count(*) as copies
    from candidates
    group by prompt_id, candidate_idx
    having count(*) > 1
),

final as (
    select duplicated.prompt_id, duplicated.candidate_idx, duplicated.copies,
        string_agg(distinct candidates.batch, ',' order by candidates.batch) as batches
    from duplicated
    join candidates
        on candidates.prompt_id = duplicated.prompt_id and candidates.candidate_idx = duplicated.candidate_idx
    group by duplicated.prompt_id, duplicated.candidate_idx, duplicated.copies
)

select * from final order by prompt_id, candidate_idx
