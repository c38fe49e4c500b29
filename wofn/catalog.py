"""The DuckDB side of wofn: the catalog file, views over Parquet tables, and the SQL in `sql/`.

Every table lives as Parquet under `$WOFN_HOME/tables/<asset>/` (per prompt batch in
`batch=<key>/` folders for the partitioned tables); the catalog (`wofn.duckdb`)
holds one view per table, named after its asset, so `duckdb .wofn/wofn.duckdb` can query them.
The SQL transforms (`sql/*.sql`) read those views by name and are run through `run_sql_file`.

Notes on duckdb 2.x (checked against 2.0.1):
  * `con.execute(...)` returns the connection, which has no `.arrow()`; its `to_arrow_table()`
    works but warns about an extra copy. `con.sql(sql, params=...)` returns a relation whose
    `to_arrow_table()` gives a `pyarrow.Table` (`relation.arrow()` gives a RecordBatchReader).
  * Relations have no `fetchone()`; use `fetchall()` or Arrow.
  * Named parameters (`$name`) bind from a dict; unknown or missing names raise
    `duckdb.InvalidInputException`.
  * duckdb 2 writes a storage format DuckDB 1.x cannot read (the `duckdb` CLI on PyPI is 1.5.6).
    The catalog is written with `storage_compatibility_version` v1.0.0 (STORAGE), which every
    DuckDB since 1.0 reads; a catalog written before in the newer format is rewritten, views and
    all, the first time wofn opens it for writing (`_rewrite_for_duckdb_1`).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from wofn import paths, schemas

STORAGE = {"storage_compatibility_version": "v1.0.0"}  # readable by DuckDB 1.0 and later
_NEWEST_1X_STORAGE = 68  # the newest storage version number DuckDB 1.x reads (1.5.6: 64 to 68)


class CatalogLockedError(RuntimeError):
    """The catalog file is locked by another process (an open duckdb shell, another run)."""


def read_sql(name: str) -> str:
    """Text of `sql/<name>.sql`; `name` may also be a path to a `.sql` file."""
    return _sql_path(name).read_text(encoding="utf-8")


def _sql_path(name: str) -> Path:
    candidate = Path(name)
    if candidate.suffix == ".sql" and candidate.is_file():
        return candidate
    path = paths.SQL_DIR / f"{name}.sql"
    if not path.is_file():
        raise FileNotFoundError(f"no SQL file {path} (nor a .sql file at {name!r})")
    return path


def _is_lock_conflict(exc: duckdb.Error) -> bool:
    message = str(exc)
    return "Could not set lock" in message or "Conflicting lock" in message


def connect(
    path: Path | str | None = None, read_only: bool = False, timeout_s: float = 30.0
) -> duckdb.DuckDBPyConnection:
    """Open the catalog at `path` (None: an in-memory database).

    DuckDB lets one process at a time write a database file. While another process holds the
    file, retry with backoff for up to `timeout_s` seconds, then raise CatalogLockedError.
    """
    if path is None:
        return duckdb.connect(":memory:")
    path = Path(path).resolve()
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only, config=STORAGE)
            if read_only or storage_version(path) <= _NEWEST_1X_STORAGE:
                return con
            _rewrite_for_duckdb_1(con, path)
            continue
        except duckdb.IOException as exc:
            if not _is_lock_conflict(exc):
                raise
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CatalogLockedError(
                    f"DuckDB catalog {path} is locked by another process (e.g. an open duckdb "
                    f"shell or another wofn run) and stayed locked for {timeout_s:g}s; close "
                    f"it and try again. DuckDB said: {exc}"
                ) from exc
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 1.0)


def storage_version(path: Path) -> int:
    """The storage version number in a DuckDB file's header (0 for a file too short to have one)."""
    with open(path, "rb") as fh:
        header = fh.read(20)
    return int.from_bytes(header[12:20], "little") if len(header) == 20 and header[8:12] == b"DUCK" else 0


