"""Code versions of the assets, derived from what their stages import, not from hand-kept lists.

An asset's code version is the content hash of its own module, of every repository module its
stage's entry modules import (directly or not; packages `wofn` and `beam_jobs`), and of every SQL
file those modules name (a string such as "filter_pairs", or a folder prefix such as
"strategies/" in an f-string) or that such a SQL file reads (its header's `(sql/<file>.sql`). Any
edit to one of them gives a new version, which the Dagster UI shows as "code version changed";
an import added tomorrow is covered without anyone remembering to list it.

    code_version("beam_jobs.sample_candidates", own=__file__, files=("wofn/stages.py",))
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

from wofn.catalog import sql_dependencies
from wofn.paths import REPO_ROOT, SQL_DIR, content_hash

PACKAGES = ("wofn", "beam_jobs")


def module_file(name: str) -> Path | None:
    """The repository file of module `name` (a package's __init__.py), or None outside PACKAGES."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = REPO_ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=None)
def _parsed(path: Path) -> tuple[frozenset[str], frozenset[str]]:
    """(modules imported, string constants and f-string literal parts) of one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules, strings = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from wofn import pairs`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            strings.add(node.value)
    return frozenset(modules), frozenset(strings)


def closure(*modules: str) -> list[Path]:
    """The files of `modules` and of every repository module they import, transitively, sorted."""
    seen: set[Path] = set()
    todo = [m for m in modules]
    while todo:
        path = module_file(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        todo.extend(_parsed(path)[0])
        parent = path.parent  # a module's package __init__ runs before it
        while parent != REPO_ROOT and (parent / "__init__.py").is_file():
            seen.add(parent / "__init__.py")
            parent = parent.parent
    return sorted(seen)


def sql_files(files: list[Path]) -> list[Path]:
    """The SQL files named by those of `files` that run SQL (they import wofn.catalog), and those
    these read in turn. (Other modules name tables, some of which share a SQL file's name.)"""
    runners = [f for f in files if "wofn.catalog" in _parsed(f)[0]]
    strings = set().union(*(_parsed(f)[1] for f in runners)) if runners else set()
    found: set[Path] = set()
    for path in SQL_DIR.rglob("*.sql"):
        stem = path.relative_to(SQL_DIR).with_suffix("").as_posix()
        if stem in strings or any(s.endswith("/") and stem.startswith(s) for s in strings):
            found.add(path)
    todo = list(found)
    while todo:
        for _, name in sql_dependencies(todo.pop().read_text(encoding="utf-8")):
            path = SQL_DIR / f"{name}.sql"
            if path.is_file() and path not in found:
                found.add(path)
                todo.append(path)
    return sorted(found)


def sources(*modules: str, own: str | Path | None = None, files: tuple[str, ...] = ()) -> list[Path]:
    """Every file a code version covers: the modules' closure, the SQL they name, `own` (the asset's
    module) and `files` (repository paths taken alone, without what they import)."""
    found = closure(*modules)
    alone = [REPO_ROOT / f for f in files] + ([Path(own).resolve()] if own else [])
    missing = [str(p) for p in alone if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"code version: no such file(s) {missing}")
    return sorted({*found, *sql_files(found), *alone})


def code_version(*modules: str, own: str | Path | None = None, files: tuple[str, ...] = ()) -> str:
    """The content hash of `sources(...)`, 12 hex characters."""
    digest = hashlib.sha256()
    for path in sources(*modules, own=own, files=files):
        digest.update(path.relative_to(REPO_ROOT).as_posix().encode())
        digest.update(content_hash(path).encode())
    return digest.hexdigest()[:12]
