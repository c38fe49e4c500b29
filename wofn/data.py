"""Reading preference pairs and prompts from Parquet or JSONL into wofn's table schemas."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
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


MAX_PROMPT_CHARS = 65_536  # longer prompts go to the errors table (a 1 MB "prompt" is a bad row, not a prompt)


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".parquet", ".jsonl") and not p.name.startswith("."))
        if not files:
            raise InputError(f"{path}: folder holds no .parquet or .jsonl files")
        return files
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.suffix not in (".parquet", ".jsonl"):
        raise InputError(f"{path}: expected a .parquet or .jsonl file (or a folder of them)")
    return [path]


def _read_jsonl(file: Path) -> pa.Table:
    rows = []
    with file.open("rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{file}: line {line_no} is not valid UTF-8 (byte {exc.start}): {exc.reason}") from exc
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{file}: line {line_no} is not JSON: {exc}") from exc
            if not isinstance(row, dict):
                raise InputError(f"{file}: line {line_no} is JSON but not an object: {line[:80]!r}")
            rows.append(row)
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(f"{file}: lines disagree on a column's type: {exc}") from exc


def _read_parquet(file: Path) -> pa.Table:
    try:
        table = pq.read_table(file)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{file}: not a readable Parquet file: {exc}") from exc
    for name in table.column_names:
        try:
            table.column(name).validate(full=True)
        except pa.ArrowInvalid as exc:
            raise InputError(f"{file}: column {name!r} holds invalid data "
                             f"(e.g. text that is not UTF-8): {exc}") from exc
    return table


def _check_columns(table: pa.Table, columns: list[str], where: str) -> None:
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


def read_rows_table(path: str | Path, required: list[str] | None = None) -> pa.Table:
    """A Parquet file, a JSONL file, or a folder of them, as one Arrow table with a `_source`
    (file name) and `_row` (0-based row in that file) column. Each file is checked on its own
    (readable, not empty, `required` text columns present), so an error names the file; files
    of a folder must agree on the required columns' types."""
    tables = []
    for file in _files(Path(path)):
        table = _read_jsonl(file) if file.suffix == ".jsonl" else _read_parquet(file)
        if table.num_rows == 0:
            raise InputError(f"{file}: no rows")
        _check_columns(table, required or [], str(file))
        table = table.append_column("_source", pa.array([file.name] * table.num_rows, pa.string()))
        tables.append(table.append_column("_row", pa.array(range(table.num_rows), pa.int64())))
    try:
        return pa.concat_tables(tables, promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        shapes = "; ".join(f"{f.name}: {t.schema.names}" for f, t in zip(_files(Path(path)), tables))
        raise InputError(f"{path}: the folder mixes files of different schemas ({shapes}): {exc}") from exc


def load_preferences(path: str | Path, limit: int | None = None) -> pa.Table:
    """Human pairs `prompt, chosen, rejected` (+ optional `id`, `source`) as schemas.PREFERENCES.
    Pairs are curated data: a bad row (an empty prompt, NUL bytes, a repeated `id`) stops the read
    with its file and row. Empty responses are allowed (HH has pairs where silence was preferred)."""
    table = read_rows_table(path, ["prompt", "chosen", "rejected"])
    if limit is not None:
        table = table.slice(0, limit)
    out, seen = [], {}
    for row in table.to_pylist():
        where = f"{Path(path) / row['_source'] if Path(path).is_dir() else path}: row {row['_row']}"
        for column in ("prompt", "chosen", "rejected"):
            if "\x00" in row[column]:
                raise InputError(f"{where}: column {column!r} holds a NUL byte")
        if not row["prompt"].strip():  # an empty response is a real answer in HH (silence preferred)
            raise InputError(f"{where}: column 'prompt' is empty")
        if row.get("id") is not None:  # the file's own id: a repeat is an error
            pair_id = str(row["id"])
            if pair_id in seen:
                raise InputError(f"{where}: pair id {pair_id!r} repeats {seen[pair_id]}")
        else:  # a content hash; the same pair labelled twice is kept twice, as -2, -3, ...
            base = hashlib.sha256(
                "\x00".join((row["prompt"], row["chosen"], row["rejected"])).encode()).hexdigest()[:16]
            pair_id, k = base, 1
            while pair_id in seen:
                k += 1
                pair_id = f"{base}-{k}"
        seen[pair_id] = where
        out.append({"pair_id": pair_id, "prompt": row["prompt"], "chosen": row["chosen"],
                    "rejected": row["rejected"], "source": row.get("source") or row["_source"]})
    return pa.Table.from_pylist(out, schema=schemas.PREFERENCES)


def read_prompts(path: str | Path, limit: int | None = None,
                 max_chars: int = MAX_PROMPT_CHARS) -> tuple[pa.Table, pa.Table]:
    """Unlabeled prompts with a stable prompt_id, as schemas.PROMPTS, and the rows left out, as
    schemas.ERRORS (stage "prompts"): empty, NUL bytes, longer than `max_chars`, or a repeat of an
    earlier prompt (same prompt_id; the first is kept). File-level problems raise InputError.

    `limit` keeps the first `limit` prompts in prompt_id order: a stable pseudo-random sample that
    does not depend on the file's row order. The checks and the deduplication are Arrow operations
    and the ids are hashed a chunk at a time, so a file of millions of prompts holds no Python
    object per row.
    """
    table = read_rows_table(path, ["prompt"])
    texts = table.column("prompt")
    order = pa.array(range(table.num_rows), pa.int64())
    nul = pc.match_substring(texts, "\x00")
    empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(texts)), 0)
    too_long = pc.greater(pc.utf8_length(texts), max_chars)
    # the first problem that applies, as the errors' reason
    reason = pc.case_when(pc.make_struct(nul, empty, too_long), "nul_bytes", "empty_prompt", "prompt_too_long")
    valid = pc.is_null(reason)
    ids = pa.chunked_array([pa.array([prompt_id(t) if ok else None
                                      for t, ok in zip(chunk.column(0).to_pylist(), chunk.column(1).to_pylist())],
                                     pa.string())
                            for chunk in pa.table({"prompt": texts, "ok": valid}).to_batches(65_536)],
                           pa.string())
    rows = table.select(["_source", "_row"]).append_column("prompt_id", ids).append_column("_order", order)
    firsts = (rows.filter(valid).group_by("prompt_id", use_threads=False).aggregate([("_order", "min")])
              .rename_columns(["prompt_id", "_first"]))
    rows = rows.join(firsts, "prompt_id", join_type="left outer").sort_by("_order")
    first = rows.column("_first")
    repeat = pc.fill_null(pc.and_kleene(valid, pc.not_equal(rows.column("_order"), first)), False)
    keep = pc.fill_null(pc.and_kleene(valid, pc.equal(rows.column("_order"), first)), False)
    source = table.column("source") if "source" in table.column_names else pa.nulls(table.num_rows, pa.string())
    source = pc.if_else(pc.fill_null(pc.not_equal(source, ""), False), source, table.column("_source"))
    kept = pa.table({"prompt_id": ids, "prompt": texts, "source": source}).filter(keep).sort_by("prompt_id")
    if limit is not None:
        kept = kept.slice(0, limit)
    # the rows left out (few, as a rule): their details are written one by one
    left_out = pa.table({"reason": pc.if_else(repeat, "duplicate_prompt", reason), "prompt_id": ids,
                         "source": table.column("_source"), "row": table.column("_row"),
                         "chars": pc.utf8_length(texts), "first": first}).filter(pc.or_(pc.invert(valid), repeat))
    firsts_at = table.select(["_source", "_row"]).take(pc.fill_null(left_out.column("first"), 0)).to_pylist()
    errors = []
    for row, at in zip(left_out.to_pylist(), firsts_at):
        detail = {"nul_bytes": "the prompt holds a NUL byte", "empty_prompt": "the prompt is empty",
                  "prompt_too_long": f"{row['chars']:,} characters > the limit of {max_chars:,}",
                  "duplicate_prompt": f"same prompt as {at['_source']} row {at['_row']}"}[row["reason"]]
        errors.append({"stage": "prompts", "reason": row["reason"], "candidate_idx": None, "source": row["source"],
                       "row": row["row"], "detail": detail,
                       "prompt_id": row["prompt_id"] if row["reason"] == "duplicate_prompt" else None})
    return (schemas.conform(kept, schemas.PROMPTS, where=f"prompts of {path}"),
            pa.Table.from_pylist(errors, schema=schemas.ERRORS))