def _rewrite_for_duckdb_1(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Rewrite the catalog at `path` (open as `con`, which is closed) in the storage format of STORAGE:
    the same views, in a new file that replaces it."""
    views = [sql for (sql,) in con.sql("select sql from duckdb_views() where not internal").fetchall()]
    tables = con.sql("select count(*) from duckdb_tables() where not internal").fetchall()[0][0]
    con.close()
    if tables:
        raise RuntimeError(f"{path} holds tables besides wofn's views and was written by DuckDB 2, "
                                 "which DuckDB 1.x cannot read; move it away and rerun")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    new = duckdb.connect(str(tmp), config=STORAGE)
    try:
        for sql in views:
            new.execute(sql)
    finally:
        new.close()
    Path(f"{path}.wal").unlink(missing_ok=True)  # its changes are in `views` (read through the open file)
    os.replace(tmp, path)


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def create_view(
    con: duckdb.DuckDBPyConnection, name: str, table_dir: Path, temporary: bool = False,
) -> None:
    """Create or replace view `name` over every Parquet file of the table in `table_dir`.

    `name` must be a wofn table (a key of `schemas.TABLES`). A table is either flat
    (`table_dir/*.parquet`) or partitioned by prompt batch (`table_dir/batch=<key>/*.parquet`);
    the view reads every partition, and has exactly the table's columns (no hive `batch`
    column). The folder must hold at least one Parquet file: a view over nothing would only
    fail later, when something queries it.
    """
    if name not in schemas.TABLES:
        raise ValueError(f"unknown table {name!r}; expected one of {sorted(schemas.TABLES)}")
    table_dir = Path(table_dir).resolve()
    if not table_dir.is_dir():
        raise FileNotFoundError(f"table folder {table_dir} for view {name!r} does not exist")
    if paths.partition_keys(table_dir):
        pattern = (table_dir / f"{paths.PARTITION_PREFIX}*" / "*.parquet").as_posix()
    elif any(table_dir.glob("*.parquet")):
        pattern = (table_dir / "*.parquet").as_posix()
    else:
        raise FileNotFoundError(f"table folder {table_dir} for view {name!r} has no *.parquet files "
                                f"(nor {paths.PARTITION_PREFIX}<key>/*.parquet partitions)")
    # DuckDB cannot bind parameters in DDL (CREATE VIEW, and COPY in write_buckets), so these are
    # the places wofn builds SQL text from values: the name is checked against schemas.TABLES and quoted as an
    # identifier, the path is quoted as a string literal (single quotes doubled). The glob is
    # kept in the view, so it always reads the folder's current files; `batch=*` never matches
    # the hidden staging folders of writes in flight.
    # union_by_name: files written before a column was added (schemas.is_added) read it as NULL;
    # where no file has it yet, the view adds it as a NULL column of its type.
    # Only when the files differ: DuckDB opens a reader per file for union_by_name and keeps it (460 MB
    # for the 15,625 files of 2M candidates). Publishing a table refreshes its catalog view, so a
    # batch of a newer schema turns union_by_name on.
    kind = "temp view" if temporary else "view"
    union = _mixed_schemas(name, table_dir)
    source = (f"read_parquet({_quote_literal(pattern)}, hive_partitioning = false, "
              f"union_by_name = {str(union).lower()})")
    try:
        have = {row[0] for row in con.execute(f"describe select * from {source}").fetchall()}
    except (duckdb.InvalidInputException, duckdb.IOException) as exc:  # a truncated or damaged file
        raise ValueError(f"table {name!r} in {table_dir}: a file cannot be read as Parquet ({exc}); "
                         f"rematerialize the asset (or delete that file) to publish the view") from exc
    added = "".join(
        f", cast(null as {_duckdb_type(con, field.type)}) as {_quote_identifier(field.name)}"
        for field in schemas.TABLES[name] if field.name not in have and schemas.is_added(field))
    con.execute(f"create or replace {kind} {_quote_identifier(name)} as select *{added} from {source}")


# table folder -> (a hash of its files' names, mtimes and sizes; mixed?), the newest _SCHEMAS_KEPT folders
# (a long-lived process, such as the Dagster code server, sees many: every bucket's temporary folder)
_SCHEMAS: dict[Path, tuple[int, bool]] = {}
_SCHEMAS_KEPT = 256


def _mixed_schemas(name: str, table_dir: Path) -> bool:
    """Whether the Parquet files of `table_dir` differ in their columns (names or types), from their
    footers; remembered per folder while its files are unchanged. A file that is not Parquet (a
    truncated write) raises ValueError naming it."""
    files = paths.parquet_files(table_dir)
    signature = hash(tuple((str(f), st.st_mtime_ns, st.st_size) for f in files for st in (f.stat(),)))
    known = _SCHEMAS.get(table_dir)
    if known is not None and known[0] == signature:
        return known[1]
    columns = set()
    for f in files:
        try:
            schema = pq.read_schema(f)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ValueError(f"table {name!r} in {table_dir}: a file cannot be read as Parquet ({f}: {exc}); "
                             "rematerialize the asset (or delete that file) to publish the view") from exc
        columns.add(tuple((field.name, str(field.type)) for field in schema))
    _SCHEMAS.pop(table_dir, None)
    _SCHEMAS[table_dir] = (signature, len(columns) > 1)
    while len(_SCHEMAS) > _SCHEMAS_KEPT:
        del _SCHEMAS[next(iter(_SCHEMAS))]
    return len(columns) > 1


def _duckdb_type(con: duckdb.DuckDBPyConnection, arrow_type: pa.DataType) -> str:
    """DuckDB's name for an Arrow type (e.g. DOUBLE[] for list<double>)."""
    return str(con.from_arrow(pa.table({"x": pa.nulls(0, arrow_type)})).types[0])


