"""Background work gives way to urgent work on the agent's event loop.

The agent's loop serves two kinds of work. Some has a user waiting on it right now:
a message on its way to the model (the hot path) and an answer's first text. The
rest can wait a few milliseconds unnoticed: parsing the rest of a streamed answer,
token events, later drafts, the final message, settling. asyncio runs every callback
that is ready in a turn before it polls for I/O again, so when several answers'
streams arrived together (each a few ms of parsing), a newly delivered message
waited for all of them at every one of its awaits.

Background work awaits :meth:`BackgroundGate.turn` before each slice (about half a
millisecond of work). The gate lets one waiter through per loop turn, and none while
urgent work is in flight (an answer from its start until its first text is shown),
for at most ``max_park_s`` at a time, so background work is delayed, never starved.
With nothing urgent, background slices run back to back, one loop turn apart.
"""

from __future__ import annotations

import asyncio
from collections import deque


async def next_turn() -> None:
    """The pace of work with no gate to go through: one turn of the loop."""
    await asyncio.sleep(0)


class Urgent:
    """One piece of urgent work in flight; ``end()`` it (idempotent) when it is done."""

    def __init__(self, gate: BackgroundGate) -> None:
        self._gate: BackgroundGate | None = gate

    def end(self) -> None:
        if self._gate is not None:
            gate, self._gate = self._gate, None
            gate._urgent_ended()


class BackgroundGate:
    def __init__(self, max_park_s: float = 0.02) -> None:
        self.max_park_s = max_park_s
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._urgent = 0
        self._release_scheduled = False
        self._parked_since: float | None = None
        self._park_timer: asyncio.TimerHandle | None = None

    def urgent(self) -> Urgent:
        """Hold background work back until the returned :class:`Urgent` ends (or ``max_park_s`` passes)."""
        self._urgent += 1
        return Urgent(self)

    async def turn(self) -> None:
        """Return in a loop turn of this caller's own, behind the background work already waiting."""
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(slot)
        self._schedule_release()
        # Cancelled while waiting: the slot is done, so a release skips it. Cancelled
        # after its release: that turn's slot goes unused, which costs one turn, no more.
        await slot

    def _urgent_ended(self) -> None:
        self._urgent -= 1
        if self._urgent == 0:
            self._parked_since = None
            if self._park_timer is not None:
                self._park_timer.cancel()
                self._park_timer = None
            self._schedule_release()

    def _schedule_release(self) -> None:
        if self._waiting and not self._release_scheduled and self._park_timer is None:
            self._release_scheduled = True
            asyncio.get_running_loop().call_soon(self._release_one)

    def _release_one(self) -> None:
        self._release_scheduled = False
        if self._urgent:
            loop = asyncio.get_running_loop()
            if self._parked_since is None:
                self._parked_since = loop.time()
            self._park_timer = loop.call_at(self._parked_since + self.max_park_s, self._parked_long_enough)
            return
        self._release_next()

    def _parked_long_enough(self) -> None:
        # Urgent work has held background work back for max_park_s: one slice goes now,
        # then the next waits again, so a steady stream of messages cannot starve answers.
        self._park_timer = None
        self._parked_since = None
        self._release_next()

    def _release_next(self) -> None:
        # The released waiter resumes in the next loop turn; the next release is called
        # soon after this one, so it runs in that turn too, after the waiter.
        while self._waiting:
            slot = self._waiting.popleft()
            if not slot.done():
                slot.set_result(None)
                break
        self._schedule_release()
