"""The one Definitions object: assets by stage, checks, the inbox sensor, the refresh schedule, and
resources from the active profile and environment."""

from dagster import Definitions, load_assets_from_modules, multiprocess_executor

from wofn_dagster.assets import data, evaluations, generation, pairs, rounds, training
from wofn_dagster.checks import CHECKS
from wofn_dagster.experiment import experiment
from wofn_dagster.resources import wofn_resources
from wofn_dagster.schedules import rebuild_student_job, refresh_student
from wofn_dagster.sensors import dead_runs, evaluations_follow_models, prompt_inbox, sample_batch_job


def make_defs(resources: dict) -> Definitions:
    """wofn's definitions with the given resources (tests pass a temporary home and the tiny profile)."""
    return Definitions(
        assets=load_assets_from_modules([data, generation, pairs, training, rounds, evaluations]),
        asset_checks=CHECKS,
        jobs=[sample_batch_job, rebuild_student_job, experiment],
        sensors=[prompt_inbox, evaluations_follow_models, dead_runs],
        schedules=[refresh_student],
        resources=resources,
        # One step at a time, each in its own process using every core: on a 2-core machine this
        # beat overlapping base-RM training with sampling at one thread each (an early measurement,
        # not kept in the docs; rerun it before changing this).
        # Raise max_concurrent in the run config where steps run on separate devices.
        executor=multiprocess_executor.configured({"max_concurrent": 1}),
    )


defs = make_defs(wofn_resources())