def refresh_view(catalog_path: Path, name: str, table_dir: Path) -> None:
    """Create or replace the persistent view `name` in the catalog file (created if missing)."""
    con = connect(catalog_path)
    try:
        create_view(con, name, table_dir)
    finally:
        con.close()


def query(con: duckdb.DuckDBPyConnection, sql: str, params: dict | None = None) -> pa.Table:
    """Run `sql` with named parameters `params` ($name) and return the result as a Table."""
    # In duckdb 2.x, execute() returns the connection (no .arrow(); its to_arrow_table() copies
    # and warns); a relation's to_arrow_table() is the direct route to a pyarrow.Table.
    result = con.sql(sql, params=params)
    if result is None:  # a statement with no result set
        return pa.table({})
    table = result.to_arrow_table()
    if isinstance(table, pa.RecordBatchReader):  # defensive: older/newer API variants
        table = table.read_all()
    return table


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: dict | None = None):
    """The first column of the first row of `sql`'s result (None when there is no row)."""
    table = query(con, sql, params)
    return table.column(0)[0].as_py() if table.num_rows else None


# Comments and quoted text hide "$name" from the parameter scan.
_COMMENT_OR_QUOTED = re.compile(r"--[^\n]*|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")
_PARAMETER = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
# A header line "--   <view>  (sql/<file>.sql ...": the query reads the result of another SQL file
_DEPENDENCY = re.compile(r"^--\s+([a-z_][a-z0-9_]*)\s+\(sql/([\w/]+)\.sql\b", re.M)


def query_parameters(sql: str) -> list[str]:
    """The named parameters ($name) a query binds, sorted."""
    return sorted(set(_PARAMETER.findall(_COMMENT_OR_QUOTED.sub(" ", sql))))


def bound_parameters(sql: str, params: dict | None) -> dict | None:
    """The entries of `params` that `sql` itself binds (None when none): a query that reads other SQL
    files' results gets the whole chain's parameters and binds its own."""
    own = set(query_parameters(sql))
    return {k: v for k, v in (params or {}).items() if k in own} or None


def sql_dependencies(sql: str) -> list[tuple[str, str]]:
    """(view, SQL file name) for each input the query's header says is another SQL file's result
    ("--   pair_filter_flags  (sql/pair_filter_flags.sql, ..." under "Reads:")."""
    header = sql.split("\nwith\n", 1)[0]
    reads = header.split("Reads:", 1)[1].split("Produces", 1)[0] if "Reads:" in header else ""
    return _DEPENDENCY.findall(reads)


