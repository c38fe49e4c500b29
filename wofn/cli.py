"""`wofn`: work outside the Dagster UI.

    wofn evaluate --model DIR [--model DIR ...] --pairs FILE   one JSON line per model
    wofn sql QUERY_OR_FILE [--param name=value ...]             a table, from the catalog
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from wofn import catalog, data, evaluation
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
    pairs = data.load_preferences(args.pairs, args.max_pairs).to_pylist()
    for model in args.model:
        result = evaluation.evaluate(model, pairs, device=args.device, max_length=args.max_length)
        print(json.dumps({"pairs": str(args.pairs), **result}), flush=True)
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
    ev.add_argument("--pairs", required=True, help="Parquet/JSONL file or folder with prompt, chosen, rejected")
    ev.add_argument("--max-pairs", type=int, default=None, help="use the first K pairs")
    ev.add_argument("--max-length", type=int, default=None, help="default: the model manifest's, else 256")
    ev.add_argument("--device", default="cpu")
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
