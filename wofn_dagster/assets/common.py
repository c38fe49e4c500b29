"""What every table asset does after computing: publish files, refresh the catalog view, report."""

import base64
import io
import logging
import shutil
from contextlib import contextmanager
from pathlib import Path
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import DataVersion, MaterializeResult, MetadataValue

from wofn import catalog, schemas
from wofn.paths import WofnHome, content_hash, publish, staging_dir


def table_result(home: WofnHome, asset: str, metadata: dict | None = None) -> MaterializeResult:
    """Refresh `asset`'s catalog view over its published folder and describe it."""
    table_dir = home.table_dir(asset)
    catalog.refresh_view(home.catalog_path, asset, table_dir)
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in sorted(table_dir.glob("*.parquet")))
    version = content_hash(table_dir)
    return MaterializeResult(
        metadata={
            "rows": MetadataValue.int(rows),
            "path": MetadataValue.path(str(table_dir)),
            "data_version": MetadataValue.text(version),
            "catalog_view": MetadataValue.text(f"{asset} in {home.catalog_path}"),
            **(metadata or {}),
        },
        data_version=DataVersion(version),
    )


class _ToDagster(logging.Handler):
    def __init__(self, context):
        super().__init__(logging.INFO)
        self._context = context

    def emit(self, record: logging.LogRecord) -> None:
        self._context.log.info(f"{record.name}: {record.getMessage()}")


@contextmanager
def forward_logs(context, *names: str):
    """Show INFO lines of the given Python loggers (e.g. a Beam job's progress) in the run's log.

    Works for jobs running in this process (DirectRunner in_memory); other runners log on workers.
    """
    handler = _ToDagster(context)
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)


@contextmanager
def staged(final: Path):
    """Yield an empty staging folder; swap it in for `final` when the block succeeds.

    On failure the staging folder is removed and the previously published folder is untouched.
    """
    staging = staging_dir(final)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish(staging, final)


def publish_table(home: WofnHome, asset: str, table: pa.Table, metadata: dict | None = None) -> MaterializeResult:
    """Write one Parquet file for `asset` (checked against its schema) and swap it in whole."""
    write_table(home.table_dir(asset), table, schemas.TABLES[asset], where=asset)
    return table_result(home, asset, metadata)


def write_table(final: Path, table: pa.Table, schema: pa.Schema, where: str) -> None:
    """Check `table` against `schema` and publish it as the only file of folder `final`."""
    table = schemas.conform(table, schema, where=where)
    with staged(final) as staging:
        catalog.write_parquet(table, staging)


def error_summary(home: WofnHome, table: str, folder: Path | None = None) -> dict:
    """Give an errors table folder (wofn.schemas.ERRORS) its catalog view, and describe it as
    metadata: how many rows, and how many per reason. A folder a job left without files gets one
    empty file, so the view exists and reads zero rows."""
    folder = folder or home.table_dir(table)
    if not any(folder.glob("*.parquet")):
        catalog.write_parquet(pa.Table.from_pylist([], schema=schemas.ERRORS), folder)
    rows = pa.concat_tables(pq.read_table(f) for f in sorted(folder.glob("*.parquet")))
    if folder == home.table_dir(table):
        catalog.refresh_view(home.catalog_path, table, folder)
    reasons: dict[str, int] = {}
    for reason in rows.column("reason").to_pylist():
        reasons[reason] = reasons.get(reason, 0) + 1
    return {f"{table}": MetadataValue.int(rows.num_rows),
            f"{table}_by_reason": MetadataValue.json(reasons),
            f"{table}_path": MetadataValue.path(str(folder))}


def read_table(home: WofnHome, asset: str) -> pa.Table:
    table_dir = home.table_dir(asset)
    files = sorted(table_dir.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{table_dir}: no Parquet files; materialize {asset!r} first")
    return pa.concat_tables(pq.read_table(f) for f in files)


def png_markdown(fig) -> MetadataValue:
    """A matplotlib figure as a markdown image (shown inline in the Dagster UI)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return MetadataValue.md(f"![plot](data:image/png;base64,{encoded})")


def quantiles(values: list[float], qs=(0.0, 0.1, 0.5, 0.9, 1.0)) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {f"q{int(q * 100):02d}": float(ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]) for q in qs}