def file_parameters(sql: str) -> list[str]:
    """The parameters a SQL text takes, with those of the SQL files it reads (`sql_dependencies`)."""
    names = set(query_parameters(sql))
    for _, dependency in sql_dependencies(sql):
        names |= set(file_parameters(_sql_path(dependency).read_text(encoding="utf-8")))
    return sorted(names)


def register_dependencies(con: duckdb.DuckDBPyConnection, sql: str, params: dict | None,
                          inputs: dict | None = None) -> list[str]:
    """Register, as views on `con`, the results of the SQL files `sql` reads (`sql_dependencies`),
    each run with the parameters of `params` it takes; `inputs` gives ones already computed (a
    table, or ON_CONNECTION for a view `con` already has).
    Returns the names registered (the caller unregisters them)."""
    registered = []
    for view, dependency in sql_dependencies(sql):
        table = (inputs or {}).get(view)
        if table is ON_CONNECTION:
            continue
        if table is None:
            text = _sql_path(dependency).read_text(encoding="utf-8")
            wanted = set(file_parameters(text))
            table = run_sql_file(con, dependency, {k: v for k, v in (params or {}).items() if k in wanted} or None,
                                 schema=_dependency_schema(dependency))
        con.register(view, table)
        registered.append(view)
    return registered


def _dependency_schema(name: str) -> pa.Schema | None:
    """The schema a table-producing SQL file's header names (`Produces (wofn.schemas.X`), if any."""
    match = re.search(r"Produces \(wofn\.schemas\.(\w+)", _sql_path(name).read_text(encoding="utf-8"))
    return getattr(schemas, match.group(1)) if match else None


# An `inputs` value of run_sql_file / write_sql_file: the view is already on the connection (e.g. a
# `parquet_view` over a file written before), not a table to register.
ON_CONNECTION = "on-connection"


# Rows per Parquet row group of the files wofn writes (and per batch `write_sql_file` streams): a
# reader that goes row group by row group, as Beam's ReadFromParquet does, holds this many rows at a
# time. pyarrow's default (2^20) made one group of a million prompts: the sampling job's read of
# them took 768 MB at its peak against 428 MB in groups of 65,536.
ROW_GROUP_ROWS = 65_536


SPILL_MEMORY_LIMIT = "512MB"  # DuckDB's memory on a `spilling` connection


@contextlib.contextmanager
def spilling(con: duckdb.DuckDBPyConnection | None = None) -> Iterator[tuple[duckdb.DuckDBPyConnection, Path]]:
    """`con` (default: a new in-memory database) with a memory limit of SPILL_MEMORY_LIMIT, spilling
    what does not fit into a temporary folder, and free to return rows out of insertion order (the SQL
    files order what they return); yields it with a temporary folder for the caller's intermediate
    files, and closes it and removes the folder on exit. For the queries over every pair or candidate
    of a table: their joins, aggregates and sorts spill; a quantile's state cannot, and must fit the
    limit (8 bytes a value: the filters' likelihood quantile over 10^7 pairs takes 160 MB). DuckDB's
    own default, 80% of the machine, let the filters take 1.1 GB at 10^6 pairs."""
    with tempfile.TemporaryDirectory(prefix="wofn-duckdb-") as tmp:
        con = con if con is not None else connect()
        try:
            spill = Path(tmp) / "spill"
            spill.mkdir()
            con.execute(f"set temp_directory = {_quote_literal(str(spill))}")
            con.execute(f"set memory_limit = {_quote_literal(SPILL_MEMORY_LIMIT)}")
            con.execute("set preserve_insertion_order = false")
            yield con, Path(tmp)
        finally:
            con.close()


