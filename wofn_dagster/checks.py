"""Asset checks: data gates between the stages.

The blocking ones (severity ERROR) stop the assets downstream in the same run when they fail:
sampling and scoring of a batch are checked before its candidates are scored or paired, and the
pairs are checked before a student learns from them. The student-vs-base check warns only. Each
query is a file in `sql/checks/`, run through the DuckDB resource. In a run of one prompt batch
(the inbox sensor's runs) the per-batch checks judge that batch; otherwise every batch.
"""

import json

import pyarrow.parquet as pq
from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check
from dagster_duckdb import DuckDBResource

from wofn import catalog, models, pairwise
from wofn.paths import PARTITION_PREFIX, parquet_files, partition_keys
from wofn_dagster.resources import WofnHomeResource, WofnSettings

# Where the sampling job records prompts it could not sample (a dead-letter table, one folder per
# batch like the candidates). A prompt listed there is excused from having N candidates.
SAMPLING_FAILURES = "candidate_errors"
SAMPLE_ROWS = 10


def _batch(context: AssetCheckExecutionContext):
    op = context.op_execution_context
    return op.partition_key if op.has_partition_key else None


def _glob(h, asset: str) -> str:
    return (h.table_dir(asset) / f"{PARTITION_PREFIX}*" / "*.parquet").as_posix()


def _run(duckdb: DuckDBResource, name: str, params: dict) -> list[dict]:
    # the checks read every row of a table (2M candidates at 10^6 prompts): within DuckDB's spill limit
    with duckdb.get_connection() as con, catalog.spilling(con) as (con, _):
        return catalog.run_sql_file(con, f"checks/{name}", params).to_pylist()


def _sample(rows: list[dict]) -> MetadataValue:
    return MetadataValue.json(json.loads(json.dumps(rows[:SAMPLE_ROWS], default=str)))


def _failed_prompts(h) -> set[str]:
    files = parquet_files(h.table_dir(SAMPLING_FAILURES))
    if not files:
        return set()
    return {pid for f in files for pid in pq.read_table(f, columns=["prompt_id"]).column("prompt_id").to_pylist()}


@asset_check(asset="candidates", blocking=True,
             description="every prompt of the batch has N candidates (or a recorded sampling failure)")
def candidates_complete(context: AssetCheckExecutionContext, settings: WofnSettings, home: WofnHomeResource,
                        duckdb: DuckDBResource) -> AssetCheckResult:
    h = home.home
    batch = _batch(context)
    if not partition_keys(h.table_dir("candidates")):
        return AssetCheckResult(passed=False, metadata={"reason": MetadataValue.text("no candidates written")})
    short = _run(duckdb, "candidates_short", {"prompts": _glob(h, "prompts"), "candidates": _glob(h, "candidates"),
                                              "n": settings.n, "batch": batch})
    failed = _failed_prompts(h)
    excused = [r for r in short if r["prompt_id"] in failed]
    short = [r for r in short if r["prompt_id"] not in failed]
    return AssetCheckResult(passed=not short, metadata={
        "batch": MetadataValue.text(batch or "every batch"),
        "n": MetadataValue.int(settings.n),
        "prompts_short_of_n": MetadataValue.int(len(short)),
        "prompts_with_recorded_failure": MetadataValue.int(len(excused)),
        "examples": _sample(short),
    })


@asset_check(asset="candidates", blocking=True,
             description="no (prompt_id, candidate_idx) occurs twice, across every prompt batch")
def candidates_unique(context: AssetCheckExecutionContext, home: WofnHomeResource,
                      duckdb: DuckDBResource) -> AssetCheckResult:
    h = home.home
    if not partition_keys(h.table_dir("candidates")):
        return AssetCheckResult(passed=False, metadata={"reason": MetadataValue.text("no candidates written")})
    duplicated = _run(duckdb, "candidates_duplicated", {"candidates": _glob(h, "candidates")})
    return AssetCheckResult(passed=not duplicated, metadata={
        "duplicated_keys": MetadataValue.int(len(duplicated)),
        "examples": _sample(duplicated),
    })


@asset_check(asset="candidate_scores", blocking=True,
             description="every reward is finite (pairwise teacher: every tournament logit)")
def rewards_finite(context: AssetCheckExecutionContext, home: WofnHomeResource,
                   duckdb: DuckDBResource) -> AssetCheckResult:
    h = home.home
    batch = _batch(context)
    is_pairwise = pairwise.is_pairwise(str(h.model_dir("base_reward_model")))
    table = "tournament_pairs" if is_pairwise else "candidate_scores"
    if not partition_keys(h.table_dir(table)):
        return AssetCheckResult(passed=False, metadata={"reason": MetadataValue.text(f"no {table} written")})
    query = "tournament_logits_not_finite" if is_pairwise else "rewards_not_finite"
    bad = _run(duckdb, query, {"scores": _glob(h, table), "batch": batch})
    return AssetCheckResult(passed=not bad, metadata={
        "batch": MetadataValue.text(batch or "every batch"),
        "table": MetadataValue.text(table),
        "not_finite": MetadataValue.int(len(bad)),
        "examples": _sample(bad),
    })


