"""Progress lines for long loops: count, rate and ETA, at most every `every_s` seconds."""

from __future__ import annotations

import logging
import time


class Progress:
    def __init__(self, label: str, total: int | None, unit: str, logger: logging.Logger, every_s: float = 15.0):
        self.label, self.total, self.unit, self.log, self.every_s = label, total, unit, logger, every_s
        self.done = 0
        self.extra = 0  # e.g. generated tokens
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, n: int, extra: int = 0) -> None:
        self.done += n
        self.extra += extra
        now = time.monotonic()
        if now - self._last >= self.every_s or (self.total is not None and self.done >= self.total):
            self._last = now
            self.log.info(self.line())

    def line(self) -> str:
        elapsed = max(1e-9, time.monotonic() - self.started)
        rate = self.done / elapsed
        text = f"{self.label}: {self.done}" + (f"/{self.total}" if self.total else "") + f" {self.unit}, {rate:.2f}/s"
        if self.extra:
            text += f", {self.extra / elapsed:.1f} tokens/s"
        if self.total and rate > 0:
            text += f", ETA {max(0.0, (self.total - self.done) / rate):.0f}s"
        return text
