"""What every table asset does after computing: publish files, refresh the catalog view, report."""

import base64
import io
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import DataVersion, MaterializeResult, MetadataValue

from wofn import catalog, schemas
from wofn.paths import WofnHome, content_hash, publish


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


def publish_table(home: WofnHome, asset: str, table: pa.Table, metadata: dict | None = None) -> MaterializeResult:
    """Write one Parquet file for `asset` (checked against its schema) and swap it in whole."""
    table = schemas.conform(table, schemas.TABLES[asset], where=asset)
    final = home.table_dir(asset)
    staging = home.staging_dir(final)
    catalog.write_parquet(table, staging)
    publish(staging, final)
    return table_result(home, asset, metadata)


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
