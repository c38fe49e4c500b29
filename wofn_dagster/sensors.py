"""Sensors: the inbox sensor turns each new prompt file in `$WOFN_HOME/inbox/` into a prompt batch and
samples and scores it; the automation sensor runs the assets that declare an automation condition; the
dead-runs sensor marks failed the runs whose worker was killed."""

import json

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    sensor,
)

from wofn_dagster.partitions import inbox_files, prompt_batches
from wofn_dagster.resources import WofnHomeResource
from wofn_dagster.runs import reap_dead_runs
from wofn_dagster.selections import select

# Only the batch's own partitions: sampling and scoring never touch the other batches.
sample_batch_job = define_asset_job(
    "sample_batch",
    selection=select("prompts", "candidates", "candidate_scores"),
    description="one prompt batch: its prompts, their N candidates, and the base reward model's scores",
)


@sensor(job=sample_batch_job, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
def prompt_inbox(context: SensorEvaluationContext, home: WofnHomeResource):
    """Register each new .parquet / .jsonl file in $WOFN_HOME/inbox as a prompt batch and sample and score it.

    A file is one batch, keyed by its name without suffix. The cursor remembers each file's size
    and modification time, so a file is requested once, and again only when it is rewritten (into
    the same batch); the run key says the same to the daemon. Write files under a hidden name
    (.name.tmp) and rename them into place: hidden files are skipped.
    """
    files = inbox_files(home.home)
    seen = json.loads(context.cursor) if context.cursor else {}
    stamps = {key: f"{path.stat().st_size}:{path.stat().st_mtime_ns}" for key, path in files.items()}
    changed = [key for key in files if seen.get(key) != stamps[key]]
    if not changed:
        return SkipReason(f"no new or changed prompt files in {home.home.inbox_dir}")
    known = set(context.instance.get_dynamic_partitions(prompt_batches.name))
    new = [key for key in changed if key not in known]
    if new:
        context.log.info(f"new prompt batches: {new}")
    requests = [RunRequest(run_key=f"{key}:{stamps[key]}", partition_key=key, tags={"wofn/batch_file": str(files[key])})
                for key in changed]
    return SensorResult(run_requests=requests, cursor=json.dumps({**seen, **stamps}, sort_keys=True),
                        dynamic_partitions_requests=[prompt_batches.build_add_request(new)] if new else [])


# Declarative automation for the assets that declare a condition (reward_model_evaluations: eager,
# so the table follows any reward model rematerialized by hand). Running by default, unlike
# Dagster's own default automation sensor.
evaluations_follow_models = AutomationConditionSensorDefinition(
    "evaluations_follow_models", target=AssetSelection.assets("reward_model_evaluations"),
    default_status=DefaultSensorStatus.RUNNING, minimum_interval_seconds=60,
)


@sensor(minimum_interval_seconds=60, default_status=DefaultSensorStatus.RUNNING)
def dead_runs(context: SensorEvaluationContext):
    """Mark failed the runs whose run worker died without reporting their end (wofn_dagster.runs):
    a SIGKILLed or out-of-memory run worker would otherwise leave its run STARTED in the UI forever."""
    reaped = reap_dead_runs(context.instance)
    for run_id, pid in reaped:
        context.log.warning(f"run {run_id}: its worker (pid {pid}) died; marked failed")
    return SkipReason(f"marked failed: {[run_id for run_id, _ in reaped]}" if reaped else "no dead run workers")
