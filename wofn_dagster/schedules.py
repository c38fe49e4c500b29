"""The refresh schedule: rebuild the pairs and the student when prompt batches were scored since the last student."""

import os

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    DagsterRunStatus,
    DefaultScheduleStatus,
    RunRequest,
    RunsFilter,
    ScheduleEvaluationContext,
    SkipReason,
    define_asset_job,
    schedule,
)

from wofn_dagster.selections import select

# Every hour on the hour by default; any cron expression (UTC), e.g. "*/10 * * * *" or "0 3 * * *".
REFRESH_CRON = os.environ.get("WOFN_REFRESH_CRON", "0 * * * *")

rebuild_student_job = define_asset_job(
    "rebuild_student",
    selection=select("west_of_n_pairs", downstream=True),
    description="pairs over every prompt batch, then the student, its rounds and the evaluation table",
)

_ACTIVE = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
           DagsterRunStatus.STARTED]


def batches_scored_since_last_student(instance: DagsterInstance) -> list[str]:
    """The prompt batches whose candidate_scores were materialized after the latest student_reward_model."""
    student = instance.get_latest_materialization_event(AssetKey("student_reward_model"))
    since = student.timestamp if student else None
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("candidate_scores"), after_timestamp=since), limit=10_000).records
    return sorted({r.partition_key for r in records if r.partition_key})


@schedule(job=rebuild_student_job, cron_schedule=REFRESH_CRON, execution_timezone="UTC",
          default_status=DefaultScheduleStatus.RUNNING)
def refresh_student(context: ScheduleEvaluationContext):
    """Rebuild pairs and student on $WOFN_REFRESH_CRON when new prompt batches were scored since the last
    student; otherwise do nothing (a skipped tick says why)."""
    new = batches_scored_since_last_student(context.instance)
    if not new:
        return SkipReason("no prompt batch scored since the last student_reward_model")
    running = context.instance.get_run_records(RunsFilter(job_name=rebuild_student_job.name, statuses=_ACTIVE), limit=1)
    if running:
        return SkipReason(f"run {running[0].dagster_run.run_id} is already rebuilding the student")
    return RunRequest(tags={"wofn/new_batches": ",".join(new)})
