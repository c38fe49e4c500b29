"""The whole West-of-N loop, headless, on the tiny profile: a real Dagster run over real Beam jobs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from wofn import schemas

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    env = {**os.environ, "WOFN_PROFILE": "tiny", "WOFN_HOME": str(root / "home"),
           "DAGSTER_HOME": str(root / "dagster")}
    (root / "dagster").mkdir()
    # as `make run-tiny`: register the profile's prompt batch, then every asset in one run
    key = subprocess.run([sys.executable, "-m", "wofn_dagster.partitions", "register-profile"],
                         cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert key == "prompts_unlabeled"
    proc = subprocess.run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "wofn_dagster.definitions", "--select", "*",
         "--partition", key], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return root / "home", env, proc.stdout + proc.stderr


# dead letters (none on the shipped data) and the pairwise teacher's table: views with no rows
EMPTY_VIEWS = {"prompt_errors", "candidate_errors", "score_errors", "tournament_pairs"}


def test_every_catalog_view_returns_rows(tiny_run):
    home, _, _ = tiny_run
    con = duckdb.connect(str(home / "wofn.duckdb"), read_only=True)
    for view in schemas.TABLES:
        count = con.sql(f'select count(*) from "{view}"').fetchall()[0][0]
        assert (count == 0) if view in EMPTY_VIEWS else (count > 0), view
    # the views are over the Parquet files, not copies
    kinds = dict(con.sql("select view_name, sql from duckdb_views() where not internal").fetchall())
    assert set(kinds) == set(schemas.TABLES) and all("read_parquet" in sql for sql in kinds.values())
    rounds = con.sql("select round, role from reward_model_evaluations order by round").fetchall()
    assert rounds == [(0, "base"), (1, "student"), (2, "student")]
    n = con.sql("select count(*) from candidates").fetchall()[0][0]
    assert n == 4 * con.sql("select count(*) from prompts").fetchall()[0][0]
    con.close()


def test_models_and_lineage(tiny_run):
    home, _, log = tiny_run
    for name in ("base_reward_model", "student_reward_model"):
        folder = home / "models" / name
        assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    manifest = json.loads((home / "models" / "student_reward_model" / "manifest.json").read_text())
    base = json.loads((home / "models" / "base_reward_model" / "manifest.json").read_text())
    assert manifest["lineage"]["teacher"]["revision"] == base["revision"]
    assert set(manifest["lineage"]) >= {"human_preferences", "synthetic_pairs", "teacher", "policy", "candidates"}
    ev, teacher_ev = manifest["evaluation"], manifest["teacher_evaluation"]
    assert 0 <= ev["accuracy"] <= 1 and manifest["accuracy_delta_vs_teacher"] == pytest.approx(
        ev["accuracy"] - teacher_ev["accuracy"])
    assert teacher_ev == base["evaluation"], "the teacher's stored evaluation is reused, not recomputed"
    assert "RUN_SUCCESS" in log
    round2 = json.loads((home / "rounds" / "round_2" / "student_reward_model" / "manifest.json").read_text())
    assert round2["round"] == 2
    assert round2["lineage"]["teacher"]["revision"] == manifest["revision"], "round 2 is taught by round 1's student"
    for table in ("candidate_scores", "west_of_n_pairs", "filtered_pairs"):
        assert list((home / "rounds" / "round_2" / table).glob("*.parquet")), table
    # the tiny profile balances the pairs (length_balance): round 2's funnel ends with that step
    funnel = duckdb.sql(f"select step, pairs_kept from '{home}/rounds/round_2/pair_funnel/*.parquet' "
                        "order by step_order").fetchall()
    kept = duckdb.sql(f"select count(*) from '{home}/rounds/round_2/filtered_pairs/*.parquet'").fetchall()[0][0]
    assert funnel[-1] == ("length_balance", kept) and funnel[-2][0] == "max_tokens"


def test_length_balanced_accuracy_beside_accuracy_in_metadata(tiny_run):
    """Wherever a model's accuracy is shown (base, student, the check), its length-balanced accuracy is too."""
    from dagster import AssetKey, DagsterInstance

    home, env, log = tiny_run
    manifest = json.loads((home / "models" / "student_reward_model" / "manifest.json").read_text())
    ev, teacher_ev = manifest["evaluation"], manifest["teacher_evaluation"]
    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        def metadata(asset):
            event = instance.get_latest_materialization_event(AssetKey(asset))
            return {k: v.value for k, v in event.asset_materialization.metadata.items()}

        base, student = metadata("base_reward_model"), metadata("student_reward_model")
    assert base["eval_length_balanced_accuracy"] == pytest.approx(teacher_ev["length_balanced_accuracy"])
    assert student["student_length_balanced_accuracy"] == pytest.approx(ev["length_balanced_accuracy"])
    assert student["base_length_balanced_accuracy"] == pytest.approx(teacher_ev["length_balanced_accuracy"])
    assert student["length_balanced_delta"] == pytest.approx(
        ev["length_balanced_accuracy"] - teacher_ev["length_balanced_accuracy"])
    assert re.search(r"length-balanced teacher [0-9.]+, student [0-9.]+", log)


