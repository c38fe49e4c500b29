"""Runs whose run worker died (SIGKILL, the kernel's OOM killer, a reboot) stay STARTED in the
Dagster instance forever: the process that would have reported their end is gone. `reap_dead_runs`
marks each of them failed, with a message that says what happened and what to do. `make run`
and `make ui` call it before they start, and the `dead_runs` sensor does it every minute while the
UI's daemon runs.

    python -m wofn_dagster.runs reap     # prints one line per run marked failed

A run's worker is the process of the first engine event that records a pid ("Executing steps in
process (pid: N)", "... multiprocess executor: parent process (pid: N)", "Started process for run
(pid: N)"). Only a local instance is meant: the pid is looked up on this machine, so runs of a
launcher that runs them elsewhere (Kubernetes, ECS) are left to that launcher's own monitoring.
Nothing is lost with the run: each stage publishes a table whole or not at all, and the sampling
and scoring jobs resume their shards when the assets are materialized again (docs/operations.md).
"""

from __future__ import annotations

import sys

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from wofn.paths import pid_alive

LIVE = [DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]

MESSAGE = ("the run worker (pid {pid}) is gone without reporting the run's end: killed (SIGKILL, out of memory) "
           "or its machine restarted. Nothing half-written was published; materialize the assets again to "
           "finish (sampling and scoring resume their written shards). Marked failed by wofn_dagster.runs.")


def run_worker_pid(instance: DagsterInstance, run_id: str) -> int | None:
    """The pid the run's first pid-bearing engine event records, or None."""
    for record in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        data = record.dagster_event.engine_event_data if record.dagster_event else None
        pid = (data.metadata or {}).get("pid") if data else None
        if pid is not None:
            return int(getattr(pid, "value", pid))
    return None


def reap_dead_runs(instance: DagsterInstance) -> list[tuple[str, int]]:
    """Mark failed every STARTED or CANCELING run whose worker process no longer exists; returns
    (run_id, pid) of each. Runs with no recorded pid yet are left alone."""
    reaped = []
    for record in instance.get_run_records(filters=RunsFilter(statuses=LIVE)):
        run = record.dagster_run
        pid = run_worker_pid(instance, run.run_id)
        if pid is None or pid_alive(pid):
            continue
        instance.report_run_failed(run, message=MESSAGE.format(pid=pid))
        reaped.append((run.run_id, pid))
    return reaped


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["reap"]:
        print("usage: python -m wofn_dagster.runs reap", file=sys.stderr)
        return 2
    with DagsterInstance.get() as instance:
        for run_id, pid in reap_dead_runs(instance):
            print(f"run {run_id}: its worker (pid {pid}) died; marked failed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
