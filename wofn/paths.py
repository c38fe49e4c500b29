"""Where wofn's files land: everything under $WOFN_HOME (default `.wofn/` in the working dir).

    $WOFN_HOME/tables/<asset>/*.parquet    tables, one folder per asset
    $WOFN_HOME/models/<asset>/             model folders (safetensors, tokenizer, manifest.json)
    $WOFN_HOME/wofn.duckdb                 DuckDB catalog: one view per table, named after its asset
    $WOFN_HOME/dagster/                    DAGSTER_HOME used by `make run` and `dagster dev`

Converted and generated models are cached under $WOFN_CACHE (default ~/.cache/wofn), shared
between homes because converting the shipped GGUF policy takes a while.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SQL_DIR = REPO_ROOT / "sql"
DATA_DIR = Path(os.environ.get("WOFN_DATA", REPO_ROOT / "data"))


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

    def model_dir(self, asset: str) -> Path:
        return self.root / "models" / asset

    @property
    def catalog_path(self) -> Path:
        return self.root / "wofn.duckdb"

    def round_dir(self, k: int) -> Path:
        """Tables and the student of West-of-N round k >= 2 (round 1 is the main assets)."""
        return self.root / "rounds" / f"round_{k}"


def staging_dir(final: Path) -> Path:
    """A fresh hidden sibling of `final` to write into before `publish` swaps it in."""
    path = final.parent / f".{final.name}.staging-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return path


def publish(staging: Path, final: Path) -> None:
    """Replace `final` with the completed `staging` folder; the old one is kept until the swap.

    A failure before this point leaves the previous `final` untouched.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    trash = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
    if final.exists():
        final.rename(trash)
    staging.rename(final)
    shutil.rmtree(trash, ignore_errors=True)


def content_hash(path: Path, length: int = 16) -> str:
    """sha256 over the bytes of a file, or of every file under a folder (sorted by relative name)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file.name.startswith("."):
            continue
        digest.update(str(file.relative_to(path if path.is_dir() else path.parent)).encode())
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:length]
