"""`wofn`: work outside the Dagster UI.

    wofn evaluate --model DIR [--model DIR ...] --pairs FILE [--pairs FILE ...] [--format table]
                                                               one JSON line per (model, pairs file)
    wofn sql QUERY_OR_FILE [--param name=value ...]             a table, from the catalog
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from wofn import catalog, data, evaluation, models
from wofn.paths import WofnHome


def _param(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"--param takes name=value, got {text!r}")
    for cast in (int, float):
        try:
            return name, cast(value)
        except ValueError:
            pass
    return name, value


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
    results = []
    for model in args.model:
        rm = models.load_reward_model(model, device=args.device)  # once per model
        for path, pairs in pair_sets:
            result = {"pairs": path, **evaluation.evaluate_loaded(
                rm, pairs, args.max_length, high_confidence_fraction=args.high_confidence_fraction)}
            results.append(result)
            if args.format == "json":
                print(json.dumps(result), flush=True)
    if args.format == "table":
        print(evaluation.format_table(results), flush=True)
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
    if text.endswith(".sql") and Path(text).is_file():
        text = Path(text).read_text(encoding="utf-8")
    home = WofnHome(Path(args.home).resolve()) if args.home else WofnHome.from_env()
    if not home.catalog_path.exists():
        print(f"wofn sql: no catalog at {home.catalog_path}; materialize the pipeline first (make run) "
              "or set WOFN_HOME", file=sys.stderr)
        return 2
    con = catalog.connect(home.catalog_path, read_only=True)
    try:
        relation = con.sql(text, params=dict(args.param) or None)
        if relation is None:
            return 0
        if args.format == "json":
            for row in relation.to_arrow_table().to_pylist():
                print(json.dumps(row, default=str))
        elif args.format == "csv":
            _print_csv(relation)
        else:
            relation.show(max_rows=args.max_rows, max_width=args.max_width)
    finally:
        con.close()
    return 0


def _print_csv(relation) -> None:
    import csv

    table = relation.to_arrow_table()
    writer = csv.writer(sys.stdout)
    writer.writerow(table.column_names)
    for row in table.to_pylist():
        writer.writerow(row.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wofn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    ev = commands.add_parser("evaluate", help="accuracy of reward models on preference pairs")
    ev.add_argument("--model", action="append", required=True, help="RM folder, HF id or backbone name (repeatable)")
    ev.add_argument("--pairs", action="append", required=True,
                    help="Parquet/JSONL file or folder with prompt, chosen, rejected (repeatable)")
    ev.add_argument("--max-pairs", type=int, default=None, help="use the first K pairs of each pairs file")
    ev.add_argument("--max-length", type=int, default=None, help="default: the model manifest's, else 256")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--high-confidence-fraction", type=float, default=0.25,
                    help="share of pairs with the largest |margin| for high-conf accuracy (default 0.25)")
    ev.add_argument("--format", choices=["json", "table"], default="json",
                    help="json: one line per (model, pairs file); table: a text table with length baselines")
    ev.add_argument("--output", default=None, help="also write all results to this file as one JSON list")
    ev.set_defaults(func=_evaluate)

    sq = commands.add_parser("sql", help="run a query or .sql file against the catalog ($WOFN_HOME/wofn.duckdb)")
    sq.add_argument("query", help="SQL text or a path to a .sql file")
    sq.add_argument("--param", type=_param, action="append", default=[], help="bound parameter name=value ($name in SQL)")
    sq.add_argument("--home", default=None, help="data root (default $WOFN_HOME or .wofn)")
    sq.add_argument("--format", choices=["table", "json", "csv"], default="table")
    sq.add_argument("--max-rows", type=int, default=40)
    sq.add_argument("--max-width", type=int, default=160)
    sq.set_defaults(func=_sql)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        return args.func(args)
    except (data.InputError, FileNotFoundError, catalog.CatalogLockedError, ValueError) as exc:
        print(f"wofn {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
