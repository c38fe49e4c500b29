-- Data gate on `candidates`: (prompt_id, candidate_idx) keys that occur more than once, across
-- every prompt batch (the pair SQL reads them all together).
--
-- Reads: $candidates  candidates Parquet (glob over batch=<key>/ folders): batch, prompt_id, candidate_idx
-- Parameters: none besides the glob
-- Produces one row per duplicated key:
--   prompt_id varchar, candidate_idx integer, copies bigint, batches varchar (the batch keys, comma-separated)
with candidates as (
    select batch, prompt_id, candidate_idx
    from read_parquet($candidates, hive_partitioning = true, hive_types_autocast = false)
),

final as (
    select prompt_id, candidate_idx, count(*) as copies, string_agg(distinct batch, ',' order by batch) as batches
    from candidates
    group by prompt_id, candidate_idx
    having count(*) > 1
)

select * from final order by prompt_id, candidate_idx
