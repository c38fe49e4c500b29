"""What both inference jobs share: runtime options, a model handler base with progress, one model
copy per worker on its own device, and out-of-memory halving."""

from __future__ import annotations

import argparse
import copy
import logging
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from beam_jobs import failpoints
from beam_jobs.io import LOCAL_RUNNERS
from wofn import devices, models
from wofn.progress import Progress
from wofn.settings import DTYPES, Settings, setting_help

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Runtime:
    batch_size: int  # elements per inference call
    device: str = "cpu"  # "cuda" on a node of several GPUs: each worker process claims its own (wofn.devices)
    gpus: int = 0  # with device "cuda": GPUs the workers spread over (0 = every visible one)
    dtype: str = "float32"
    torch_threads: int = 0  # 0 = all cores; 1 per worker in multi_processing mode
    trust_remote_code: bool = False
    allow_pickle: bool = False  # load pickle (*.bin) checkpoints; off: safetensors only


def add_runtime_args(parser: argparse.ArgumentParser, batch_size: int, batch_help: str,
                     num_shards: int | None = 4, shards_help: str = "output Parquet shards") -> None:
    parser.add_argument("--batch-size", type=int, default=batch_size, help=batch_help)
    parser.add_argument("--num-shards", type=int, default=num_shards, help=shards_help)
    parser.add_argument("--device", default=Settings.device, help=setting_help("device"))
    parser.add_argument("--gpus", type=int, default=Settings.gpus, help=setting_help("gpus"))
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--torch-threads", type=int, default=Settings.torch_threads,
                        help="0 = all cores; use 1 per worker in multi_processing mode")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow model code from the model folder/hub (off by default)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="load pickle (*.bin) checkpoints, which can run code when loaded; only for files "
                             "you trust (off by default: safetensors only)")


def runtime_from_args(known: argparse.Namespace) -> Runtime:
    return Runtime(known.batch_size, known.device, known.gpus, known.dtype, known.torch_threads,
                   known.trust_remote_code, known.allow_pickle)


def worker_options(runtime: Runtime, pipeline_args: list[str], visible: int | None = None) -> list[str]:
    """`pipeline_args`, plus one DirectRunner worker process per GPU when `runtime` asks for "cuda" on a
    node of several GPUs and the options name neither another runner nor a worker count."""
    if runtime.device != "cuda" or any(a.startswith(("--direct_num_workers", "--direct_running_mode"))
                                       for a in pipeline_args):
        return pipeline_args
    if PipelineOptions(pipeline_args).view_as(StandardOptions).runner not in LOCAL_RUNNERS:
        return pipeline_args  # Dask, Dataflow, Flink, Spark: their workers claim GPUs the same way
    usable = devices.gpus_to_use(runtime.gpus, devices.visible_gpus() if visible is None else visible)
    if usable <= 1:
        return pipeline_args
    return [*pipeline_args, "--direct_running_mode=multi_processing", f"--direct_num_workers={usable}"]


class WofnModelHandler(ModelHandler):
    """Loads one wofn model per worker process in `load_model` (an object, never a tuple; Beam's
    RunInference shares it across the process's threads) on the worker's device (`wofn.devices.claim`:
    its own GPU on a node of several), logs progress."""

    label = "inference"
    unit = "elements"

    def __init__(self, model: str, runtime: Runtime, expected: int | None = None):
        super().__init__()
        self._model = model
        self._runtime = runtime
        self._expected = expected
        self._progress: Progress | None = None
        self.device: str = runtime.device  # the device this worker's model is on, once loaded

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    def expecting(self, expected: int | None) -> "WofnModelHandler":
        """A copy whose progress counts toward `expected` elements (a wave of a sharded job)."""
        other = copy.copy(self)
        other._expected = expected
        return other

    def _load(self) -> models.LoadedModel:
        raise NotImplementedError

    def load_model(self) -> models.LoadedModel:
        models.set_torch_threads(self._runtime.torch_threads)
        self.device = devices.claim(self._runtime.device, self._runtime.gpus)
        self._progress = Progress(self.label, self._expected, self.unit, logging.getLogger(type(self).__module__))
        return self._load()

    def _report(self, n: int, tokens: int = 0) -> None:
        if self._progress is not None:
            self._progress.update(n, tokens)

    def batch_elements_kwargs(self) -> dict:
        return {"min_batch_size": self._runtime.batch_size, "max_batch_size": self._runtime.batch_size}


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA (torch.OutOfMemoryError) or host out-of-memory error."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or \
        "out of memory" in str(exc).lower()


def _free_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_halving(items: Sequence[T], call: Callable[[list[T]], object], what: str = "items",
                ) -> tuple[list[tuple[list[T], object]], list[tuple[T, BaseException]]]:
    """`call(items)`, as one inference call where it fits. An out-of-memory error splits the items in
    two halves, each run the same way (counted in the Beam counter `oom_halvings`), down to one item;
    another error runs them one at a time. An item that fails alone is returned with its error.

    Returns (done: [(the items of one call, its result)], failed: [(item, error)])."""
    items = list(items)
    try:
        failpoints.out_of_memory(len(items))
        return [(items, call(items))], []
    except Exception as exc:  # noqa: BLE001 - split and retried; what still fails is returned with its error
        if len(items) == 1:
            return [], [(items[0], exc)]
        if is_out_of_memory(exc):
            _free_gpu_memory()
            beam.metrics.Metrics.counter("wofn", "oom_halvings").inc()
            half = (len(items) + 1) // 2
            log.warning("out of memory on %d %s; halving to %d and %d", len(items), what, half, len(items) - half)
            parts = [items[:half], items[half:]]
        else:
            log.warning("a call on %d %s failed; retrying them one at a time", len(items), what, exc_info=True)
            parts = [[item] for item in items]
    done: list = []
    failed: list = []
    for part in parts:
        d, f = run_halving(part, call, what)
        done += d
        failed += f
    return done, failed
