"""One model copy per GPU: which device a worker process loads its model on.

A Beam job with `--device cuda` on a node of several GPUs runs one worker process per GPU (the
DirectRunner's multi_processing mode with one worker per GPU, or Dask workers on that node). Each
worker claims a GPU when it first loads a model: an exclusive lock on `cuda-<k>.lock` in a folder
of this node (`lock_dir()`), held until the process exits, so two workers never share a GPU while
one is free, and the sampling and scoring jobs of one node spread over the same GPUs. Inside a
process, Beam's RunInference already shares one loaded model across threads (`shared.Shared`),
so a process holds one copy.

    claim("cuda", gpus=0)    -> "cuda:<k>", the first free GPU of the visible ones (0 = all)
    claim("cuda:1")          -> "cuda:1"   (an explicit index, a CPU, a single GPU: as given)

On Dataflow, Flink or Spark each worker machine sees its own GPU(s), so the same rule gives each
worker process one of its own.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_DIR_ENV = "WOFN_GPU_LOCK_DIR"
_held: dict[tuple[str, int], tuple[str, int]] = {}  # (lock folder, pid) -> (device, open lock fd)


def visible_gpus() -> int:
    """CUDA devices this process sees (after CUDA_VISIBLE_DEVICES); 0 without CUDA."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def lock_dir() -> Path:
    """The node's GPU lock folder: $WOFN_GPU_LOCK_DIR, else <tmp>/wofn-gpu-locks."""
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "wofn-gpu-locks")


def gpus_to_use(gpus: int, visible: int) -> int:
    """How many of the `visible` GPUs the workers spread over: `gpus` (0 = all), at most `visible`."""
    if gpus < 0:
        raise ValueError(f"gpus must be >= 0 (0 = every visible GPU), got {gpus}")
    return visible if gpus == 0 else min(gpus, visible)


def claim(device: str, gpus: int = 0, visible: int | None = None, locks: Path | None = None) -> str:
    """The device this worker process loads its model on. `device` "cuda" (no index) on a node
    with several usable GPUs: the first GPU no other live process holds (its lock is held until
    this process exits; a second claim in the same process returns the same GPU). When every
    GPU is held (more workers than GPUs), the worker shares one, with a warning. Any other
    `device` is returned as given."""
    if device != "cuda":
        return device
    usable = gpus_to_use(gpus, visible_gpus() if visible is None else visible)
    if usable <= 1:
        return "cuda:0" if usable == 1 else device
    folder = Path(locks or lock_dir())
    key = (str(folder.resolve()), os.getpid())
    if key in _held:
        return _held[key][0]
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(usable):
        fd = os.open(folder / f"cuda-{k}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _held[key] = (f"cuda:{k}", fd)
        log.info("worker %d: one model copy on cuda:%d (of %d GPUs)", os.getpid(), k, usable)
        return f"cuda:{k}"
    shared = f"cuda:{os.getpid() % usable}"
    log.warning("worker %d: all %d GPUs are held by other workers; sharing %s (run at most one worker per GPU)",
                os.getpid(), usable, shared)
    return shared
