"""`wofn`: work outside the Dagster UI.

    wofn evaluate --model DIR [--model DIR ...] --pairs FILE [--pairs FILE ...] [--format table]
                                                               one JSON line per (model, pairs file); with
                                                               2+ models, each one minus the first with a
                                                               95% paired-bootstrap interval (--model a,b,c:
                                                               one model's seeds, compared seed by seed)
    wofn sql QUERY_OR_FILE [--param name=value ...] [--view name=PATH ...]
                                                               a table, from the catalog
    wofn export --output FILE.parquet|FILE.jsonl [--table filtered_pairs] [--format trl]
                                                               pairs in TRL's preference format
    wofn lineage MODEL_DIR [--format json]                     the chain behind a reward model:
                                                               teacher, pairs, candidates, prompt batches
    wofn experiment CONFIG [--estimate] [--report FILE.md]     a grid of students (strategy x N x filter x
                                                               seed) vs the base: cost, run, results
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import sys
from pathlib import Path

import duckdb

from wofn import catalog, data, evaluation, export, lineage, models, schemas
from wofn.paths import WofnHome, parquet_files
from wofn.settings import Settings, setting_help


def _param(text: str) -> tuple[str, object]:
    """name=value; the value binds as an int, else a float, else text; `null` binds SQL NULL."""
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"--param takes name=value, got {text!r}")
    if value.lower() == "null":
        return name, None
    for cast in (int, float):
        try:
            return name, cast(value)
        except ValueError:
            pass
    return name, value


def _view(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name.isidentifier() or not path:
        raise argparse.ArgumentTypeError(f"--view takes name=PATH (a Parquet file or folder), got {text!r}")
    return name, Path(path)


query_parameters = catalog.query_parameters  # the named parameters ($name) a query binds


# Views `wofn sql` adds over every round's tables: round 1 is $WOFN_HOME/tables, round k >= 2
# is $WOFN_HOME/rounds/round_k. Each has the table's columns after a `round` column.
ROUND_TABLES = ("candidate_scores", "west_of_n_pairs", "filtered_pairs")

_MISSING_HINTS = {
    "student_scores": "the student's reward per candidate (wofn.schemas.CANDIDATE_SCORES); make it with "
                      "`python -m beam_jobs.score_candidates "
                      "--candidates '$WOFN_HOME/tables/candidates/batch=*/*.parquet' "
                      "--output /tmp/student_scores --reward-model $WOFN_HOME/models/student_reward_model` and "
                      "pass --view student_scores=/tmp/student_scores (in a run with rounds >= 2, "
                      "$WOFN_HOME/rounds/round_2/candidate_scores are round 1's student's)",
    "pair_draws": "written by the west_of_n_pairs asset; materialize it again",
    "pair_selection_report": "written by the west_of_n_pairs asset; materialize it again",
    "pair_funnel": "written by the filtered_pairs asset; materialize it again",
}


def _parquet_files(path: Path) -> list[str]:
    return [str(f) for f in parquet_files(path)]  # flat, or every batch=<key>/ folder of a partitioned table


def _register_views(con, home: WofnHome, extra: list[tuple[str, Path]]) -> None:
    """Temporary views for this query: rounds_<table> over every round, and each --view."""
    round_dirs = sorted((home.root / "rounds").glob("round_*"), key=lambda p: int(p.name.split("_")[1])) \
        if (home.root / "rounds").is_dir() else []
    for table in ROUND_TABLES:
        sources = [(1, home.table_dir(table))] + [(int(d.name.split("_")[1]), d / table) for d in round_dirs]
        relation = None
        for k, folder in sources:
            files = _parquet_files(folder) if folder.exists() else []
            if not files:
                continue
            part = con.read_parquet(files).select(duckdb.ConstantExpression(k).alias("round"),
                                                  duckdb.StarExpression())
            relation = part if relation is None else relation.union(part)
        if relation is not None:
            con.register(f"rounds_{table}", relation)
    for name, path in extra:
        files = _parquet_files(path) if path.exists() else []
        if not files:
            raise FileNotFoundError(f"--view {name}={path}: no such Parquet file, or no *.parquet in that folder")
        con.register(name, con.read_parquet(files))


def _missing_table_message(exc: duckdb.CatalogException, con, home: WofnHome) -> str | None:
    match = re.search(r"Table with name (\w+) does not exist", str(exc))
    if not match:
        return None
    name = match.group(1)
    have = sorted(r[0] for r in con.sql("select view_name from duckdb_views() where not internal").fetchall())
    if name.startswith("rounds_") and name[len("rounds_"):] in ROUND_TABLES:
        hint = f"`wofn sql` makes it from the {name[len('rounds_'):]} tables of every round; this run has none"
    elif name in _MISSING_HINTS:
        hint = _MISSING_HINTS[name]
    elif name in schemas.TABLES:
        hint = f"materialize the asset that writes {name}"
    else:
        hint = "give it with --view NAME=PATH"
    return (f"the query reads {name!r}, which is not in this run ({home.catalog_path} has: {', '.join(have)}); "
            f"{hint}")


def _evaluate(args: argparse.Namespace) -> int:
    if not 0 < args.high_confidence_fraction <= 1:
        raise ValueError(f"--high-confidence-fraction must be in (0, 1], got {args.high_confidence_fraction}")
    if args.max_pairs is not None and args.max_pairs < 1:
        raise ValueError(f"--max-pairs must be >= 1, got {args.max_pairs}")
    # read every pairs file before loading any model: bad input fails fast, naming the file
    pair_sets = [(str(path), data.load_preferences(path, args.max_pairs).to_pylist()) for path in args.pairs]
    for path, pairs in pair_sets:
        if not pairs:
            raise data.InputError(f"{path}: no pairs to evaluate")
    groups = [[m for m in spec.split(",") if m] for spec in args.model]  # "a,b,c": one model, three seeds
    if any(len(g) != len(groups[0]) for g in groups):
        raise ValueError("--model: every model needs the same number of seeds (comma-separated folders), got "
                         + ", ".join(str(len(g)) for g in groups))
    results, margins = [], []
    for spec, members in zip(args.model, groups):
        for model in members:
            rm = models.load_reward_model(model, device=args.device)  # once per model
            for path, pairs in pair_sets:
                result = {"pairs": path, **evaluation.evaluate_loaded(
                    rm, pairs, args.max_length, high_confidence_fraction=args.high_confidence_fraction,
                    with_margins=True)}
                margins.append({**result, "group": spec})
                result.pop("margins")
                results.append(result)
                if args.format == "json":
                    print(json.dumps(result), flush=True)
    comparisons = evaluation.compare(margins, dict(pair_sets))
    if args.format == "table":
        print(evaluation.format_table(results), flush=True)
        if comparisons:
            print("\n" + evaluation.format_comparison(comparisons), flush=True)
    else:
        for row in comparisons:
            print(json.dumps({"comparison": row}), flush=True)
    results += [{"comparison": row} for row in comparisons]
    if args.output:
        out = Path(args.output)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            print(f"wofn evaluate: cannot write {out}: {exc}", file=sys.stderr)
            return 2
    return 0


def _sql(args: argparse.Namespace) -> int:
    text = args.query
    if text.endswith(".sql"):
        if not Path(text).is_file():
            print(f"wofn sql: no SQL file {text}", file=sys.stderr)
            return 2
        text = Path(text).read_text(encoding="utf-8")
    params = dict(args.param)
    wanted = catalog.file_parameters(text)  # with those of the SQL files it reads
    missing = [n for n in wanted if n not in params]
    unknown = [n for n in params if n not in wanted]
    if missing or unknown:
        problems = []
        if missing:
            problems.append("missing " + ", ".join(f"--param {n}=..." for n in missing))
        if unknown:
            problems.append("unknown " + ", ".join(f"--param {n}" for n in unknown))
        takes = ", ".join(f"${n}" for n in wanted) or "no parameters"
        print(f"wofn sql: {'; '.join(problems)}; the query takes {takes} (see its header)", file=sys.stderr)
        return 2
    home = WofnHome(Path(args.home).resolve()) if args.home else WofnHome.from_env()
    if not home.catalog_path.exists():
        print(f"wofn sql: no catalog at {home.catalog_path}; materialize the pipeline first (make run) "
              "or set WOFN_HOME", file=sys.stderr)
        return 2
    con = catalog.connect(home.catalog_path, read_only=True)
    try:
        _register_views(con, home, args.view)
        try:
            catalog.register_dependencies(con, text, params)  # the SQL files it reads, as views
            relation = con.sql(text, params=catalog.bound_parameters(text, params))
            if relation is None:
                return 0
            if args.format == "json":
                for row in relation.to_arrow_table().to_pylist():
                    print(json.dumps(row, default=str))
            elif args.format == "csv":
                _print_csv(relation)
            else:
                relation.show(max_rows=args.max_rows, max_width=args.max_width)
        except duckdb.CatalogException as exc:
            print(f"wofn sql: {_missing_table_message(exc, con, home) or exc}", file=sys.stderr)
            return 2
        except duckdb.Error as exc:
            print(f"wofn sql: {exc}", file=sys.stderr)
            return 2
    finally:
        con.close()
    return 0


def _export(args: argparse.Namespace) -> int:
    home = WofnHome(Path(args.home).resolve()) if args.home else WofnHome.from_env()
    result = export.export_pairs(home, Path(args.output), table=args.table, round_k=args.round, fmt=args.format,
                                 force=args.force, strategy=args.strategy, seed=args.seed)
    print(json.dumps(result))
    return 0


def _lineage(args: argparse.Namespace) -> int:
    home = WofnHome(Path(args.home).resolve()) if args.home else None
    tree = lineage.chain(Path(args.model_dir), home)
    print(json.dumps(tree, indent=2, default=str) if args.format == "json" else lineage.format_chain(tree))
    return 0


def _print_csv(relation) -> None:
    import csv

    table = relation.to_arrow_table()
    writer = csv.writer(sys.stdout)
    writer.writerow(table.column_names)
    for row in table.to_pylist():
        writer.writerow(row.values())


def _experiment(args) -> int:
    from wofn.experiment import config as xconfig
    from wofn.experiment import runner

    cfg = xconfig.load(args.config)
    home = Path(args.home) if args.home else WofnHome.from_env().root
    command = "wofn " + " ".join(shlex.quote(a) for a in args.argv)
    if args.save_state or args.restore_state:
        from wofn.experiment import state

        exp = runner.Experiment(cfg, Path(home))
        if args.save_state:
            manifest = state.save(exp, Path(args.save_state))
            print(f"saved {manifest['files']} files of {exp.root} to {args.save_state} (model weights left out)")
            for note in manifest["left_out"]:
                print(f"  left out: {note}")
            return 0
        restored = state.restore(exp, Path(args.restore_state))
        print(f"restored {restored['restored']} files into {exp.root} ({restored['kept']} already there, kept)"
              + ("" if restored["same_config"] else "; the archive was saved under another version of the config"))
    if args.estimate or not args.report_only:
        print(runner.format_estimate(runner.estimate(cfg, Path(home))), flush=True)
    if args.estimate:
        return 0
    report = runner.run_and_report(cfg, Path(home), args.report, command, run=not args.report_only)
    print(f"report: {report}")
    return 0


def _settings(args) -> int:
    from wofn import profiles, settings

    if args.markdown:
        print(settings.markdown(profiles.PROFILES), end="")
    else:
        print(json.dumps(profiles.get(args.profile).as_dict(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wofn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    ev = commands.add_parser("evaluate", help="accuracy of reward models on preference pairs")
    ev.add_argument("--model", action="append", required=True,
                    help="RM folder, HF id or backbone name (repeatable; the later ones are compared with the "
                         "first); several seeds of one model as a comma-separated list, e.g. base0,base1,base2")
    ev.add_argument("--pairs", action="append", required=True,
                    help="Parquet/JSONL file or folder with prompt, chosen, rejected (repeatable)")
    ev.add_argument("--max-pairs", type=int, default=None, help="use the first K pairs of each pairs file")
    ev.add_argument("--max-length", type=int, default=None, help="default: the model manifest's, else 256")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--high-confidence-fraction", type=float, default=Settings.high_confidence_fraction,
                    help=setting_help("high_confidence_fraction") + f" (default {Settings.high_confidence_fraction})")
    ev.add_argument("--format", choices=["json", "table"], default="json",
                    help="json: one line per (model, pairs file); table: a text table with length baselines")
    ev.add_argument("--output", default=None, help="also write all results to this file as one JSON list")
    ev.set_defaults(func=_evaluate)

    sq = commands.add_parser("sql", help="run a query or .sql file against the catalog ($WOFN_HOME/wofn.duckdb)")
    sq.add_argument("query", help="SQL text or a path to a .sql file (e.g. sql/analysis/funnel.sql)")
    sq.add_argument("--param", type=_param, action="append", default=[],
                    help="bound parameter name=value ($name in SQL; int, float or text; null = SQL NULL)")
    sq.add_argument("--view", type=_view, action="append", default=[],
                    help="name=PATH: a Parquet file or folder as a view for this query (e.g. student_scores=DIR)")
    sq.add_argument("--home", default=None, help="data root (default $WOFN_HOME or .wofn)")
    sq.add_argument("--format", choices=["table", "json", "csv"], default="table")
    sq.add_argument("--max-rows", type=int, default=40)
    sq.add_argument("--max-width", type=int, default=160)
    sq.set_defaults(func=_sql)

    ex = commands.add_parser("export", help="write pairs in TRL's preference format (prompt, chosen, rejected)")
    ex.add_argument("--output", required=True, help="FILE.parquet or FILE.jsonl")
    ex.add_argument("--table", default="filtered_pairs", help=f"one of {', '.join(export.PAIR_TABLES)}")
    ex.add_argument("--round", type=int, default=1,
                    help="West-of-N round: 1 = the main assets, k >= 2 = rounds/round_k")
    ex.add_argument("--format", default="trl", choices=sorted(export.FORMATS),
                    help="trl: text columns; trl-conversational: message lists ([{role, content}])")
    ex.add_argument("--force", action="store_true", help="replace an existing output file")
    ex.add_argument("--home", default=None, help="data root (default $WOFN_HOME or .wofn)")
    ex.add_argument("--strategy", default=None,
                    help="state the pairs' strategy where the run does not record it (rounds >= 2, older runs)")
    ex.add_argument("--seed", type=int, default=None, help="with --strategy: its pair_seed (random strategies)")
    ex.set_defaults(func=_export)

    li = commands.add_parser("lineage", help="the chain behind a reward model: teacher, pairs, candidates, prompts")
    li.add_argument("model_dir", help="a model folder with a manifest.json, e.g. .wofn/models/student_reward_model")
    li.add_argument("--home", default=None,
                    help="the run's data root, for the lineage records (default: the folder above models/)")
    li.add_argument("--format", choices=["text", "json"], default="text")
    li.set_defaults(func=_lineage)

    xp = commands.add_parser("experiment",
                             help="run an experiment grid (strategies x N x filters x seeds) and report it")
    xp.add_argument("config", help="experiment config (YAML), e.g. experiments/hh.yaml")
    xp.add_argument("--home", default=None, help="data root (default $WOFN_HOME or .wofn)")
    xp.add_argument("--estimate", action="store_true", help="print the cost estimate and stop")
    xp.add_argument("--report", default=None,
                    help="also write the report here (e.g. docs/results.md); always written to the run's folder")
    xp.add_argument("--report-only", action="store_true", help="rebuild the report from what the run has so far")
    xp.add_argument("--save-state", default=None, metavar="FILE",
                    help="pack what the run has finished, without model weights, into FILE (.tar.gz) and stop: "
                         "another machine resumes from it with --restore-state (the run may go on meanwhile)")
    xp.add_argument("--restore-state", default=None, metavar="FILE",
                    help="unpack a --save-state FILE into the run's folder (files there are kept), then go on "
                         "as asked (run and report, --estimate, --report-only)")
    xp.set_defaults(func=_experiment)

    se = commands.add_parser("settings", help="a profile's settings, or every setting's help (docs/settings.md)")
    se.add_argument("--profile", default="default", help="profile to print as JSON (default, tiny)")
    se.add_argument("--markdown", action="store_true",
                    help="every setting by stage with each profile's value and its help: docs/settings.md")
    se.set_defaults(func=_settings)

    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO if args.command == "experiment" else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (data.InputError, FileNotFoundError, catalog.CatalogLockedError, ValueError) as exc:  # ConfigError too
        print(f"wofn {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
