"""Named crash points for the tests that kill a job at a chosen moment (never set in normal runs).

`WOFN_FAILPOINT=<name>:<k>` makes the process kill itself with SIGKILL the k-th time (1-based)
it reaches point <name>. Points:
  before_sample   a shard's prompts are about to be sampled
  before_rename   a shard file's temporary copy is written, not yet renamed to its final name
  after_rename    a shard file is complete under its final name
(The sampling job writes each shard's errors file, then its candidates file.)

`WOFN_FAIL_OOM_ABOVE=<k>` (`out_of_memory`) makes inference calls on more than k items fail as
out of memory. `WOFN_FAIL_DISK_FULL=<k>` (`disk_full`) makes the k-th shard file write of the
process fail half-way with ENOSPC, as a full disk does. `WOFN_PAUSE=<name>:<seconds>` (`pause`)
sleeps at point <name>, to hold a race window open: `prompts_before_publish` (the prompts asset has
read the other batches' prompt ids and not yet published its own).
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections import Counter

_seen: Counter = Counter()


def hit(name: str) -> None:
    wanted = os.environ.get("WOFN_FAILPOINT")
    if not wanted:
        return
    _seen[name] += 1
    if wanted == f"{name}:{_seen[name]}":
        os.kill(os.getpid(), signal.SIGKILL)


OOM_ENV = "WOFN_FAIL_OOM_ABOVE"


def out_of_memory(items: int) -> None:
    """`WOFN_FAIL_OOM_ABOVE=<k>`: an inference call on more than k items raises the error a GPU out of
    memory raises (k = 0: every call), so the tests can watch batches halve down to one item."""
    limit = os.environ.get(OOM_ENV)
    if limit is not None and items > int(limit):
        raise MemoryError(f"CUDA out of memory (injected by {OOM_ENV}={limit} for a call on {items} items)")


DISK_FULL_ENV = "WOFN_FAIL_DISK_FULL"


def disk_full(path: str) -> None:
    """`WOFN_FAIL_DISK_FULL=<k>`: the k-th call in this process raises ENOSPC for `path`."""
    wanted = os.environ.get(DISK_FULL_ENV)
    if not wanted:
        return
    _seen["disk_full"] += 1
    if _seen["disk_full"] == int(wanted):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


PAUSE_ENV = "WOFN_PAUSE"


def pause(name: str) -> None:
    """`WOFN_PAUSE=<name>:<seconds>`: sleep that long at point <name>."""
    wanted = os.environ.get(PAUSE_ENV, "")
    point, _, seconds = wanted.partition(":")
    if point == name:
        time.sleep(float(seconds))
