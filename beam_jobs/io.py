"""Reading and writing wofn tables in Beam jobs.

Shards are written by our own DoFn rather than `WriteToParquet` (which writes empty files on
the DaskRunner): rows are keyed by a deterministic shard of their `prompt_id`, grouped, sorted
and written as `part-SSSSS-of-NNNNN.parquet`, first under a temporary name and then renamed, so
a reader never sees a partial file. Paths go through Beam's FileSystems, so `gs://` and `s3://`
outputs work where the matching Beam extra is installed.
"""

from __future__ import annotations

import hashlib
import io
import logging
import uuid

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

from beam_jobs import dask_compat


def input_pattern(path: str) -> str:
    """A Parquet file, or a folder of them, as a file pattern."""
    if path.endswith(".parquet") or any(c in path for c in "*?["):
        return path
    return FileSystems.join(path, "*.parquet")


def count_rows(path: str) -> int | None:
    """Rows in a Parquet file or folder, from the footers (for progress ETAs); None if unknown."""
    try:
        files = [m.path for m in FileSystems.match([input_pattern(path)])[0].metadata_list]
        if not files:
            return None
        total = 0
        for name in files:
            with FileSystems.open(name, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
                total += pq.ParquetFile(fh).metadata.num_rows
        return total
    except Exception:  # noqa: BLE001 - progress is best effort; the job itself reports real errors
        return None


def shard_of(key: str, num_shards: int) -> int:
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % num_shards


def shard_name(shard: int, num_shards: int) -> str:
    return f"part-{shard:05d}-of-{num_shards:05d}.parquet"


def _key_by_shard(row: dict, num_shards: int) -> tuple[int, dict]:
    return shard_of(row["prompt_id"], num_shards), row


class _WriteShardFn(beam.DoFn):
    def __init__(self, output_dir: str, schema: pa.Schema, num_shards: int, sort_keys: tuple[str, ...]):
        self._output_dir = output_dir
        self._schema = schema
        self._num_shards = num_shards
        self._sort_keys = sort_keys

    def process(self, element):
        shard, rows = element
        rows = sorted(rows, key=lambda r: tuple(r[k] for k in self._sort_keys))
        table = pa.Table.from_pylist(rows, schema=self._schema)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        final = FileSystems.join(self._output_dir, shard_name(shard, self._num_shards))
        temp = FileSystems.join(self._output_dir, f".{shard_name(shard, self._num_shards)}.{uuid.uuid4().hex[:8]}.tmp")
        with FileSystems.create(temp) as fh:
            fh.write(buffer.getvalue())
        if FileSystems.exists(final):
            FileSystems.delete([final])
        FileSystems.rename([temp], [final])
        beam.metrics.Metrics.counter("wofn", "rows_written").inc(table.num_rows)
        beam.metrics.Metrics.counter("wofn", "shards_written").inc()
        yield final


class WriteShards(beam.PTransform):
    """Write dict rows conforming to `schema` as deterministic Parquet shards in `output_dir`."""

    def __init__(self, output_dir: str, schema: pa.Schema, num_shards: int,
                 sort_keys: tuple[str, ...] = ("prompt_id", "candidate_idx")):
        super().__init__()
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self._output_dir = output_dir
        self._schema = schema
        self._num_shards = num_shards
        self._sort_keys = sort_keys

    def expand(self, rows):
        if not FileSystems.exists(self._output_dir):
            FileSystems.mkdirs(self._output_dir)
        return (
            rows
            | "KeyByShard" >> beam.Map(_key_by_shard, self._num_shards)
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShard" >> beam.ParDo(_WriteShardFn(self._output_dir, self._schema, self._num_shards, self._sort_keys))
        )


def new_pipeline(pipeline_args: list[str], save_main_session: bool) -> beam.Pipeline:
    options = PipelineOptions(pipeline_args)
    options.view_as(SetupOptions).save_main_session = save_main_session
    return beam.Pipeline(options=options)


def run_to_completion(pipeline: beam.Pipeline, log: logging.Logger) -> dict[str, int]:
    """Run, wait, and return the job's `wofn` counters (also logged)."""
    result = dask_compat.run(pipeline) if dask_compat.is_dask(pipeline) else pipeline.run()
    try:
        result.wait_until_finish()
    finally:
        client = getattr(result, "client", None)  # the dask.distributed Client the DaskRunner opened
        if client is not None:
            client.close()
    stats = counters(result)
    log.info("%s", stats)
    return stats


def counters(result) -> dict[str, int]:
    """The job's `wofn` counters by name (committed values); {} where the runner has no metrics
    (Beam's DaskRunner raises NotImplementedError)."""
    out = {}
    try:
        metrics = result.metrics()
    except NotImplementedError:
        return out
    for counter in metrics.query(beam.metrics.MetricsFilter().with_namespace("wofn"))["counters"]:
        out[counter.key.metric.name] = out.get(counter.key.metric.name, 0) + counter.committed
    return out