def _pairs_check(h, duckdb: DuckDBResource, asset: str) -> AssetCheckResult:
    files = parquet_files(h.table_dir(asset))
    if not files:
        return AssetCheckResult(passed=False, metadata={"reason": MetadataValue.text(f"no {asset} written")})
    problems = _run(duckdb, "pairs_invalid", {"pairs": [f.as_posix() for f in files]})
    counts: dict[str, int] = {}
    for row in problems:
        counts[row["problem"]] = counts.get(row["problem"], 0) + 1
    return AssetCheckResult(passed=not problems, metadata={
        "problems": MetadataValue.json(counts),
        "examples": _sample(problems),
    })


@asset_check(asset="west_of_n_pairs", blocking=True,
             description="chosen != rejected, margin > 0, confidence within [0.5, 1], one pair per prompt")
def west_of_n_pairs_valid(home: WofnHomeResource, duckdb: DuckDBResource) -> AssetCheckResult:
    return _pairs_check(home.home, duckdb, "west_of_n_pairs")


@asset_check(asset="filtered_pairs", blocking=True,
             description="chosen != rejected, margin > 0, confidence within [0.5, 1], one pair per prompt")
def filtered_pairs_valid(home: WofnHomeResource, duckdb: DuckDBResource) -> AssetCheckResult:
    return _pairs_check(home.home, duckdb, "filtered_pairs")


@asset_check(asset="student_reward_model",
             description="the student is not worse than the base on the evaluation pairs beyond max_accuracy_drop")
def student_not_worse_than_base(settings: WofnSettings, home: WofnHomeResource) -> AssetCheckResult:
    manifest = models.read_manifest(str(home.home.model_dir("student_reward_model")))
    student = (manifest.get("evaluation") or {}).get("accuracy")
    base = (manifest.get("teacher_evaluation") or {}).get("accuracy")
    if student is None or base is None:
        return AssetCheckResult(passed=False, severity=AssetCheckSeverity.WARN,
                                metadata={"reason": MetadataValue.text("the student's manifest has no evaluation")})
    drop = base - student
    return AssetCheckResult(passed=drop <= settings.max_accuracy_drop, severity=AssetCheckSeverity.WARN, metadata={
        "base_accuracy": MetadataValue.float(base),
        "student_accuracy": MetadataValue.float(student),
        "accuracy_drop": MetadataValue.float(drop),
        "base_length_balanced_accuracy": MetadataValue.float(
            (manifest.get("teacher_evaluation") or {}).get("length_balanced_accuracy", float("nan"))),
        "student_length_balanced_accuracy": MetadataValue.float(
            (manifest.get("evaluation") or {}).get("length_balanced_accuracy", float("nan"))),
        "tolerance": MetadataValue.float(settings.max_accuracy_drop),
        "eval_n": MetadataValue.int((manifest.get("evaluation") or {}).get("n", 0)),
    })


@asset_check(asset="base_reward_model", blocking=True,
             description="the teacher learned more than length: its length-balanced validation accuracy is above "
                         "teacher_min_length_balanced_accuracy (warns; blocks with teacher_gate: block)")
def teacher_learns_preference(settings: WofnSettings, home: WofnHomeResource) -> AssetCheckResult:
    manifest = models.read_manifest(str(home.home.model_dir("base_reward_model")))
    validation = (manifest.get("train_metrics") or {}).get("validation") or {}
    severity = AssetCheckSeverity.ERROR if settings.teacher_gate == "block" else AssetCheckSeverity.WARN
    balanced = validation.get("length_balanced_accuracy")
    if balanced is None:
        return AssetCheckResult(passed=False, severity=severity, metadata={"reason": MetadataValue.text(
            "the base RM has no validation evaluation (rm_val_fraction 0, or a model trained before the gate)")})
    floor = settings.teacher_min_length_balanced_accuracy
    passed = balanced > floor
    metadata = {
        "val_length_balanced_accuracy": MetadataValue.float(balanced),
        "val_accuracy": MetadataValue.float(validation["accuracy"]),
        "val_longer_wins_accuracy": MetadataValue.float(validation["longer_wins_accuracy"]),
        "val_shorter_wins_accuracy": MetadataValue.float(validation["shorter_wins_accuracy"]),
        "val_mean_margin": MetadataValue.float(validation["mean_margin"]),
        "val_n": MetadataValue.int(validation["n"]),
        "threshold": MetadataValue.float(floor),
    }
    if not passed:
        metadata["reason"] = MetadataValue.text(
            f"the teacher's length-balanced validation accuracy is {100 * balanced:.1f}% <= {100 * floor:.0f}% (a "
            f"length-only judge scores 50%): West-of-N would distil little more than length. Train it longer or "
            f"with a larger learning rate (docs/results_teacher.md), or give it more human pairs")
    return AssetCheckResult(passed=passed, severity=severity, metadata=metadata)


CHECKS = [teacher_learns_preference, candidates_complete, candidates_unique, rewards_finite, west_of_n_pairs_valid,
          filtered_pairs_valid, student_not_worse_than_base]
