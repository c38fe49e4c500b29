"""Where wofn's files land: everything under $WOFN_HOME (default `.wofn/` in the working dir).

    $WOFN_HOME/tables/<asset>/*.parquet    tables, one folder per asset
    $WOFN_HOME/tables/<asset>/batch=<key>/ partitioned tables (prompts, candidates, candidate_scores,
                                           tournament_pairs): one folder per prompt batch
    $WOFN_HOME/inbox/                      new prompt batches: each .parquet / .jsonl file is one batch
    $WOFN_HOME/lineage/<asset>/<version>.json  what each data version was made from (wofn.lineage)
    $WOFN_HOME/models/<asset>/             model folders (safetensors, tokenizer, manifest.json)
    $WOFN_HOME/wofn.duckdb                 DuckDB catalog: one view per table, named after its asset
    $WOFN_HOME/dagster/                    DAGSTER_HOME used by `make run` and `dagster dev`

Converted and generated models are cached under $WOFN_CACHE (default ~/.cache/wofn), shared
between homes because converting the shipped GGUF policy takes a while.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SQL_DIR = REPO_ROOT / "sql"
DATA_DIR = Path(os.environ.get("WOFN_DATA", REPO_ROOT / "data"))

# Tables written per prompt batch, one `batch=<key>` folder each; every other table is one folder.
PARTITION_PREFIX = "batch="
PROMPT_FILE_SUFFIXES = (".parquet", ".jsonl")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def batch_key(path: Path | str) -> str:
    """The prompt-batch key of a prompt file (or folder): its name without suffix, made path- and URL-safe."""
    path = Path(path)
    stem = path.name[: -len(path.suffix)] if path.suffix in PROMPT_FILE_SUFFIXES else path.name
    key = _KEY_UNSAFE.sub("_", stem).strip("._-")
    if not key:
        raise ValueError(f"{path}: no usable batch name; name prompt files with letters or digits")
    return key


def parquet_files(table_dir: Path) -> list[Path]:
    """A table's Parquet files: `*.parquet` in its folder, or in its `batch=*` folders when partitioned.

    Hidden files and folders (staging, in-flight writes) are never part of a table.
    """
    table_dir = Path(table_dir)
    if table_dir.is_file():
        return [table_dir]
    if not table_dir.is_dir():
        return []
    files = sorted(p for p in table_dir.glob("*.parquet") if not p.name.startswith("."))
    files += sorted(p for p in table_dir.glob(f"{PARTITION_PREFIX}*/*.parquet") if not p.name.startswith("."))
    return files


def table_rows(table_dir: Path) -> int:
    """Rows of a table folder (`parquet_files`: flat or partitioned; or one file), from the Parquet footers."""
    import pyarrow.parquet as pq  # lazy: paths is imported where pyarrow is not needed

    return sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(table_dir))


def partition_keys(table_dir: Path) -> list[str]:
    """The batch keys a partitioned table folder holds (those with at least one Parquet file)."""
    return sorted({p.parent.name[len(PARTITION_PREFIX):] for p in Path(table_dir).glob(f"{PARTITION_PREFIX}*/*.parquet")
                   if not p.name.startswith(".")})


def cache_dir() -> Path:
    return Path(os.environ.get("WOFN_CACHE", Path.home() / ".cache" / "wofn"))


@dataclass(frozen=True)
class WofnHome:
    root: Path

    @classmethod
    def from_env(cls) -> "WofnHome":
        return cls(Path(os.environ.get("WOFN_HOME", ".wofn")).resolve())

    def table_dir(self, asset: str) -> Path:
        return self.root / "tables" / asset

    def partition_dir(self, asset: str, key: str) -> Path:
        """One prompt batch's folder of a partitioned table."""
        return self.table_dir(asset) / f"{PARTITION_PREFIX}{key}"

    def model_dir(self, asset: str) -> Path:
        return self.root / "models" / asset

    @property
    def inbox_dir(self) -> Path:
        """Where new prompt batches arrive: each .parquet or .jsonl file is one batch."""
        return self.root / "inbox"

    @property
    def lineage_dir(self) -> Path:
        return self.root / "lineage"

    @property
    def catalog_path(self) -> Path:
        return self.root / "wofn.duckdb"

    def round_dir(self, k: int) -> Path:
        """Tables and the student of West-of-N round k >= 2 (round 1 is the main assets)."""
        return self.root / "rounds" / f"round_{k}"


def _owned_name(final: Path, kind: str) -> Path:
    """A hidden sibling of `final` named for this process: `.<name>.<kind>-<pid>-<random>`."""
    return final.parent / f".{final.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (another user's included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_orphans(final: Path) -> list[Path]:
    """Remove the staging and swap folders of `final` whose writing process is gone (a SIGKILLed or
    crashed write leaves them); those of live processes, and names without a pid, are kept, and so
    is a swap folder while `final` is missing (a kill between publish's two renames: it holds the
    previous version)."""
    removed = []
    if not final.parent.is_dir():
        return removed
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(staging|old)-(\d+)-[0-9a-f]{{8}}$")
    for path in final.parent.iterdir():
        match = pattern.match(path.name)
        if match and match.group(1) == "old" and not final.exists():
            continue
        if match and int(match.group(2)) != os.getpid() and not pid_alive(int(match.group(2))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def staging_dir(final: Path) -> Path:
    """A fresh hidden sibling of `final` to write into before `publish` swaps it in (earlier ones
    that a killed process left behind are removed first)."""
    sweep_orphans(final)
    path = _owned_name(final, "staging")
    path.mkdir(parents=True)
    return path


def publish(staging: Path, final: Path) -> None:
    """Replace `final` with the completed `staging` folder; the old one is kept until the swap.

    A failure before this point leaves the previous `final` untouched.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    trash = _owned_name(final, "old")
    if final.exists():
        final.rename(trash)
    staging.rename(final)
    shutil.rmtree(trash, ignore_errors=True)


def content_hash(path: Path, length: int = 16) -> str:
    """sha256 over the bytes of a file, or of every file under a folder (sorted by relative name).

    Hidden files and everything under hidden folders (staging folders, temporary files) are left
    out, so a write in flight beside a table does not change its version.
    """
    path = Path(path)
    digest = hashlib.sha256()
    base = path if path.is_dir() else path.parent
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        relative = file.relative_to(base)
        if any(part.startswith(".") for part in relative.parts):
            continue
        digest.update(str(relative).encode())
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:length]
