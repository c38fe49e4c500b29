"""The pipeline at scale on one machine: 10^5 and 10^6 prompts through the Dagster assets.

    python -m bench.scale                              # 10^5 then 10^6 prompts (hours on 2 cores)
    python -m bench.scale --prompts 10000 100000       # other sizes (a quick look: 10^4 and 10^5)
    python -m bench.scale --dry-run                    # the plan: sizes, settings, stages

For each size, a generated table of short synthetic prompts goes through the assets `prompts` ->
`candidates` (the sampling Beam job: tiny policy, N=2) -> `candidate_scores` (the scoring Beam
job: tiny reward model) -> `west_of_n_pairs` -> `filtered_pairs`, each materialized by Dagster
in a process of its own on the DirectRunner (the tiny profile, with the overrides in SETTINGS),
after a tiny base reward model (`human_preferences`, `eval_preferences`, `base_reward_model`; the
same at every size). Each stage's wall time, time per 10^5 prompts and peak RSS (the process
and what it waited for, `os.wait4`) are printed as one JSON line and appended to `--out` (default
bench/scale.jsonl) as soon as the stage ends; a size's home (`--root`, default .wofn-scale/)
keeps its tables, so a killed run is rerun from the stage it was in (a stage recorded in `--out`
whose tables the home still has is skipped, its newest record standing for it, unless `--fresh`).
The last line compares the sizes: peak memory and time, largest over smallest.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

SIZES = (100_000, 1_000_000)
SETUP = ("human_preferences", "eval_preferences", "base_reward_model")
STAGES = ("prompts", "candidates", "candidate_scores", "west_of_n_pairs", "filtered_pairs")
PROFILE = "tiny"
# the tiny profile's models and filters; every prompt of the generated file, N=2, short responses,
# large batches (the tiny models are cheap per row, so per-call overhead dominates small batches)
SETTINGS = {"max_prompts": None, "prompt_sources": ["unlabeled"], "n": 2, "max_new_tokens": 4,
            "sample_batch_size": 128, "score_batch_size": 512, "rounds": 1}
_TOPICS = ("a fact about", "a poem on", "a joke about", "advice on", "a summary of", "a question about",
           "a recipe with", "a story about")


def prompt_table(n: int):
    """`n` distinct short prompts (HH transcript form), a few words each."""
    import pyarrow as pa

    return pa.table({"prompt": [f"\n\nHuman: Tell me {_TOPICS[i % len(_TOPICS)]} the number {i}.\n\nAssistant:"
                                for i in range(n)]})


def _home(root: Path, n: int) -> Path:
    return root / f"prompts-{n}"


def _prompt_file(home: Path, n: int) -> Path:
    return home / f"scale_{n}.parquet"


def materialize(home: Path, prompt_file: Path, stage: str) -> None:
    """Materialize asset `stage` (with its multi-asset siblings and checks) in this process, from
    the tables already in `home`."""
    from dagster import AssetKey, AssetsDefinition, AssetSelection, DagsterInstance
    from dagster import materialize as dagster_materialize

    from wofn.paths import batch_key
    from wofn_dagster import definitions
    from wofn_dagster.partitions import prompt_batches, register
    from wofn_dagster.resources import wofn_resources

    instance = DagsterInstance.get()
    key = batch_key(str(prompt_file))
    register(instance, [key])
    assets = list(definitions.defs.assets or [])
    checks = list(definitions.defs.asset_checks or [])
    graph = definitions.defs.resolve_asset_graph()
    partitioned = graph.get(AssetKey(stage)).partitions_def == prompt_batches
    # a multi-asset is materialized whole: `stage` with its siblings (e.g. prompts with prompt_errors)
    keys = next(a.keys for a in assets if isinstance(a, AssetsDefinition) and AssetKey(stage) in a.keys)
    result = dagster_materialize(
        [*assets, *checks], selection=AssetSelection.assets(*keys), instance=instance,
        resources=wofn_resources(home=str(home), profile=PROFILE, unlabeled_prompts=str(prompt_file), **SETTINGS),
        partition_key=key if partitioned else None, raise_on_error=True)
    if not result.success:
        raise SystemExit(f"{stage}: the materialization failed")


def _run_stage(home: Path, prompt_file: Path, stage: str, log) -> dict:
    """Run one stage in a child process; its seconds and peak RSS (MB)."""
    env = {**os.environ, "WOFN_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "WOFN_PROFILE": PROFILE}
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "bench.scale", "--stage", stage, "--home", str(home),
                              "--prompt-file", str(prompt_file)], env=env, stdout=log, stderr=log)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"stage {stage} at {home} failed (exit {code}); its log: {log.name}")
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def _rows(home: Path, stage: str) -> int | None:
    from wofn.paths import WofnHome, parquet_files, table_rows

    table = WofnHome(home).table_dir(stage)
    return table_rows(table) if parquet_files(table) else None


def _emit(record: dict, out: Path) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    with out.open("a") as fh:
        fh.write(line + "\n")


def _done(out: Path, home: Path, n: int, stage: str) -> dict | None:
    """The newest record of `stage` at `n` prompts in `out`, if `home` still has what the stage wrote
    (a record from another machine or a deleted home does not skip the stage)."""
    from wofn.paths import WofnHome

    layout = WofnHome(home)
    written = layout.model_dir(stage) if stage == "base_reward_model" else layout.table_dir(stage)
    if not out.exists() or not written.is_dir() or not any(written.iterdir()):
        return None
    found = None
    for line in out.read_text().splitlines():
        record = json.loads(line)
        if record.get("prompts") == n and record.get("stage") == stage:
            found = record
    return found


def run_size(n: int, root: Path, out: Path, fresh: bool) -> list[dict]:
    home = _home(root, n)
    if fresh and home.exists():
        shutil.rmtree(home)
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "wofn_dagster" / "instance" / "dagster.yaml",
                home / "dagster" / "dagster.yaml")
    prompt_file = _prompt_file(home, n)
    if not prompt_file.exists():
        import pyarrow.parquet as pq

        pq.write_table(prompt_table(n), prompt_file)
    records = []
    with (home / "stages.log").open("a") as log:
        for stage in (*SETUP, *STAGES):
            earlier = None if fresh else _done(out, home, n, stage)
            if earlier:
                records.append(earlier)
                continue
            figures = _run_stage(home, prompt_file, stage, log)
            record = {"prompts": n, "stage": stage, **figures,
                      "seconds_per_1e5_prompts": round(figures["seconds"] * 1e5 / n, 1),
                      "rows": _rows(home, stage), "date": datetime.datetime.now().isoformat(timespec="seconds"),
                      "machine": f"{os.cpu_count()} CPUs {platform.machine()}"}
            _emit(record, out)
            records.append(record)
    return records


def compare(by_size: dict[int, list[dict]]) -> dict:
    """Largest size over smallest: per stage and overall, peak RSS and seconds."""
    small, large = min(by_size), max(by_size)
    stages = {}
    for a, b in zip(by_size[small], by_size[large]):
        if a["stage"] in STAGES:
            stages[a["stage"]] = {"peak_rss_ratio": round(b["peak_rss_mb"] / a["peak_rss_mb"], 2),
                                  "time_ratio": round(b["seconds"] / a["seconds"], 1)}
    peak = {n: max(r["peak_rss_mb"] for r in rs if r["stage"] in STAGES) for n, rs in by_size.items()}
    return {"compare": f"{large} vs {small} prompts", "peak_rss_mb": peak,
            "peak_rss_ratio": round(peak[large] / peak[small], 2), "stages": stages}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, nargs="+", default=list(SIZES), help="sizes, in prompts")
    parser.add_argument("--root", default=".wofn-scale", help="folder for each size's home")
    parser.add_argument("--out", default="bench/scale.jsonl", help="JSON lines, appended as stages end")
    parser.add_argument("--fresh", action="store_true", help="start each size over (its home is deleted)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # internal: materialize one stage in this process
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--prompt-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage:
        materialize(Path(args.home), Path(args.prompt_file), args.stage)
        return 0
    plan = {"sizes": args.prompts, "profile": PROFILE, "settings": SETTINGS, "setup": SETUP, "stages": STAGES,
            "root": args.root, "out": args.out}
    if args.dry_run:
        print(json.dumps(plan, indent=2))
        return 0
    root, out = Path(args.root).resolve(), Path(args.out)
    by_size = {n: run_size(n, root, out, args.fresh) for n in args.prompts}
    if len(by_size) > 1:
        _emit(compare(by_size), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
