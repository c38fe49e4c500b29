"""Publishing and reading the table assets: a table is swapped in whole (or one prompt batch of it),
its catalog view refreshed, its lineage recorded, and its MaterializeResult described."""

import fcntl
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from dagster import AssetExecutionContext, AssetKey, DataVersion, MaterializeResult, MetadataValue

from wofn import catalog, lineage, schemas
from wofn.paths import WofnHome, content_hash, parquet_files, partition_keys, publish, staging_dir, table_rows


def _own_code_version(context: AssetExecutionContext | None, asset: str) -> str | None:
    if context is None:
        return None
    return context.assets_def.code_versions_by_key.get(AssetKey(asset))


def table_result(home: WofnHome, asset: str, metadata: dict | None = None, *,
                 context: AssetExecutionContext | None = None, partition: str | None = None,
                 inputs: dict | None = None, facts: dict | None = None) -> MaterializeResult:
    """Refresh `asset`'s catalog view over its published folder, record its lineage, and describe it
    (a MaterializeResult for `asset`, so a multi-asset yields one per table it writes).

    With `partition`, the folder is that prompt batch's (`batch=<key>`); the catalog view reads
    every batch. The data version is the content hash of the published files; `inputs` name the
    upstream versions it was made from (wofn.lineage).
    """
    table_dir = home.partition_dir(asset, partition) if partition else home.table_dir(asset)
    catalog.refresh_view(home.catalog_path, asset, home.table_dir(asset))
    rows = table_rows(table_dir)
    version = content_hash(table_dir)
    code = _own_code_version(context, asset)
    lineage.record(home, asset, version, partition=partition, inputs=inputs, rows=rows, path=table_dir,
                   code_version=code, run_id=context.run.run_id if context else None, facts=facts)
    extra = {}
    if partition:
        batches = partition_keys(home.table_dir(asset))
        extra = {"batch": MetadataValue.text(partition),
                 "batches_in_table": MetadataValue.int(len(batches)),
                 "rows_all_batches": MetadataValue.int(table_rows(home.table_dir(asset)))}
    return MaterializeResult(
        asset_key=asset,
        metadata={
            "rows": MetadataValue.int(rows),
            "path": MetadataValue.path(str(table_dir)),
            "data_version": MetadataValue.text(version),
            **({"code_version": MetadataValue.text(code)} if code else {}),
            "catalog_view": MetadataValue.text(f"{asset} in {home.catalog_path}"),
            "lineage_record": MetadataValue.path(str(lineage.record_path(home, asset, version))),
            **({"inputs": MetadataValue.json(inputs)} if inputs else {}),
            **extra,
            **(metadata or {}),
        },
        data_version=DataVersion(version),
    )


def batch_versions(home: WofnHome, asset: str) -> dict[str, str]:
    """{batch: data version} of every prompt batch a partitioned table holds."""
    return {key: content_hash(home.partition_dir(asset, key)) for key in partition_keys(home.table_dir(asset))}


@contextmanager
def staged(final: Path, resume_key: str | None = None):
    """Yield an empty staging folder; swap it in for `final` when the block succeeds.

    On failure the staging folder is removed and the previously published folder is untouched.
    With `resume_key` (a hash of everything the contents depend on), the staging folder is kept
    on failure, and the next attempt with the same key gets it back with what was written so far
    (a job that resumes, like the sampling job, then redoes only what is missing); staging
    folders of other keys are removed.
    """
    if resume_key is None:
        staging = staging_dir(final)
    else:
        staging = final.parent / f".{final.name}.resume-{resume_key}"
        for stale in final.parent.glob(f".{final.name}.resume-*"):
            if stale != staging:
                shutil.rmtree(stale, ignore_errors=True)
        staging.mkdir(parents=True, exist_ok=True)
    try:
        yield staging
    except BaseException:
        if resume_key is None:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    publish(staging, final)


@contextmanager
def table_lock(home: WofnHome, asset: str):
    """Hold an exclusive lock on `asset` across this machine's processes (a hidden file beside the
    table; the kernel releases it when the holder exits, even when killed): for a read-then-publish
    that must not interleave with another run's, such as two prompt batches materialized at once."""
    path = home.table_dir(asset).parent / f".{asset}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def staged_partition(home: WofnHome, asset: str, key: str, log=None, resume_key: str | None = None):
    """`staged` for one prompt batch of a partitioned table: the batch's folder is replaced whole,
    the other batches are not touched. Flat files left by a wofn from before partitions are removed
    (the catalog view reads only the batch folders)."""
    table_dir = home.table_dir(asset)
    with staged(home.partition_dir(asset, key), resume_key) as staging:
        yield staging
    for legacy in sorted(table_dir.glob("*.parquet")):
        if log is not None:
            log.warning(f"removing {legacy}: {asset} is partitioned by prompt batch now")
        legacy.unlink()


