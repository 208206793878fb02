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
urgent work is in flight. Both kinds are bounded, so that neither starves the other:

- urgent work is urgent for ``max_urgent_s`` at most at a time: an answer from its
  start until the model accepted the request, and again from its first delta until
  its first text is shown. Waiting for a real model's first token takes seconds:
  that wait is not urgent, and must not hold the other answers back;
- background work is parked ``max_park_s`` at most; then it runs, one slice per turn,
  for a quarter of that before urgent work can park it anew. (As long again cost the
  gate most of its effect under bursts, in ``bench.agent``.)

With nothing urgent, background slices run back to back, one loop turn apart.
"""

from __future__ import annotations

import asyncio
from collections import deque


async def next_turn() -> None:
    """The pace of work with no gate to go through: one turn of the loop."""
    await asyncio.sleep(0)


class Urgent:
    """One piece of urgent work: holds background work back until it ends or expires.

    ``lapse()`` ends it for now (its work waits on something slow, a model's first
    token); ``renew()`` makes it urgent again for another ``max_urgent_s`` (its work
    resumed); ``end()`` is final. All three are idempotent.
    """

    def __init__(self, gate: BackgroundGate) -> None:
        self._gate = gate
        self._expiry: asyncio.TimerHandle | None = None
        self._ended = False
        self.renew()

    def renew(self) -> None:
        if self._ended:
            return
        if self._expiry is None:
            self._gate._urgent_began()
        else:
            self._expiry.cancel()
        self._expiry = asyncio.get_running_loop().call_later(self._gate.max_urgent_s, self.lapse)

    def end(self) -> None:
        self._ended = True
        self.lapse()

    def lapse(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
            self._gate._urgent_ended()


class BackgroundGate:
    def __init__(self, max_park_s: float = 0.02, max_urgent_s: float = 0.03) -> None:
        self.max_park_s = max_park_s
        self.max_urgent_s = max_urgent_s
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._urgent = 0
        self._release_scheduled = False
        self._parked_since: float | None = None
        self._park_timer: asyncio.TimerHandle | None = None
        # After a full park background work runs a quarter as long regardless: it gets a
        # fifth of the loop's turns at least, however much urgent work keeps coming.
        self._unparkable_until = 0.0

    def urgent(self) -> Urgent:
        """Urgent work begins: background work waits until it ends (or expires, or waited too long)."""
        return Urgent(self)

    async def turn(self) -> None:
        """Return in a loop turn of this caller's own, behind the background work already waiting."""
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(slot)
        self._schedule_release()
        # Cancelled while waiting: the slot is done, so a release skips it. Cancelled
        # after its release: that turn's slot goes unused, which costs one turn, no more.
        await slot

    def _urgent_began(self) -> None:
        self._urgent += 1

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
        loop = asyncio.get_running_loop()
        if self._urgent and loop.time() >= self._unparkable_until:
            if self._parked_since is None:
                self._parked_since = loop.time()
            self._park_timer = loop.call_at(self._parked_since + self.max_park_s, self._parked_long_enough)
            return
        self._release_next()

    def _parked_long_enough(self) -> None:
        self._park_timer = None
        self._parked_since = None
        self._unparkable_until = asyncio.get_running_loop().time() + self.max_park_s / 4
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