def load_prompts(path: str | Path, limit: int | None = None) -> pa.Table:
    """`read_prompts` without the errors table (for tests and tools that only need the prompts)."""
    return read_prompts(path, limit)[0]


HOLDOUT_SALT = "human-holdout"


def human_holdout(table: pa.Table, fraction: float, part: str) -> pa.Table:
    """The `human_holdout` setting's split of a pair table: `part="holdout"` gives the pairs no reward
    model trains on (the `fraction` chosen by the hash of their pair_id, as `hash_part` does, so the same
    pairs on every machine and whatever the file's order), `part="rest"` the others. fraction 0: the
    whole table as "rest", none as "holdout"."""
    if part not in ("holdout", "rest"):
        raise ValueError(f"part must be 'holdout' or 'rest', got {part!r}")
    if fraction == 0:
        return table if part == "rest" else table.slice(0, 0)
    held = {r["pair_id"] for r in hash_part(table.select(["pair_id"]).to_pylist(), "holdout", fraction,
                                            salt=HOLDOUT_SALT)}
    mask = [(pid in held) == (part == "holdout") for pid in table.column("pair_id").to_pylist()]
    return table.filter(pa.array(mask, pa.bool_()))


def training_preferences(human_pairs: str | Path, max_human_pairs: int | None = None,
                         extra_human_pairs: str | Path | None = None,
                         max_extra_human_pairs: int | None = None,
                         holdout: float = 0.0) -> tuple[pa.Table, dict]:
    """D_L as the reward models train on it: the first `max_human_pairs` pairs of `human_pairs` less
    the `holdout` share (`human_holdout`), then the first `max_extra_human_pairs` of `extra_human_pairs`
    (a pair file or folder, e.g. UltraFeedback; None or "" = none), as schemas.PREFERENCES, and
    {"human_pairs", "held_out_pairs", "extra_human_pairs", "extra_source"}.
    A pair_id in both files raises InputError naming both."""
    read = load_preferences(human_pairs, max_human_pairs)
    human = human_holdout(read, holdout, "rest")
    counts = {"human_pairs": human.num_rows, "held_out_pairs": read.num_rows - human.num_rows,
              "extra_human_pairs": 0, "extra_source": None}
    if not extra_human_pairs:
        return human, counts
    extra = load_preferences(extra_human_pairs, max_extra_human_pairs)
    clash = set(human.column("pair_id").to_pylist()) & set(extra.column("pair_id").to_pylist())
    if clash:
        raise InputError(f"{extra_human_pairs}: pair id {min(clash)!r} (and {len(clash) - 1} more) is also in "
                         f"{human_pairs}; give the extra pairs their own ids "
                         "(or drop their id column to use content hashes)")
    counts.update(extra_human_pairs=extra.num_rows, extra_source=str(extra_human_pairs))
    return pa.concat_tables([human, extra]), counts


