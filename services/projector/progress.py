"""A progress line on stderr: done/total, events per second, ETA."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, label: str, total: int, *, stream: TextIO | None = None, interval_s: float = 0.2) -> None:
        self.label = label
        self.total = max(total, 0)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s = interval_s
        self.started = time.monotonic()
        self._shown = 0.0

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def add(self, n: int) -> None:
        self.done += n
        if self.done > self.total:
            self.total = self.done  # the tail grew while we replayed
        now = time.monotonic()
        if now - self._shown >= self.interval_s:
            self._shown = now
            self._draw()

    def finish(self) -> None:
        self._draw()
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self) -> None:
        rate = self.rate
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = f"{left:5.0f}s" if left == left else "    ?"
        self.stream.write(
            f"\r{self.label}: {self.done:>10,}/{self.total:,} events {pct:5.1f}%  {rate:>9,.0f} ev/s  ETA {eta}"
        )
        self.stream.flush()
