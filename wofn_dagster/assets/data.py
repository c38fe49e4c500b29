"""Input assets: human preference pairs (train and eval) and unlabeled prompts, one batch per partition."""

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from dagster import AssetExecutionContext, AssetSpec, MaterializeResult, MetadataValue, asset, multi_asset

from beam_jobs import failpoints
from wofn import data, prompt_sources, schemas
from wofn.paths import content_hash, partition_keys
from wofn_dagster.assets.tables import (
    error_result,
    error_summary,
    publish_table,
    read_table,
    table_lock,
    write_table,
)
from wofn_dagster.code_versions import code_version
from wofn_dagster.partitions import batch_source, prompt_batches
from wofn_dagster.resources import WofnHomeResource, WofnSettings, run_settings

_CODE = code_version("wofn.data", "wofn.prompt_sources", own=__file__)


def _source_facts(path) -> dict:
    return {"source": str(path), "source_hash": content_hash(path)}


@asset(group_name="inputs", kinds={"parquet"}, code_version=_CODE)
def human_preferences(context: AssetExecutionContext, settings: WofnSettings,
                      home: WofnHomeResource) -> MaterializeResult:
    """D_L: human preference pairs (prompt, chosen, rejected) the base reward model learns from, plus the
    `extra_human_pairs` (e.g. UltraFeedback) when set."""
    table, counts = data.training_preferences(settings.human_pairs, settings.max_human_pairs,
                                              settings.extra_human_pairs, settings.max_extra_human_pairs,
                                              settings.human_holdout)
    context.log.info("read %d human pairs from %s (%d held out: human_holdout %s)", counts["human_pairs"],
                     settings.human_pairs, counts["held_out_pairs"], settings.human_holdout)
    metadata = {"source_file": MetadataValue.path(settings.human_pairs),
                "human_pairs": MetadataValue.int(counts["human_pairs"]),
                "held_out_pairs": MetadataValue.int(counts["held_out_pairs"]),
                "extra_human_pairs": MetadataValue.int(counts["extra_human_pairs"])}
    facts = _source_facts(settings.human_pairs)
    if settings.human_holdout:
        facts["human_holdout"] = settings.human_holdout
    if counts["extra_source"]:
        context.log.info("added %d extra pairs from %s", counts["extra_human_pairs"], counts["extra_source"])
        metadata["extra_source_file"] = MetadataValue.path(counts["extra_source"])
        facts.update(extra_source=counts["extra_source"], extra_source_hash=content_hash(counts["extra_source"]),
                     extra_human_pairs=counts["extra_human_pairs"])
    return publish_table(home.home, "human_preferences", table, metadata, context=context, facts=facts)


@asset(group_name="inputs", kinds={"parquet"}, code_version=_CODE)
def eval_preferences(context: AssetExecutionContext, settings: WofnSettings,
                     home: WofnHomeResource) -> MaterializeResult:
    """Held-out human pairs on which base and student reward models are compared."""
    table = data.load_preferences(settings.eval_pairs, settings.max_eval_pairs)
    context.log.info("read %d evaluation pairs from %s", table.num_rows, settings.eval_pairs)
    return publish_table(home.home, "eval_preferences", table, {"source_file": MetadataValue.path(settings.eval_pairs)},
                         context=context, facts=_source_facts(settings.eval_pairs))


def _ids_in_other_batches(h, key: str) -> set[str]:
    ids: set[str] = set()
    for other in partition_keys(h.table_dir("prompts")):
        if other != key:
            ids.update(read_table(h, "prompts", other).column("prompt_id").to_pylist())
    return ids


_PROMPTS_DOC = ("D_U, one prompt batch per partition: deduplicated prompts, each with a stable prompt_id (hash of "
                "the normalized text). A prompt already in another batch stays there and is left out of this one. "
                "The profile's batch draws from `prompt_sources` and leaves out the prompts of the evaluation pairs.")


@multi_asset(name="prompts", partitions_def=prompt_batches, can_subset=False, specs=[
    AssetSpec("prompts", group_name="inputs", kinds={"parquet"}, code_version=_CODE, description=_PROMPTS_DOC),
    AssetSpec("prompt_errors", group_name="inputs", kinds={"parquet"}, code_version=_CODE,
              description="The rows of a prompt file left out of its batch (empty, NUL bytes, too long, "
                          "repeated), each with its reason")])
def prompts(context: AssetExecutionContext, settings: WofnSettings, home: WofnHomeResource):
    """The prompts of one batch, and the rows left out of it (prompt_errors)."""
    h = home.home
    key = context.partition_key
    source = batch_source(h, settings.unlabeled_prompts, key)
    extra, facts = {}, _source_facts(source)
    if source == Path(settings.unlabeled_prompts):  # the profile's batch, not an inbox file
        table, errors, counts = prompt_sources.gather_for(run_settings(settings), source)
        context.log.info(f"batch {key}: prompts per source {counts}")
        extra = {"prompt_sources": MetadataValue.json(counts),
                 "eval_prompts_left_out": MetadataValue.int(counts["eval_leaks"]),
                 **{f"prompts_from_{name}": MetadataValue.int(counts[name]["kept"])
                    for name in prompt_sources.PROMPT_SOURCES if name in counts}}
        facts.update(prompt_sources=list(settings.prompt_sources), eval_pairs=settings.eval_pairs,
                     eval_pairs_hash=content_hash(settings.eval_pairs))
        if "human_pairs" in settings.prompt_sources or settings.human_holdout:
            facts.update(human_pairs=settings.human_pairs, human_pairs_hash=content_hash(settings.human_pairs))
        if settings.human_holdout:
            facts["human_holdout"] = settings.human_holdout
    else:
        table, errors = data.read_prompts(source, settings.max_prompts)
    write_table(h.partition_dir("prompt_errors", key), errors, schemas.ERRORS, where=f"prompt_errors {key}")
    # Read the other batches and publish this one under one lock, so two batches materialized at
    # the same time that share a prompt cannot both keep it: the second sees the first's.
    with table_lock(h, "prompts"):
        elsewhere = _ids_in_other_batches(h, key)
        failpoints.pause("prompts_before_publish")
        if elsewhere:
            keep = pc.invert(pc.is_in(table.column("prompt_id"), value_set=pa.array(sorted(elsewhere), pa.string())))
            dropped = table.num_rows - pc.sum(keep.cast("int64")).as_py()
            table = table.filter(keep)
        else:
            dropped = 0
        context.log.info(f"batch {key}: kept {table.num_rows} unique prompts from {source}"
                         + (f" ({dropped} already in other batches)" if dropped else "")
                         + f"; {errors.num_rows} rows left out (table prompt_errors)")
        if table.num_rows == 0:
            context.log.warning(f"batch {key}: no new prompts in {source}")
        result = publish_table(h, "prompts", table, {
            "source_file": MetadataValue.path(str(source)),
            "prompts_in_other_batches": MetadataValue.int(dropped),
            **extra,
            **error_summary(h, "prompt_errors", partition=key),
        }, context=context, partition=key, facts=facts)
    yield result
    yield error_result(h, "prompt_errors", context=context, partition=key)