def training_pairs(settings) -> list[dict]:
    """The pairs base and student reward models train on, for `wofn.settings.Settings`:
    `human_pairs` (first `max_human_pairs`, less the `human_holdout` share) plus `extra_human_pairs`
    (first `max_extra_human_pairs`)."""
    table, _ = training_preferences(settings.human_pairs, settings.max_human_pairs,
                                    settings.extra_human_pairs, settings.max_extra_human_pairs,
                                    settings.human_holdout)
    return table.to_pylist()


def holdout_pairs(settings) -> pa.Table:
    """The second held-out set of `wofn.settings.Settings`: the `human_holdout` share of `human_pairs`
    (first `max_human_pairs`), which `training_pairs` leaves out (empty when human_holdout is 0)."""
    return human_holdout(load_preferences(settings.human_pairs, settings.max_human_pairs),
                         settings.human_holdout, "holdout")


def hash_part(rows: list[dict], part: str, fraction: float = 0.5, salt: str = "holdout") -> list[dict]:
    """A deterministic split of pairs by the hash of their `pair_id`: `part="holdout"` gives the rows
    whose bucket int(sha256(salt:pair_id)[:8], 16) / 2**32 is below `fraction`, `part="rest"` the others.
    The same rows land in the same part on every machine and whatever else the file holds, so one part
    can stay out of every training (e.g. a second held-out set cut from data/uf_train.parquet)."""
    if part not in ("holdout", "rest"):
        raise ValueError(f"part must be 'holdout' or 'rest', got {part!r}")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")

    def held(row: dict) -> bool:
        digest = hashlib.sha256(f"{salt}:{row['pair_id']}".encode()).hexdigest()
        return int(digest[:8], 16) / 2**32 < fraction

    return [r for r in rows if held(r) == (part == "holdout")]
