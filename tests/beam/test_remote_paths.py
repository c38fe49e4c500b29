"""The Beam jobs read and write through Beam's FileSystems only, so object-store paths (gs://,
s3://, ...) work: shown with an in-memory filesystem registered under the scheme `memfs://`, for
which no local path exists at all."""

from __future__ import annotations

import io
import threading
import time

import pyarrow.parquet as pq
from apache_beam.io.filesystem import BeamIOError, FileMetadata, FileSystem

from beam_jobs import sample_candidates, score_candidates
from wofn import data, schemas
from wofn.paths import DATA_DIR

_FILES: dict[str, bytes] = {}
_LOCK = threading.Lock()


class _Writer(io.BytesIO):
    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def close(self):
        if not self.closed:
            with _LOCK:
                _FILES[self._path] = self.getvalue()
        super().close()


class MemoryFileSystem(FileSystem):
    """A flat object store in this process (DirectRunner in-memory mode runs in it)."""

    @classmethod
    def scheme(cls):
        return "memfs"

    def join(self, basepath, *paths):
        return "/".join([basepath.rstrip("/"), *(p.strip("/") for p in paths)])

    def split(self, path):
        head, _, tail = path.rpartition("/")
        return head, tail

    def mkdirs(self, path):  # object stores have no folders
        pass

    def has_dirs(self):
        return False

    def _list(self, dir_or_prefix):
        with _LOCK:
            items = [(k, len(v)) for k, v in _FILES.items() if k.startswith(dir_or_prefix)]
        for key, size in items:
            yield FileMetadata(key, size, time.time())

    def create(self, path, mime_type="application/octet-stream", compression_type="auto"):
        return _Writer(path)

    def open(self, path, mime_type="application/octet-stream", compression_type="auto"):
        with _LOCK:
            if path not in _FILES:
                raise BeamIOError(f"no such object {path}")
            return io.BytesIO(_FILES[path])

    def copy(self, source_file_names, destination_file_names):
        with _LOCK:
            for src, dst in zip(source_file_names, destination_file_names):
                _FILES[dst] = _FILES[src]

    def rename(self, source_file_names, destination_file_names):
        with _LOCK:
            for src, dst in zip(source_file_names, destination_file_names):
                _FILES[dst] = _FILES.pop(src)

    def exists(self, path):
        with _LOCK:
            return path in _FILES or any(k.startswith(path.rstrip("/") + "/") for k in _FILES)

    def size(self, path):
        return len(_FILES[path])

    def last_updated(self, path):
        return time.time()

    def checksum(self, path):
        return str(hash(_FILES[path]))

    def metadata(self, path):
        return FileMetadata(path, len(_FILES[path]), time.time())

    def delete(self, paths):
        with _LOCK:
            for path in paths:
                _FILES.pop(path, None)


def _table(prefix: str):
    names = sorted(k for k in _FILES if k.startswith(prefix) and k.endswith(".parquet"))
    assert names, f"nothing written under {prefix}"
    return names, [row for name in names for row in pq.read_table(io.BytesIO(_FILES[name])).to_pylist()]


def test_jobs_read_and_write_object_store_paths():
    buffer = io.BytesIO()
    pq.write_table(data.load_prompts(DATA_DIR / "prompts_unlabeled.parquet", limit=3), buffer)
    _FILES["memfs://bucket/in/prompts.parquet"] = buffer.getvalue()

    stats = sample_candidates.run([
        "--prompts", "memfs://bucket/in/prompts.parquet", "--output", "memfs://bucket/candidates",
        "--policy", "tiny-llama", "--n", "2", "--max-new-tokens", "4", "--num-shards", "2",
    ], save_main_session=False)
    names, candidates = _table("memfs://bucket/candidates/")
    assert names == ["memfs://bucket/candidates/part-00000-of-00002.parquet",
                     "memfs://bucket/candidates/part-00001-of-00002.parquet"]
    assert len(candidates) == 6 and stats["candidates"] == 6
    assert set(candidates[0]) == set(schemas.CANDIDATES.names)
    assert not [k for k in _FILES if k.endswith(".tmp")], "temporary shard names left behind"

    score_candidates.run([
        "--candidates", "memfs://bucket/candidates", "--output", "memfs://bucket/scores",
        "--reward-model", "tiny-bert", "--max-length", "64", "--num-shards", "1",
    ], save_main_session=False)
    _, scores = _table("memfs://bucket/scores/")
    assert sorted((s["prompt_id"], s["candidate_idx"]) for s in scores) == \
        sorted((c["prompt_id"], c["candidate_idx"]) for c in candidates)
