"""Every command shown in README.md and docs/*.md is valid, and every relative link resolves.

Commands: lines of fenced shell blocks (and of untagged ones, where a line starts with a known
executable), and inline `code` spans that start with make, wofn, python -m, dagster or duckdb.
Checked: make targets, wofn subcommands and flags, `python -m` modules (and a Beam job's flags),
dagster commands and flags, repository paths. Values are not (placeholders like FILE are fine).
"""

import argparse
import functools
import importlib
import importlib.util
import re
import shlex
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
SHELL_TAGS = ("bash", "sh", "shell", "console")
COMMAND_LINE = re.compile(r"^(\$\s+)?([A-Z_]+=\S*\s+)*(\.venv/bin/)?(make|wofn|python3?|dagster|duckdb)(\s|$)")
INLINE_PREFIXES = ("make ", "wofn ", "python -m ", "dagster ", "duckdb ")
REPO_PATH = re.compile(r"^(sql|experiments|data|docs|bench|tests|wofn|wofn_dagster|beam_jobs)/")


def words(command: str) -> list[str]:
    """A command's argv: no comment, no `$ ` prompt, no VAR=value prefix, no .venv/bin/."""
    argv = shlex.split(re.sub(r"^\$\s+", "", command.strip()), comments=True)
    while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):
        argv = argv[1:]
    return [argv[0].removeprefix(".venv/bin/"), *argv[1:]] if argv else []


def commands(text: str) -> tuple[list[list[str]], list[str]]:
    """The commands a page shows, and the lines of its shell blocks that are no known command."""
    found, unknown = [], []
    for tag, body in FENCE.findall(text):
        if tag not in ("", *SHELL_TAGS):
            continue
        for line in re.sub(r"\\\n", " ", body).splitlines():
            if COMMAND_LINE.match(line.strip()):
                found.append(words(line))
            elif tag in ("bash", "sh", "shell") and line.strip() and not line.strip().startswith("#"):
                unknown.append(line.strip())
    for span in re.findall(r"`([^`]+)`", FENCE.sub("", text)):
        span = " ".join(span.split()).removeprefix(".venv/bin/")
        if span.startswith(INLINE_PREFIXES):
            found.append(words(span))
    return found, unknown


class _Parsed(Exception):
    """Raised where a parser would parse, carrying the parser (so the command never runs)."""


def parser_of(build, *args) -> argparse.ArgumentParser:
    """The argparse parser that `build(*args)` makes, caught as it starts parsing."""
    def stop(parser, *_, **__):
        raise _Parsed(parser)
    with mock.patch.object(argparse.ArgumentParser, "parse_known_args", stop):
        try:
            build(*args)
        except _Parsed as parsed:
            return parsed.args[0]
    raise AssertionError(f"{build} parsed no arguments")


@functools.cache
def wofn_subcommands() -> dict[str, argparse.ArgumentParser]:
    from wofn import cli
    parser = parser_of(cli.main, [])
    return next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))


@functools.cache
def beam_flags() -> frozenset[str]:
    """Every Beam pipeline option (the jobs hand the flags they do not know to PipelineOptions)."""
    import apache_beam.runners.dask.dask_runner  # noqa: F401  (defines the Dask runner's options)
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser
    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():  # as Beam does
        cls._add_argparse_args(parser)
    return frozenset(parser._option_string_actions)


def flag_errors(parser: argparse.ArgumentParser, args: list[str], extra=frozenset()) -> list[str]:
    errors = []
    for i, arg in enumerate(args):
        if not arg.startswith("-") or arg == "--":
            continue
        flag, _, value = arg.partition("=")
        action = parser._option_string_actions.get(flag)
        if action is None:
            errors += [] if flag in extra else [f"unknown flag {flag}"]
            continue
        if not value and action.nargs != 0 and i + 1 < len(args):
            value = args[i + 1]
        if action.choices and value and not value.isupper() and value not in action.choices:
            errors.append(f"{flag} {value}: not one of {sorted(action.choices)}")
    return errors


