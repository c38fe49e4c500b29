-- Data gate on `west_of_n_pairs` and `filtered_pairs`: pairs a reward model must not learn from.
--
-- Parameters: none besides the glob
-- Reads: $pairs  a pair table's Parquet files (wofn.schemas.PAIRS): prompt_id, chosen, rejected,
--   chosen_idx, rejected_idx, margin (reward units), confidence (sigmoid(margin))
-- Produces one row per problem (a pair can have several):
--   prompt_id varchar, problem varchar, detail varchar
-- Problems: same_candidate (chosen_idx = rejected_idx), same_text (chosen = rejected),
--   confidence_out_of_range (not within [0.5, 1], or NaN), margin_not_positive (<= 0 or NaN),
--   duplicate_prompt (more than one pair for a prompt).
with pairs as (
    select prompt_id, chosen, rejected, chosen_idx, rejected_idx, margin, confidence
    from read_parquet($pairs)
),

problems as (
    select prompt_id, 'same_candidate' as problem, chosen_idx::varchar as detail
    from pairs where chosen_idx = rejected_idx
    union all
    select prompt_id, 'same_text', left(chosen, 60)
    from pairs where chosen = rejected
    union all
    select prompt_id, 'confidence_out_of_range', confidence::varchar
    from pairs where isnan(confidence) or confidence < 0.5 or confidence > 1
    union all
    select prompt_id, 'margin_not_positive', margin::varchar
    from pairs where isnan(margin) or margin <= 0
    union all
    select prompt_id, 'duplicate_prompt', count(*)::varchar
    from pairs group by prompt_id having count(*) > 1
),

final as (
    select * from problems
)

select * from final order by problem, prompt_id