def test_cli_sql_and_evaluate(tiny_run):
    home, env, _ = tiny_run
    out = subprocess.run([str(BIN / "wofn"), "sql", "select count(*) as n from filtered_pairs", "--format", "json"],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip())["n"] > 0
    out = subprocess.run([str(BIN / "wofn"), "evaluate", "--model", str(home / "models" / "student_reward_model"),
                          "--pairs", str(REPO / "data" / "hh_test.parquet"), "--max-pairs", "10"],
                         env=env, capture_output=True, text=True, check=True).stdout
    line = json.loads(out.strip())
    assert line["n"] == 10 and 0 <= line["accuracy"] <= 1


def test_manifest_names_data_versions_and_wofn_lineage_prints_the_chain(tiny_run):
    home, env, log = tiny_run
    student = home / "models" / "student_reward_model"
    lineage = json.loads((student / "manifest.json").read_text())["lineage"]
    batch = lineage["prompt_batches"]["prompts_unlabeled"]
    assert set(batch) == {"prompts", "candidates", "candidate_scores"}
    assert lineage["synthetic_pairs"] == lineage["filtered_pairs"] and lineage["synthetic_table"] == "filtered_pairs"
    for asset, version in (("filtered_pairs", lineage["filtered_pairs"]),
                           ("west_of_n_pairs", lineage["west_of_n_pairs"]),
                           ("candidates", batch["candidates"]), ("prompts", batch["prompts"])):
        record = json.loads((home / "lineage" / asset / f"{version}.json").read_text())
        assert record["data_version"] == version and record["code_version"], asset
    out = subprocess.run([str(BIN / "wofn"), "lineage", str(student)], env=env, capture_output=True, text=True,
                         check=True).stdout
    lines = out.splitlines()
    assert lines[0].startswith("student  revision ")
    for expected in ("teacher (base)", f"synthetic pairs (filtered_pairs)  {lineage['filtered_pairs']}",
                     f"west_of_n_pairs  {lineage['west_of_n_pairs']}",
                     f"candidates[prompts_unlabeled]  {batch['candidates']}",
                     f"candidate_scores[prompts_unlabeled]  {batch['candidate_scores']}",
                     f"prompts[prompts_unlabeled]  {batch['prompts']}", "prompts_unlabeled.parquet (sha256 "):
        assert any(expected in line for line in lines), (expected, out)
    tree = json.loads(subprocess.run([str(BIN / "wofn"), "lineage",
                                      str(home / "rounds" / "round_2" / "student_reward_model"),
                                      "--format", "json"], env=env, capture_output=True, text=True, check=True).stdout)
    assert tree["round"] == 2 and tree["inputs"][1]["revision"] == json.loads(
        (student / "manifest.json").read_text())["revision"], "round 2's teacher is round 1's student"
    for check in ("candidates_complete", "candidates_unique", "rewards_finite", "west_of_n_pairs_valid",
                  "filtered_pairs_valid"):
        assert re.search(rf"Asset check '{check}' on '\w+' passed", log), check


