-- analysis/confidence_histogram: the teacher's confidence sigma(r+ - r-) over the selected pairs,
-- and how much of each bin the filters kept.
--
-- Reads:
--   west_of_n_pairs  (wofn.schemas.PAIRS)  prompt_id, confidence
--   filtered_pairs   (wofn.schemas.PAIRS)  prompt_id
--
-- Produces: one row per bin, lowest first, with columns
--   bin, bin_low, bin_high, selected (pairs in west_of_n_pairs), kept (of those, in
--   filtered_pairs), kept_share, histogram (one '#' per 2% of the selected pairs)
--
-- Parameters: none.
--
-- Ten equal-width bins over the observed range [min, max] of the selected pairs' confidence
-- (the last bin includes max), so that a run whose confidences sit between 0.5 and 0.6 still
-- gets ten bins. confidence is a probability in (0.5, 1].
--
--   wofn sql sql/analysis/confidence_histogram.sql

with

selected as (

    select prompt_id, confidence from west_of_n_pairs

),

kept as (

    select distinct prompt_id from filtered_pairs

),

bounds as (

    select
        min(confidence) as low,
        greatest(max(confidence) - min(confidence), 1e-12) as width
    from selected

),

binned as (

    select
        selected.prompt_id,
        least(cast(floor((selected.confidence - bounds.low) / bounds.width * 10) as integer), 9) as bin,
        kept.prompt_id is not null as is_kept
    from selected
    cross join bounds
    left join kept
        on selected.prompt_id = kept.prompt_id

),

bins as (

    select range as bin from range(10)

),

counts as (

    select
        bins.bin,
        count(binned.prompt_id) as selected,
        count(binned.prompt_id) filter (where binned.is_kept) as kept
    from bins
    left join binned
        on bins.bin = binned.bin
    group by bins.bin

),

final as (

    select
        cast(counts.bin + 1 as integer) as bin,
        round(bounds.low + bounds.width * counts.bin / 10, 4) as bin_low,
        round(bounds.low + bounds.width * (counts.bin + 1) / 10, 4) as bin_high,
        counts.selected,
        counts.kept,
        round(counts.kept / nullif(counts.selected, 0), 3) as kept_share,
        repeat('#', cast(round(50.0 * counts.selected / nullif(totals.n, 0)) as integer)) as histogram
    from counts
    cross join bounds
    cross join (select count(*) as n from selected) as totals
    where totals.n > 0

)

select * from final
order by bin