def publish_table(home: WofnHome, asset: str, table: pa.Table, metadata: dict | None = None, *,
                  context: AssetExecutionContext | None = None, partition: str | None = None,
                  inputs: dict | None = None, facts: dict | None = None) -> MaterializeResult:
    """Write one Parquet file for `asset` (checked against its schema) and swap it in whole
    (with `partition`: that batch's folder only)."""
    table = schemas.conform(table, schemas.TABLES[asset], where=asset)
    if partition:
        with staged_partition(home, asset, partition, context.log if context else None) as staging:
            catalog.write_parquet(table, staging)
    else:
        write_table(home.table_dir(asset), table, schemas.TABLES[asset], where=asset)
    return table_result(home, asset, metadata, context=context, partition=partition, inputs=inputs, facts=facts)


def write_table(final: Path, table: pa.Table, schema: pa.Schema, where: str) -> None:
    """Check `table` against `schema` and publish it as the only file of folder `final`."""
    table = schemas.conform(table, schema, where=where)
    with staged(final) as staging:
        catalog.write_parquet(table, staging)


def error_summary(home: WofnHome, table: str, partition: str | None = None) -> dict:
    """Give a dead-letter table (wofn.schemas.ERRORS) its catalog view, and describe one folder of
    it (a prompt batch's with `partition`) as metadata: how many rows, and how many per reason. A
    folder a job left without files gets one empty file, so the view exists and reads zero rows."""
    folder = home.partition_dir(table, partition) if partition else home.table_dir(table)
    if not any(folder.glob("*.parquet")):
        catalog.write_parquet(pa.Table.from_pylist([], schema=schemas.ERRORS), folder)
    rows = pa.concat_tables(pq.read_table(f) for f in sorted(folder.glob("*.parquet")))
    if home.table_dir(table) in (folder, folder.parent):
        catalog.refresh_view(home.catalog_path, table, home.table_dir(table))
    reasons: dict[str, int] = {}
    for reason in rows.column("reason").to_pylist():
        reasons[reason] = reasons.get(reason, 0) + 1
    return {f"{table}": MetadataValue.int(rows.num_rows),
            f"{table}_by_reason": MetadataValue.json(reasons),
            f"{table}_path": MetadataValue.path(str(folder))}


def error_result(home: WofnHome, table: str, *, context: AssetExecutionContext, partition: str | None = None,
                 inputs: dict | None = None) -> MaterializeResult:
    """A dead-letter table's own materialization (its rows by reason; see `error_summary`)."""
    summary = error_summary(home, table, partition=partition)
    return table_result(home, table, {"by_reason": summary[f"{table}_by_reason"]}, context=context,
                        partition=partition, inputs=inputs)


def empty_result(home: WofnHome, asset: str, why: str, *, context: AssetExecutionContext,
                 partition: str | None = None, inputs: dict | None = None) -> MaterializeResult:
    """Publish `asset` with no rows: a table this run's settings do not fill (e.g. the pairwise teacher's
    tournament_pairs under a pointwise one). Rows an earlier run left there would describe other
    settings, so they are replaced, and the catalog view reads zero rows."""
    table = pa.Table.from_pylist([], schema=schemas.TABLES[asset])
    return publish_table(home, asset, table, {"empty_because": MetadataValue.text(why)}, context=context,
                         partition=partition, inputs=inputs)


def read_table(home: WofnHome, asset: str, partition: str | None = None,
               columns: list[str] | None = None) -> pa.Table:
    """A table's rows: every prompt batch of a partitioned table, or one (`partition`); with
    `columns`, only those (what metadata needs of a table of a million rows)."""
    return pa.concat_tables(read_files(home, asset, partition, columns))


def read_files(home: WofnHome, asset: str, partition: str | None = None,
               columns: list[str] | None = None) -> Iterator[pa.Table]:
    """`read_table`'s rows one file at a time, for summaries that need not hold the table whole (a
    batch of a million prompts: 15,625 files, 2M candidates)."""
    table_dir = home.partition_dir(asset, partition) if partition else home.table_dir(asset)
    files = parquet_files(table_dir)
    if not files:
        raise FileNotFoundError(f"{table_dir}: no Parquet files; materialize {asset!r} first")
    return (pq.read_table(f, columns=columns) for f in files)


def count_rows(home: WofnHome, asset: str, partition: str | None = None) -> int:
    """A table's rows (of one prompt batch with `partition`), from the Parquet footers."""
    table_dir = home.partition_dir(asset, partition) if partition else home.table_dir(asset)
    return table_rows(table_dir)

