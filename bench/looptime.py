"""Where a slow answer's time went: was the agent's event loop waiting, or working?

``LoopTurns`` records every turn of a process's event loop: when its poll began
(``perf_counter``, comparable across processes), the thread's CPU time then, and
how long the poll waited. ``spent(t0, t1)`` then splits a window of wall time
into time the loop waited for I/O and CPU time the thread used. A window with no
wait and as much CPU as wall time was spent on the agent's own work (the
answer's and everybody else's on that loop); a window with no wait and little
CPU was spent waiting for a core.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from typing import Any

Turn = tuple[float, float, float]  # (poll began, thread CPU then, seconds the poll waited)


class LoopTurns:
    def __init__(self) -> None:
        self.turns: list[Turn] = []

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        selector: Any = loop._selector  # type: ignore[attr-defined]  # the selector loop's poll, wrapped
        select = selector.select
        turns = self.turns

        def timed_select(timeout: float | None = None) -> Any:
            began, cpu = time.perf_counter(), time.thread_time()
            events = select(timeout)
            turns.append((began, cpu, time.perf_counter() - began))
            return events

        selector.select = timed_select


def spent(turns: list[Turn], t0: float, t1: float) -> tuple[float, float]:
    """(seconds the loop waited in its poll within [t0, t1], CPU seconds its thread used between
    the first and the last turn that began within it)."""
    starts = [t[0] for t in turns]
    first = max(0, bisect.bisect_left(starts, t0) - 1)
    waited = 0.0
    i = first
    while i < len(turns) and turns[i][0] < t1:
        began, _, wait = turns[i]
        waited += max(0.0, min(began + wait, t1) - max(began, t0))
        i += 1
    inside = [t for t in turns[first:i] if t0 <= t[0] <= t1]
    cpu = inside[-1][1] - inside[0][1] if len(inside) > 1 else 0.0
    return waited, cpu
