"""Waiting on a condition with a deadline survives a shutdown that cancels every task, twice."""

from __future__ import annotations

import asyncio

import pytest

from eventbot.tasks import wait_until


async def test_waiters_cancelled_twice_all_finish_and_leave_the_lock_free() -> None:
    # asyncio.wait_for(condition.wait_for(...)) waits in a task of its own: cancelled twice
    # (a test's budget, then the loop's shutdown), the caller left while its inner task
    # still re-acquired the lock, which was then held forever, and every other waiter
    # looped trying to take it back: the run hung in the event loop's shutdown.
    for moment in range(12):  # cancelled at each point of the waiters' first steps
        condition = asyncio.Condition()

        async def notifier() -> None:
            while True:
                async with condition:
                    condition.notify_all()
                await asyncio.sleep(0)

        ticking = asyncio.create_task(notifier())
        waiters = [asyncio.create_task(wait_until(condition, lambda: False, 100)) for _ in range(20)]
        for _ in range(moment):
            await asyncio.sleep(0)
        ticking.cancel()
        for again in (False, True):
            for w in waiters:
                w.cancel()
            if not again:
                await asyncio.sleep(0)
        done, pending = await asyncio.wait([*waiters, ticking], timeout=2)
        assert not pending, f"cancelled at step {moment}: {len(pending)} waiters never finished"
        assert all(w.cancelled() for w in waiters), [w.exception() for w in waiters if not w.cancelled()]
        assert not condition.locked()


async def test_a_predicate_that_holds_returns_and_one_that_does_not_times_out() -> None:
    condition = asyncio.Condition()
    ready = False

    async def later() -> None:
        nonlocal ready
        await asyncio.sleep(0.01)
        async with condition:
            ready = True
            condition.notify_all()

    setter = asyncio.create_task(later())
    await wait_until(condition, lambda: ready, 2)
    await setter
    with pytest.raises(TimeoutError):
        await wait_until(condition, lambda: False, 0.05)
    assert not condition.locked()
