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
import json
import logging
import math
import re
import time
import uuid
from dataclasses import dataclass
from typing import Iterable

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions

from beam_jobs import dask_compat, failpoints
from wofn import schemas


def input_pattern(path: str) -> str:
    """A Parquet file, or a folder of them, as a file pattern."""
    if path.endswith(".parquet") or any(c in path for c in "*?["):
        return path
    return FileSystems.join(path, "*.parquet")


def missing_columns(path: str, columns: tuple[str, ...]) -> tuple[str, list[str]] | None:
    """The first Parquet file of `path` (a file or folder) that lacks some of `columns`, with those
    columns; None when every file has them all. FileNotFoundError naming `path` when it has no file."""
    files = sorted(m.path for m in FileSystems.match([input_pattern(path)])[0].metadata_list)
    if not files:
        raise FileNotFoundError(f"{path}: no Parquet file there")
    for name in files:
        with FileSystems.open(name, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            names = set(pq.ParquetFile(fh).schema_arrow.names)
        missing = [c for c in columns if c not in names]
        if missing:
            return name, missing
    return None


def require_columns(path: str, columns: tuple[str, ...], what: str) -> None:
    """ValueError naming the file of `path` that lacks some of `columns` (`what`: the input's role)."""
    gap = missing_columns(path, columns)
    if gap:
        raise ValueError(f"{gap[0]}: no column {', '.join(map(repr, gap[1]))}; {what} needs the columns "
                         f"{', '.join(columns)}")


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


_SHARD = re.compile(r"part-(\d{5})-of-(\d{5})\.parquet$")


def write_shard(output_dir: str, shard: int, num_shards: int, table: pa.Table) -> str:
    """Write `table` as shard `shard` of `output_dir`: to a temporary name, then renamed, so a
    reader (or a resumed run) never sees a partial file. Returns the final path."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    name = shard_name(shard, num_shards)
    final = FileSystems.join(output_dir, name)
    temp = FileSystems.join(output_dir, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
    data = buffer.getvalue()
    try:
        with FileSystems.create(temp) as fh:
            fh.write(data[: len(data) // 2])
            failpoints.disk_full(temp)
            fh.write(data[len(data) // 2:])
    except OSError as exc:
        _delete_quietly(temp)
        raise OSError(exc.errno, f"{final}: the shard could not be written ({exc.strerror or exc}); nothing of it "
                      f"was published, and the shards written before are kept: free space and rerun, and the "
                      f"job resumes from them") from exc
    failpoints.hit("before_rename")
    if FileSystems.exists(final):
        FileSystems.delete([final])
    FileSystems.rename([temp], [final])
    failpoints.hit("after_rename")
    return final


def _delete_quietly(path: str) -> None:
    try:
        FileSystems.delete([path])
    except Exception:  # noqa: BLE001 - a leftover temporary file is cleared by the next run (completed_shards)
        pass


def _listing(output_dir: str) -> list[str]:
    if not FileSystems.exists(output_dir):
        return []
    pattern = FileSystems.join(output_dir, "*")
    return [m.path for m in FileSystems.match([pattern])[0].metadata_list]


def completed_shards(output_dir: str, num_shards: int) -> set[int]:
    """Shards of `output_dir` already written for this layout. Leftover temporary files of a
    killed run are deleted; shards of another layout (another shard count) are an error, since
    mixing them would duplicate or drop rows."""
    done, other = set(), set()
    for path in _listing(output_dir):
        base = path.rstrip("/").rsplit("/", 1)[-1]
        if base.startswith(".") and base.endswith(".tmp"):
            FileSystems.delete([path])
            continue
        match = _SHARD.search(base)
        if match:
            (done if int(match.group(2)) == num_shards else other).add(int(match.group(1)))
    if other:
        raise ValueError(f"{output_dir} holds shards of another layout (not -of-{num_shards:05d}); "
                         f"write to an empty folder, or rerun with the shard count it was written with")
    return done


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
        final = write_shard(self._output_dir, shard, self._num_shards, table)
        beam.metrics.Metrics.counter("wofn", "rows_written").inc(table.num_rows)
        beam.metrics.Metrics.counter("wofn", "shards_written").inc()
        yield final


def _not_done(row: dict, num_shards: int, done: frozenset) -> bool:
    return shard_of(row["prompt_id"], num_shards) not in done


def _as_list(element: tuple[int, Iterable[dict]]) -> tuple[int, list[dict]]:
    return element[0], list(element[1])


class ShardedInference(beam.PTransform):
    """Rows with a `prompt_id` in; per shard (a hash of prompt_id), the handler's one output for the
    shard's whole list of rows (`(shard, rows)` is one inference element) out. `done`: shards an
    earlier run wrote, skipped."""

    def __init__(self, handler, num_shards: int, done: Iterable[int] = ()):
        super().__init__()
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self._handler, self._num_shards, self._done = handler, num_shards, frozenset(done)

    def skipping(self, done: Iterable[int], expected: int | None = None) -> "ShardedInference":
        """The same transform, skipping the shards `done` (a wave skips every shard but its own), its
        progress counting toward `expected` rows when given."""
        handler = self._handler if expected is None else self._handler.expecting(expected)
        return type(self)(handler, self._num_shards, done)

    def expand(self, rows):
        return (
            rows
            | "SkipWrittenShards" >> beam.Filter(_not_done, self._num_shards, self._done)
            | "KeyByShard" >> beam.Map(_key_by_shard, self._num_shards)
            | "GroupByShard" >> beam.GroupByKey()
            | "ShardLists" >> beam.Map(_as_list)
            | "RunInference" >> RunInference(self._handler)
        )


class WriteShardWithErrors(beam.DoFn):
    """(shard, rows, error rows) in: the errors shard first, then the rows' shard, whose final file
    marks the shard done for a resumed run (`completed_shards`). Rows (one per candidate) sorted by
    prompt_id and candidate_idx, errors by prompt_id, candidate_idx, reason."""

    def __init__(self, output: str, errors: str, num_shards: int, schema: pa.Schema):
        self._output, self._errors, self._num_shards, self._schema = output, errors, num_shards, schema

    def process(self, element):
        shard, rows, errors = element
        rows = sorted(rows, key=lambda r: (r["prompt_id"], r["candidate_idx"]))
        errors = sorted(errors, key=lambda r: (r["prompt_id"] or "", r["candidate_idx"] or -1, r["reason"]))
        write_shard(self._errors, shard, self._num_shards, pa.Table.from_pylist(errors, schema=schemas.ERRORS))
        final = write_shard(self._output, shard, self._num_shards, pa.Table.from_pylist(rows, schema=self._schema))
        beam.metrics.Metrics.counter("wofn", "rows_written").inc(len(rows))
        beam.metrics.Metrics.counter("wofn", "shards_written").inc()
        yield final


def check_job_record(output: str, name: str, record: dict) -> None:
    """Write `record` (what a shard's rows depend on) as `name` into a new output folder, or check
    that an existing one matches: a resumed run must have the settings the folder was written with."""
    path = FileSystems.join(output, name)
    if FileSystems.exists(path):
        with FileSystems.open(path) as fh:
            earlier = json.loads(fh.read().decode("utf-8"))
        changed = {k: (earlier.get(k), v) for k, v in record.items() if earlier.get(k) != v}
        if changed:
            raise ValueError(f"{output} was written by a run with other settings {changed} (earlier, now); "
                             f"write to a new folder, or empty this one")
        return
    if not FileSystems.exists(output):
        FileSystems.mkdirs(output)
    with FileSystems.create(path) as fh:
        fh.write(json.dumps(record, indent=2, sort_keys=True).encode("utf-8"))


@dataclass(frozen=True)
class Resume:
    """What a sharded job (re)starts from: its errors folder, the shards written before, and the
    input rows still to do (for progress; None if unknown)."""

    errors_dir: str
    done: frozenset
    expected: int | None


def resume(output: str, errors: str | None, record_name: str, record: dict, num_shards: int, rows: int | None,
           log: logging.Logger) -> Resume:
    """Check the output folder's job record (`check_job_record`), clear the temporary files a killed
    run left in the output and errors folders, and find the shards already written."""
    errors_dir = errors or output.rstrip("/") + "_errors"
    check_job_record(output, record_name, record)
    done = completed_shards(output, num_shards)
    completed_shards(errors_dir, num_shards)
    if done:
        log.info("resuming: %d of %d shards already written in %s", len(done), num_shards, output)
    expected = None if rows is None else round(rows * (num_shards - len(done)) / num_shards)
    return Resume(errors_dir, frozenset(done), expected)


# The DirectRunner (Beam's FnApiRunner) holds the whole input of a GroupByKey in memory. On it, a
# sharded job runs its shards in waves of about this many input rows, one pipeline each, so that
# its memory is a wave's whatever the size of the input (each wave reads the input and keeps only
# its shards' rows). Other runners group out of core: they run one pipeline.
WAVE_ROWS = 100_000


def add_wave_arg(parser) -> None:
    parser.add_argument("--wave-rows", type=int, default=WAVE_ROWS,
                        help="on the DirectRunner, run the shards in waves of about this many input rows, "
                             "one pipeline each: the job's memory is a wave's (default %(default)s)")


def waves(num_shards: int, done: frozenset, rows: int | None, wave_rows: int) -> list[frozenset]:
    """The shards not `done`, cut into waves of about `wave_rows` of the `rows` input rows each (consecutive
    shard numbers; the shards are hash buckets, so about equal)."""
    if wave_rows < 1:
        raise ValueError(f"--wave-rows must be >= 1, got {wave_rows}")
    todo = [k for k in range(num_shards) if k not in done]
    per_wave = max(1, math.floor(num_shards * wave_rows / rows)) if rows else len(todo)
    return [frozenset(todo[i:i + per_wave]) for i in range(0, len(todo), per_wave)] or [frozenset()]


def is_local(pipeline: beam.Pipeline) -> bool:
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    return isinstance(pipeline.runner, fn_runner.FnApiRunner)


def run_sharded(make_pipeline, read, label: str, transform: ShardedInference, output: str, start: Resume,
                num_shards: int, schema: pa.Schema, log: logging.Logger, rows: int | None = None,
                wave_rows: int = WAVE_ROWS) -> dict[str, int]:
    """Run the input `read(pipeline)` gives (a PCollection of a pipeline `make_pipeline()` makes) through
    `transform`, write each shard (errors, then `schema` rows: `WriteShardWithErrors`), and return the
    job's counters (summed over waves) with `shards_skipped`. On the DirectRunner, in waves of about
    `wave_rows` of the `rows` input rows (`waves`)."""
    pipeline = make_pipeline()
    groups = waves(num_shards, start.done, rows, wave_rows) if is_local(pipeline) else [None]
    stats: dict[str, int] = {}
    started = time.monotonic()
    for k, wave in enumerate(groups):
        if k:
            pipeline = make_pipeline()
        skip = start.done if wave is None else frozenset(range(num_shards)) - wave
        expected = None
        if len(groups) > 1:
            expected = round(rows * len(wave) / num_shards) if rows else None
            left = "" if not k else (f"; the job's ETA {(time.monotonic() - started) / k * (len(groups) - k):.0f}s "
                                     f"({k} waves took {time.monotonic() - started:.0f}s)")
            log.info("wave %d of %d: %d shards, about %s rows%s", k + 1, len(groups), len(wave), expected, left)
        _ = (read(pipeline) | label >> transform.skipping(skip, expected)
             | "WriteShards" >> beam.ParDo(WriteShardWithErrors(output, start.errors_dir, num_shards, schema)))
        for name, value in run_to_completion(pipeline, log).items():
            stats[name] = stats.get(name, 0) + value
    stats["shards_skipped"] = len(start.done)
    return stats


def shard_count(num_shards: int | None, rows: int | None, per_shard: int, flag: str) -> int:
    """`num_shards` when given, else enough shards of `per_shard` rows for `rows`."""
    if per_shard < 1:
        raise ValueError(f"{flag} must be >= 1, got {per_shard}")
    return num_shards or max(1, math.ceil((rows or 1) / per_shard))


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
            | "WriteShard" >> beam.ParDo(_WriteShardFn(self._output_dir, self._schema, self._num_shards,
                                                       self._sort_keys))
        )


LOCAL_RUNNERS = (None, "DirectRunner", "direct", "SwitchingDirectRunner")


def local_runner(options: PipelineOptions):
    """The runner Beam's DirectRunner ends up using for a batch pipeline like ours (the FnApiRunner,
    with the options in its provision info), without the DirectRunner's first attempt: a PrismRunner,
    which downloads its binary from github.com on every run, then falls back when that fails offline."""
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


def new_pipeline(pipeline_args: list[str], save_main_session: bool) -> beam.Pipeline:
    """A pipeline for `pipeline_args`; the DirectRunner (the default) runs on the FnApiRunner, offline."""
    options = PipelineOptions(pipeline_args)
    options.view_as(SetupOptions).save_main_session = save_main_session
    if options.view_as(StandardOptions).runner in LOCAL_RUNNERS:
        return beam.Pipeline(runner=local_runner(options), options=options)
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
