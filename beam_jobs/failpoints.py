"""Named crash points for the tests that kill a job at a chosen moment (never set in normal runs).

`WOFN_FAILPOINT=<name>:<k>` makes the process kill itself with SIGKILL the k-th time (1-based)
it reaches point <name>. Points:
  before_sample   a shard's prompts are about to be sampled
  before_rename   a shard file's temporary copy is written, not yet renamed to its final name
  after_rename    a shard file is complete under its final name
(The sampling job writes each shard's errors file, then its candidates file.)
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_seen: Counter = Counter()


def hit(name: str) -> None:
    wanted = os.environ.get("WOFN_FAILPOINT")
    if not wanted:
        return
    _seen[name] += 1
    if wanted == f"{name}:{_seen[name]}":
        os.kill(os.getpid(), signal.SIGKILL)
