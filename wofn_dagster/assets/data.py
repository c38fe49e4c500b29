"""Input assets: human preference pairs (train and eval) and unlabeled prompts, one batch per partition."""

import pyarrow as pa
import pyarrow.compute as pc
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from wofn import data, schemas
from wofn.paths import content_hash, partition_keys
from wofn_dagster.assets.common import code_version, error_summary, publish_table, read_table, write_table
from wofn_dagster.partitions import batch_source, prompt_batches
from wofn_dagster.resources import WofnHomeResource, WofnSettings

_CODE = code_version("wofn/data.py", "wofn_dagster/assets/data.py")


def _source_facts(path) -> dict:
    return {"source": str(path), "source_hash": content_hash(path)}


@asset(group_name="inputs", kinds={"parquet"}, code_version=_CODE)
def human_preferences(context: AssetExecutionContext, settings: WofnSettings, home: WofnHomeResource) -> MaterializeResult:
    """D_L: human preference pairs (prompt, chosen, rejected) the base reward model learns from."""
    table = data.load_preferences(settings.human_pairs, settings.max_human_pairs)
    context.log.info("read %d human pairs from %s", table.num_rows, settings.human_pairs)
    return publish_table(home.home, "human_preferences", table, {"source_file": MetadataValue.path(settings.human_pairs)},
                         context=context, facts=_source_facts(settings.human_pairs))


@asset(group_name="inputs", kinds={"parquet"}, code_version=_CODE)
def eval_preferences(context: AssetExecutionContext, settings: WofnSettings, home: WofnHomeResource) -> MaterializeResult:
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


@asset(group_name="inputs", kinds={"parquet"}, partitions_def=prompt_batches, code_version=_CODE)
def prompts(context: AssetExecutionContext, settings: WofnSettings, home: WofnHomeResource) -> MaterializeResult:
    """D_U, one prompt batch per partition: deduplicated prompts, each with a stable prompt_id (hash of the
    normalized text). A prompt already in another batch stays there and is left out of this one."""
    h = home.home
    key = context.partition_key
    source = batch_source(h, settings.unlabeled_prompts, key)
    table, errors = data.read_prompts(source, settings.max_prompts)
    write_table(h.partition_dir("prompt_errors", key), errors, schemas.ERRORS, where=f"prompt_errors {key}")
    elsewhere = _ids_in_other_batches(h, key)
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
    return publish_table(h, "prompts", table, {
        "source_file": MetadataValue.path(str(source)),
        "prompts_in_other_batches": MetadataValue.int(dropped),
        **error_summary(h, "prompt_errors", partition=key),
    }, context=context, partition=key, facts=_source_facts(source))
