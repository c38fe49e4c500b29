"""The `experiment` job: `wofn experiment CONFIG` as Dagster ops, launched from the UI's Launchpad.

    estimate -> inputs (sample once at max N, base RMs, teacher scores, pair sets) -> students -> report

Each op calls wofn.experiment.runner, which skips what an earlier run finished, so re-executing a
failed run resumes it. The report op records an `experiment_results` materialization with the
results table and plots.
"""

from typing import Optional

from dagster import AssetMaterialization, Config, MetadataValue, OpExecutionContext, job, op
from matplotlib.figure import Figure
from pydantic import Field

from wofn.experiment import config as xconfig
from wofn.experiment import report as reporting
from wofn.experiment import runner
from wofn_dagster.assets.metadata import png_markdown
from wofn_dagster.assets.runtime import forward_logs
from wofn_dagster.resources import WofnHomeResource


class ExperimentRunConfig(Config):
    config: str = Field(description="experiment config (YAML), e.g. experiments/hh.yaml")
    report: Optional[str] = Field(default=None, description="also write the report here, e.g. docs/results.md")


def _experiment(path: str, home: WofnHomeResource) -> runner.Experiment:
    return runner.Experiment(xconfig.load(path), home.home.root)


@op
def experiment_estimate(context: OpExecutionContext, config: ExperimentRunConfig, home: WofnHomeResource) -> str:
    """The grid's cost on this machine (from bench/latest.jsonl) for the work not done yet."""
    exp = _experiment(config.config, home)
    exp.root.mkdir(parents=True, exist_ok=True)
    est = runner.note_estimate(exp, home.home.root)
    context.log.info(runner.format_estimate(est))
    context.add_output_metadata({"estimated_minutes": MetadataValue.float(est["total_seconds"] / 60),
                                 "students_to_train": MetadataValue.int(est["students"]),
                                 "estimate": MetadataValue.json(est)})
    return config.config


def _base_metadata(stats: dict) -> dict:
    """The base RMs trained so far, by seed (exp.results()["bases"])."""
    return {"base_accuracy": MetadataValue.json({b["seed"]: b["accuracy"] for b in stats["bases"]}),
            "base_length_balanced_accuracy": MetadataValue.json(
                {b["seed"]: b["length_balanced_accuracy"] for b in stats["bases"]})}


@op
def experiment_inputs(context: OpExecutionContext, config_path: str, home: WofnHomeResource) -> str:
    """Candidates (sampled once at the largest N), the teacher's base RMs and scores, every pair set."""
    exp = _experiment(config_path, home)
    with forward_logs(context, "wofn.experiment", "beam_jobs", "wofn.training"):
        exp.inputs()
    stats = exp.results()
    context.add_output_metadata({**_base_metadata(stats), "pair_sets": MetadataValue.int(len(stats["pair_stats"]))})
    return config_path


@op
def experiment_students(context: OpExecutionContext, config_path: str, home: WofnHomeResource) -> str:
    """Seed by seed, the seed's base RM, then one student per cell, trained on human + synthetic pairs and
    evaluated; progress per cell."""
    exp = _experiment(config_path, home)

    def report(progress: dict) -> None:
        context.log.info(f"cell {progress['cells_done']}/{progress['cells_total']} {progress['last']}: accuracy "
                         f"{progress['last_accuracy']:.3f}, length-balanced "
                         f"{progress['last_length_balanced_accuracy']:.3f}; ETA {progress['eta_s'] / 60:.0f} min")

    with forward_logs(context, "wofn.experiment"):
        exp.cells(on_cell=report)
    stats = exp.results()
    context.add_output_metadata({**_base_metadata(stats), "cells": MetadataValue.int(len(stats["cells"]))})
    return config_path


@op
def experiment_report(context: OpExecutionContext, config_path: str, home: WofnHomeResource,
                      config: ExperimentRunConfig) -> None:
    """results.md (tables, plots) in the run's folder and, if asked, at `report`."""
    exp = _experiment(config_path, home)
    command = f"dagster job execute -j experiment (config: {config_path})"
    out = runner.write_reports(exp, config.report, command)
    results = exp.results()
    fig: Figure = reporting.plot_accuracy_vs_n(results, exp.config)
    context.log_event(AssetMaterialization(
        asset_key=["experiment_results", exp.config.name],
        description=f"wofn experiment {config_path}",
        metadata={"report": MetadataValue.path(str(out)),
                  "results": MetadataValue.md("\n".join(reporting.results_markdown(results, exp.config))),
                  "accuracy_vs_n": png_markdown(fig),
                  "arms": png_markdown(reporting.plot_arms(results, exp.config)),
                  "cells": MetadataValue.int(len(results["cells"]))}))


@job(description="An experiment grid (strategies x N x filters x seeds): students vs base, with a report.")
def experiment():
    experiment_report(experiment_students(experiment_inputs(experiment_estimate())))