def test_cli_sql_refuses_missing_catalog(tmp_path):
    proc = subprocess.run([str(BIN / "wofn"), "sql", "select 1", "--home", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "no catalog" in proc.stderr


# --- Issue 21: the Dagster run worker SIGKILLed at four points --------------------------------------

# Each run is a real Dagster run recorded in $DAGSTER_HOME's instance, its steps in the run worker's
# process, so a SIGKILL of that process group kills the run worker mid-step.


def _run_until(env: dict, asset: str | None, marker: str | None, delay_s: float = 0.0) -> tuple[int, str]:
    """Materialize `asset` and everything downstream (None: every asset) in a run of the instance,
    for the tiny batch where the selection holds a partitioned asset; with `marker`, SIGKILL the
    run worker's process group `delay_s` after a log line containing it. Returns (exit code, log)."""
    code = ("import sys\n"
            "from dagster import AssetSelection, DagsterInstance, materialize\n"
            "from wofn_dagster.definitions import defs\n"
            "from wofn_dagster.selections import select\n"
            "selection = AssetSelection.all() if sys.argv[1] == '*' else select(sys.argv[1], downstream=True)\n"
            "keys = selection.resolve(defs.resolve_asset_graph())\n"
            "partitioned = any(a.partitions_def and set(a.keys) & keys for a in defs.assets)\n"
            "with DagsterInstance.get() as instance:\n"
            "    result = materialize(list(defs.assets) + list(defs.asset_checks), selection=selection,\n"
            "                         instance=instance, resources=defs.resources,\n"
            "                         partition_key='prompts_unlabeled' if partitioned else None)\n"
            "sys.exit(0 if result.success else 1)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, asset or "*"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if marker is not None and marker in line:
            time.sleep(delay_s)
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.stdout.close()
    return proc.wait(timeout=900), "".join(lines)


def _published(home: Path) -> dict[str, list]:
    """Every published table's rows, sorted, with the home folder's path written as <home>."""
    tables = {}
    for folder in sorted(p for p in (home / "tables").iterdir() if not p.name.startswith(".")):
        rows = pq.read_table(folder).to_pylist() if any(folder.rglob("*.parquet")) else []
        text = json.dumps(rows, sort_keys=True, default=str).replace(str(home), "<home>")
        tables[folder.name] = sorted(json.dumps(r, sort_keys=True) for r in json.loads(text))
    return tables


def test_the_run_worker_killed_at_four_points_then_rerun_publishes_the_uninterrupted_tables(tiny_run, tmp_path):
    """SIGKILL of the run worker mid-sampling, mid-scoring, mid-pair selection and mid-training, each
    followed by materializing again from the killed asset: the tables equal an uninterrupted run's
    (`tiny_run`), no staging folder is left, and the killed runs end up FAILURE with a message."""
    baseline_home, base_env, _ = tiny_run
    env = {**base_env, "WOFN_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dagster")}
    (tmp_path / "dagster").mkdir()
    subprocess.run([sys.executable, "-m", "wofn_dagster.partitions", "register-profile"], cwd=REPO, env=env,
                   capture_output=True, check=True)
    kills = [  # (materialize from, kill after this log line, delay)
        (None, "sample_candidates: 1/", 0.0),  # mid-sampling, after its first prompt
        ("candidates", "score_candidates: 32/", 0.0),  # mid-scoring
        ("candidate_scores", 'Started execution of step "west_of_n_pairs"', 0.2),  # mid-pair selection
        # mid-student: 1 s after its step starts (loading or training); at 4 s a 2-core AVX512-BF16 CPU had
        # finished the tiny student already, and the run ended SUCCESS before the kill
        ("west_of_n_pairs", 'Started execution of step "student_reward_model"', 1.0),
    ]
    for asset, marker, delay in kills:
        code, log = _run_until(env, asset, marker, delay)
        assert code == -signal.SIGKILL, f"not killed at {marker!r}: {log[-3000:]}"
    code, log = _run_until(env, "student_reward_model", None)
    assert code == 0, log[-4000:]

    home = tmp_path / "home"
    assert _published(home) == _published(baseline_home)
    for name in ("base_reward_model", "student_reward_model"):
        assert (home / "models" / name / "model.safetensors").read_bytes() == \
            (baseline_home / "models" / name / "model.safetensors").read_bytes()
    leftovers = [p for p in home.rglob(".*") if ".staging" in p.name or ".resume-" in p.name or p.suffix == ".tmp"]
    assert leftovers == []

    # the killed runs still say STARTED until reaped; then FAILURE, with what happened
    reap = subprocess.run([sys.executable, "-m", "wofn_dagster.runs", "reap"], cwd=REPO, env=env,
                          capture_output=True, text=True, check=True)
    assert reap.stdout.count("died; marked failed") == 4, reap.stdout + reap.stderr
    statuses = subprocess.run(
        [sys.executable, "-c", "from dagster import DagsterInstance\n"
         "with DagsterInstance.get() as i:\n"
         "    print(sorted(r.status.value for r in i.get_runs()))"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert statuses == str(sorted(["FAILURE"] * 4 + ["SUCCESS"]))
