"""Reading preference pairs and prompts from Parquet or JSONL into wofn's table schemas."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from wofn import schemas

_SPACE = re.compile(r"\s+")


class InputError(ValueError):
    """An input file wofn cannot use; the message names the file, and the row/column if known."""


def normalize_prompt(text: str) -> str:
    """The form prompt ids hash: NFC, whitespace runs collapsed, ends stripped."""
    return _SPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def prompt_id(text: str) -> str:
    return hashlib.sha256(normalize_prompt(text).encode("utf-8")).hexdigest()[:16]


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".parquet", ".jsonl") and not p.name.startswith("."))
        if not files:
            raise InputError(f"{path}: folder holds no .parquet or .jsonl files")
        return files
    if not path.exists():
        raise InputError(f"{path}: no such file")
    return [path]


def read_rows_table(path: str | Path) -> pa.Table:
    """A Parquet file, a JSONL file, or a folder of them, as one Arrow table."""
    tables = []
    for file in _files(Path(path)):
        if file.suffix == ".jsonl":
            rows = []
            with file.open(encoding="utf-8") as fh:
                for line_no, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise InputError(f"{file}: line {line_no} is not JSON: {exc}") from exc
            table = pa.Table.from_pylist(rows)
        else:
            try:
                table = pq.read_table(file)
            except (pa.ArrowInvalid, OSError) as exc:
                raise InputError(f"{file}: not a readable Parquet file: {exc}") from exc
        if table.num_rows == 0:
            raise InputError(f"{file}: no rows")
        tables.append(table)
    try:
        return pa.concat_tables(tables, promote_options="default")
    except pa.ArrowInvalid as exc:
        raise InputError(f"{path}: files have incompatible schemas: {exc}") from exc


def _require(table: pa.Table, columns: list[str], where: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InputError(f"{where}: missing column(s) {missing}; found {table.column_names}")
    for column in columns:
        values = table.column(column)
        if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
            raise InputError(f"{where}: column {column!r} must be text, found {values.type}")
        if values.null_count:
            row = values.is_null().to_pylist().index(True)
            raise InputError(f"{where}: column {column!r} is empty (null) at row {row}")


def load_preferences(path: str | Path, limit: int | None = None) -> pa.Table:
    """Human pairs `prompt, chosen, rejected` (+ optional `id`, `source`) as schemas.PREFERENCES."""
    table = read_rows_table(path)
    _require(table, ["prompt", "chosen", "rejected"], str(path))
    if limit is not None:
        table = table.slice(0, limit)
    rows = table.to_pylist()
    out = []
    for row in rows:
        pair_id = row.get("id") or hashlib.sha256(
            "\x00".join((row["prompt"], row["chosen"], row["rejected"])).encode()
        ).hexdigest()[:16]
        out.append({"pair_id": str(pair_id), "prompt": row["prompt"], "chosen": row["chosen"],
                    "rejected": row["rejected"], "source": row.get("source") or str(Path(path).name)})
    return pa.Table.from_pylist(out, schema=schemas.PREFERENCES)


def load_prompts(path: str | Path, limit: int | None = None) -> pa.Table:
    """Unlabeled prompts with a stable prompt_id, deduplicated (first occurrence kept), as schemas.PROMPTS.

    `limit` keeps the first `limit` prompts in prompt_id order: a stable pseudo-random sample that
    does not depend on the file's row order.
    """
    table = read_rows_table(path)
    _require(table, ["prompt"], str(path))
    seen: dict[str, dict] = {}
    for row in table.to_pylist():
        if not row["prompt"].strip():
            continue
        pid = prompt_id(row["prompt"])
        if pid not in seen:
            seen[pid] = {"prompt_id": pid, "prompt": row["prompt"],
                         "source": row.get("source") or str(Path(path).name)}
    kept = sorted(seen.values(), key=lambda r: r["prompt_id"])
    if limit is not None:
        kept = kept[:limit]
    return pa.Table.from_pylist(kept, schema=schemas.PROMPTS)
