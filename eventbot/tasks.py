"""Waiting that cancellation cannot break: on a task being stopped, and on a condition with a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def cancel_and_wait(task: asyncio.Future[object]) -> BaseException | None:
    """Cancel ``task``, wait until it has finished, and return what it raised (None if cancelled or fine).

    ``with suppress(CancelledError): await task`` looks the same but is not: if the
    caller is itself cancelled while it waits (a /stop, a shutdown, a test's time
    budget running out), that cancellation is suppressed too and the caller carries
    on as if nothing happened. ``asyncio.wait`` lets the caller's own cancellation
    through and leaves the task's outcome to be read.
    """
    task.cancel()
    await asyncio.wait({task})
    return None if task.cancelled() else task.exception()


async def wait_until(condition: asyncio.Condition, predicate: Callable[[], bool], timeout: float | None) -> None:
    """``condition.wait_for(predicate)``, raising TimeoutError after ``timeout`` seconds.

    Not ``asyncio.wait_for(condition.wait_for(...))``: that waits in a task of its own,
    which releases and re-acquires a lock that this task acquired. When both are
    cancelled at once (a shutdown cancelling every task), the lock can end up
    released twice ("Lock is not acquired") or held by nobody who will release it, and
    every other waiter loops forever trying to take it back. Here one task does both.
    """
    async with asyncio.timeout(timeout), condition:
        await condition.wait_for(predicate)