def dagster_errors(args: list[str]) -> list[str]:
    import click
    from dagster._cli import cli as command
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        command, name, args = command.get_command(click.Context(command), args[0]), args[0], args[1:]
        if command is None:
            return [f"no dagster command {name}"]
    options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    return [f"unknown dagster flag {a}" for a in args if a.startswith("-") and a.split("=")[0] not in options]


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def check(argv: list[str]) -> list[str]:
    """What is wrong with one command; an empty list when nothing is."""
    exe, args = argv[0], argv[1:]
    parts = [p for a in args for p in re.split(r"[=,]", a) if REPO_PATH.match(p) and "<" not in p]
    errors = [f"no such path {p}" for p in parts if not list(REPO.glob(p))]
    if exe == "make":
        targets = re.findall(r"^([\w.-]+):(?!=)", (REPO / "Makefile").read_text(), re.M)
        errors += [f"no make target {t}" for t in args  # VAR=value sets a make variable
                   if not t.startswith("-") and not re.match(r"[A-Za-z_]\w*=", t) and t not in targets]
    elif exe == "wofn":
        sub = wofn_subcommands().get(args[0]) if args else None
        errors += flag_errors(sub, args[1:]) if sub else [f"no wofn subcommand {args[:1]}"]
    elif exe.startswith("python"):
        if args[:1] != ["-m"] or len(args) < 2 or not importable(args[1]):
            return errors + [f"not an importable module: {' '.join(args[:2])}"]
        if args[1].startswith("beam_jobs."):
            parser = parser_of(importlib.import_module(args[1]).run, [])
            errors += flag_errors(parser, args[2:], extra=beam_flags())
    elif exe == "dagster":
        errors += dagster_errors(args)
    return errors  # duckdb: its own CLI, not installed here; only its paths are checked


def test_every_command_in_the_docs_is_valid():
    problems, count = [], 0
    for page in DOCS:
        found, unknown = commands(page.read_text())
        count += len(found)
        problems += [f"{page.name}: not a known command: {line}" for line in unknown]
        problems += [f"{page.name}: {' '.join(argv)}: {e}" for argv in found for e in check(argv)]
    assert count >= 40, f"only {count} commands found: is the extraction broken?"
    assert not problems, "\n".join(problems)


def test_every_sql_file_named_in_the_docs_exists():
    missing = [f"{page.name}: {path}" for page in DOCS
               for path in re.findall(r"(?<![\w/])sql/[\w/.*-]+\.sql", page.read_text())
               if not list(REPO.glob(path))]
    assert not missing, "\n".join(missing)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_relative_link_resolves():
    broken = []
    for page in DOCS:
        for link in re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", page.read_text())):
            if re.match(r"(https?|mailto):", link):
                continue
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            if not target.exists() or (anchor and target.suffix == ".md" and anchor not in _anchors(target)):
                broken.append(f"{page.name}: {link}")
    assert not broken, "\n".join(broken)


def test_readme_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 210


def test_the_checker_catches_wrong_commands():
    assert check(words("wofn sql sql/analysis/funnel.sql --param c=1 --format csv")) == []
    assert check(words(".venv/bin/python -m beam_jobs.score_candidates --candidates X --runner DirectRunner")) == []
    assert check(words("wofn sql --no-such-flag x")) == ["unknown flag --no-such-flag"]
    assert check(words("wofn evaluate --format yaml")) == ["--format yaml: not one of ['json', 'table']"]
    assert check(words("wofn frobnicate")) == ["no wofn subcommand ['frobnicate']"]
    assert check(words("make no-such-target")) == ["no make target no-such-target"]
    assert check(words("make gpu-check ARGS=--quick")) == []
    assert check(words("wofn sql sql/no_such_query.sql")) == ["no such path sql/no_such_query.sql"]
    assert check(words("python -m beam_jobs.sample_candidates --no-such-option 1")) == ["unknown flag --no-such-option"]
    assert check(words("python -m wofn.no_such_module")) == ["not an importable module: -m wofn.no_such_module"]
    assert check(words("python -m no_such_package.module")) == ["not an importable module: -m no_such_package.module"]
    assert check(words("dagster asset materialise --select '*'")) == ["no dagster command materialise"]
    assert commands("```bash\nwofm sql x\n```\n")[1] == ["wofm sql x"]
