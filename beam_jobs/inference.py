"""What both inference jobs share: runtime options and a model handler base with progress."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from apache_beam.ml.inference.base import ModelHandler

from wofn import models
from wofn.progress import Progress
from wofn.settings import DTYPES, Settings, setting_help


@dataclass(frozen=True)
class Runtime:
    batch_size: int  # elements per inference call
    device: str = "cpu"
    dtype: str = "float32"
    torch_threads: int = 0  # 0 = all cores; 1 per worker in multi_processing mode
    trust_remote_code: bool = False
    allow_pickle: bool = False  # load pickle (*.bin) checkpoints; off: safetensors only


def add_runtime_args(parser: argparse.ArgumentParser, batch_size: int, batch_help: str,
                     num_shards: int | None = 4, shards_help: str = "output Parquet shards") -> None:
    parser.add_argument("--batch-size", type=int, default=batch_size, help=batch_help)
    parser.add_argument("--num-shards", type=int, default=num_shards, help=shards_help)
    parser.add_argument("--device", default=Settings.device, help=setting_help("device"))
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--torch-threads", type=int, default=Settings.torch_threads,
                        help="0 = all cores; use 1 per worker in multi_processing mode")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow model code from the model folder/hub (off by default)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="load pickle (*.bin) checkpoints, which can run code when loaded; only for files "
                             "you trust (off by default: safetensors only)")


def runtime_from_args(known: argparse.Namespace) -> Runtime:
    return Runtime(known.batch_size, known.device, known.dtype, known.torch_threads, known.trust_remote_code,
                   known.allow_pickle)


class WofnModelHandler(ModelHandler):
    """Loads one wofn model per worker in `load_model` (an object, never a tuple), logs progress."""

    label = "inference"
    unit = "elements"

    def __init__(self, model: str, runtime: Runtime, expected: int | None = None):
        super().__init__()
        self._model = model
        self._runtime = runtime
        self._expected = expected
        self._progress: Progress | None = None

    def _load(self) -> models.LoadedModel:
        raise NotImplementedError

    def load_model(self) -> models.LoadedModel:
        models.set_torch_threads(self._runtime.torch_threads)
        self._progress = Progress(self.label, self._expected, self.unit, logging.getLogger(type(self).__module__))
        return self._load()

    def _report(self, n: int, tokens: int = 0) -> None:
        if self._progress is not None:
            self._progress.update(n, tokens)

    def batch_elements_kwargs(self) -> dict:
        return {"min_batch_size": self._runtime.batch_size, "max_batch_size": self._runtime.batch_size}