def parquet_view(con: duckdb.DuckDBPyConnection, name: str, files: Path | str) -> None:
    """A temporary view `name` over a Parquet file, or a glob of them, that wofn wrote (an intermediate
    result of `write_sql_file`; wofn's own tables: `create_view`)."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"view name {name!r}: expected lowercase letters, digits and underscores")
    con.execute(f"create or replace temp view {_quote_identifier(name)} as "
                f"select * from read_parquet({_quote_literal(Path(files).as_posix())})")


def write_buckets(con: duckdb.DuckDBPyConnection, view: str, out_dir: Path, buckets: int) -> list[Path]:
    """Write the rows of `view` (a `create_view` of a wofn table on `con`) into `out_dir`, one folder
    per bucket of prompts (a hash of prompt_id, so a prompt's rows of every table share a bucket), in
    one pass (on a `spilling` connection, within its memory). Returns each bucket's folder,
    `out_dir`/wofn_bucket=<b>; a bucket with no rows has none on disk. Work done per prompt can then
    go bucket by bucket, each reading its own rows only."""
    if view not in schemas.TABLES:
        raise ValueError(f"unknown table {view!r}; expected one of {sorted(schemas.TABLES)}")
    n = int(buckets)
    if n < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    out_dir = Path(out_dir)  # quoted as create_view quotes
    con.execute(f"copy (select *, hash(prompt_id) % {n} as wofn_bucket from {_quote_identifier(view)}) "
                f"to {_quote_literal(out_dir.as_posix())} (format parquet, partition_by (wofn_bucket))")
    return [out_dir / f"wofn_bucket={b}" for b in range(n)]


def write_sql_file(con: duckdb.DuckDBPyConnection, name: str, path: Path, schema: pa.Schema,
                   params: dict | None = None, inputs: dict | None = None, batch_rows: int = ROW_GROUP_ROWS) -> int:
    """Run `sql/<name>.sql` as `run_sql_file` does, but write its result to the Parquet file `path`
    batch by batch, each batch conformed to `schema`: the result is never held whole in Python, so a
    result of millions of rows costs a batch's memory (and DuckDB's, see `spilling`). Written under a
    hidden temporary name, then renamed. Returns the rows written."""
    sql_path = _sql_path(name)
    text = sql_path.read_text(encoding="utf-8")
    where = f"sql/{name}.sql" if sql_path.parent == paths.SQL_DIR else str(sql_path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    registered = register_dependencies(con, text, params, inputs)
    rows = 0
    try:
        own = bound_parameters(text, params) if sql_dependencies(text) else params
        reader = con.sql(text, params=own).to_arrow_reader(batch_rows)
        with pq.ParquetWriter(tmp, schema) as writer:
            for batch in reader:
                table = schemas.conform(pa.Table.from_batches([batch]), schema, where=where)
                writer.write_table(table)
                rows += table.num_rows
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        for view in registered:
            con.unregister(view)
    return rows


def run_sql_file(
    con: duckdb.DuckDBPyConnection,
    name: str,
    params: dict | None = None,
    schema: pa.Schema | None = None,
    inputs: dict[str, pa.Table] | None = None,
) -> pa.Table:
    """Run `sql/<name>.sql` and, when `schema` is given, conform the result to it.

    The SQL files it reads (its header's "Reads:" entries that name `sql/<file>.sql`) are run
    first, with the parameters of `params` they take, unless `inputs` has their result; `params`
    holds the parameters of the whole chain, and each file binds those it uses."""
    path = _sql_path(name)
    text = path.read_text(encoding="utf-8")
    registered = register_dependencies(con, text, params, inputs)
    try:
        table = query(con, text, bound_parameters(text, params) if sql_dependencies(text) else params)
    finally:
        for view in registered:
            con.unregister(view)
    if schema is not None:
        where = f"sql/{name}.sql" if path.parent == paths.SQL_DIR else str(path)
        table = schemas.conform(table, schema, where=where)
    return table


def write_parquet(table: pa.Table, out_dir: Path, filename: str = "data.parquet") -> Path:
    """Write `table` to `out_dir/filename` atomically, in row groups of ROW_GROUP_ROWS; return the
    final path.

    The temporary file sits in the same folder (so os.replace is atomic) and does not end in
    `.parquet`, so views globbing `*.parquet` never see a half-written file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / filename
    tmp = out_dir / f".{filename}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final
