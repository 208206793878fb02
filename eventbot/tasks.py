"""Stopping a task without swallowing a cancellation meant for the one that stops it."""

from __future__ import annotations

import asyncio


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
