"""Input assets: human preference pairs (train and eval) and unlabeled prompts."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from wofn import data, schemas
from wofn_dagster.assets.common import error_summary, publish_table, write_table
from wofn_dagster.resources import WofnHomeResource, WofnSettings


@asset(group_name="inputs", kinds={"parquet"})
def human_preferences(context: AssetExecutionContext, settings: WofnSettings, home: WofnHomeResource) -> MaterializeResult:
    """D_L: human preference pairs (prompt, chosen, rejected) the base reward model learns from."""
    table = data.load_preferences(settings.human_pairs, settings.max_human_pairs)
    context.log.info("read %d human pairs from %s", table.num_rows, settings.human_pairs)
    return publish_table(home.home, "human_preferences", table, {"source_file": MetadataValue.path(settings.human_pairs)})


@asset(group_name="inputs", kinds={"parquet"})
def eval_preferences(context: AssetExecutionContext, settings: WofnSettings, home: WofnHomeResource) -> MaterializeResult:
    """Held-out human pairs on which base and student reward models are compared."""
    table = data.load_preferences(settings.eval_pairs, settings.max_eval_pairs)
    context.log.info("read %d evaluation pairs from %s", table.num_rows, settings.eval_pairs)
    return publish_table(home.home, "eval_preferences", table, {"source_file": MetadataValue.path(settings.eval_pairs)})


@asset(group_name="inputs", kinds={"parquet"})
def prompts(context: AssetExecutionContext, settings: WofnSettings, home: WofnHomeResource) -> MaterializeResult:
    """D_U: unlabeled prompts, deduplicated, each with a stable prompt_id (hash of the normalized text)."""
    table, errors = data.read_prompts(settings.unlabeled_prompts, settings.max_prompts)
    context.log.info("kept %d unique prompts from %s; %d rows left out (table prompt_errors)",
                     table.num_rows, settings.unlabeled_prompts, errors.num_rows)
    write_table(home.home.table_dir("prompt_errors"), errors, schemas.ERRORS, where="prompt_errors")
    return publish_table(home.home, "prompts", table, {
        "source_file": MetadataValue.path(settings.unlabeled_prompts),
        **error_summary(home.home, "prompt_errors"),
    })
