"""Many concurrent handlers, one Redis round trip: calls made in the same loop tick go out together.

Polling feeds a batch of updates concurrently (in order within a chat) and the
webhook serves concurrent requests. Each handler still awaits its own append and
sees its own result, so "confirm only after append" holds per update; but the
appends (and gate checks) of all handlers that reached that point in the same
event-loop tick are sent as one pipelined call. This is what makes ingest's
throughput a multiple of one-round-trip-per-update.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, Protocol, TypeVar

from eventbot.appender import Appended, Appender
from events import Event

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """``submit(items)`` resolves with ``flush(all items submitted this tick)``'s share for ``items``."""

    def __init__(self, flush: Callable[[list[T]], Awaitable[list[R]]]) -> None:
        self._flush = flush
        self._waiting: list[tuple[Sequence[T], asyncio.Future[list[R]]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, items: Sequence[T]) -> list[R]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[R]] = loop.create_future()
        if not self._waiting:
            # call_soon runs after every task step already queued: the rest of this tick's callers.
            loop.call_soon(self._start)
        self._waiting.append((items, future))
        return await future

    def _start(self) -> None:
        batch, self._waiting = self._waiting, []
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)  # held so it isn't collected mid-flight
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[Sequence[T], asyncio.Future[list[R]]]]) -> None:
        flat = [item for items, _ in batch for item in items]
        try:
            results = await self._flush(flat)
        except BaseException as e:  # every caller gets the failure (StoreUnavailable, cancellation)
            for _, future in batch:
                if not future.done():
                    future.set_exception(e if isinstance(e, Exception) else asyncio.CancelledError())
            if not isinstance(e, Exception):
                raise
            return
        start = 0
        for items, future in batch:
            if not future.done():
                future.set_result(results[start : start + len(items)])
            start += len(items)


class Appends(Protocol):
    """What handlers need of an appender."""

    async def append(self, event: Event) -> Appended: ...

    async def append_many(self, events: Sequence[Event]) -> list[Appended]: ...


class CoalescingAppender:
    """An :class:`Appender` whose concurrent calls share one pipelined append.

    Order within a partition is the order of the calls, and a chat's updates are
    handled one after another, so a conversation's events keep their order.
    """

    def __init__(self, appender: Appender) -> None:
        self.appender = appender
        self._coalescer: Coalescer[Event, Appended] = Coalescer(appender.append_many)

    async def append(self, event: Event) -> Appended:
        return (await self._coalescer.submit([event]))[0]

    async def append_many(self, events: Sequence[Event]) -> list[Appended]:
        return await self._coalescer.submit(events)
