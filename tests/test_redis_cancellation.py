"""A task cancelled while its Redis command is in flight ends cancelled: the client must not swallow it.

eventbot cancels tasks in the middle of Redis calls all the time: /stop cancels
an answer, SIGTERM cancels the services, a time budget cancels a waiting caller.
redis-py 8.0 and 8.1 sometimes finish the command and return normally instead,
leaving the task running as if nobody had asked (an answer that outlives its
/stop, a shutdown that never ends). This pins the client we depend on.
"""

from __future__ import annotations

import asyncio

from eventbot.appender import Appender
from eventbot.redisclient import RedisClient
from events import EventCodec
from tests import factories

ATTEMPTS = 200


async def _cancel_mid_command(command) -> list[str]:  # type: ignore[no-untyped-def]
    """Start a task looping on ``command``, cancel it at some moment; what went wrong, attempt by attempt."""
    swallowed: list[str] = []
    for attempt in range(ATTEMPTS):
        cancel_sent = False

        async def loop() -> None:
            while True:
                await command()
                if cancel_sent:
                    swallowed.append(f"attempt {attempt}: the command returned after cancel()")
                    return
                await asyncio.sleep(0)

        task = asyncio.create_task(loop())
        await asyncio.sleep(0.002 * (attempt % 5 + 1))
        cancel_sent = True
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done, f"attempt {attempt}: the task did not end within 5 s of cancel()"
        if not task.cancelled():
            swallowed.append(f"attempt {attempt}: ended with {task.exception()!r}, not cancelled")
        if len(swallowed) >= 3:
            break
    return swallowed


async def test_a_command_cancelled_in_flight_raises_cancelled_error(redis: RedisClient, namespace: str) -> None:
    assert await _cancel_mid_command(lambda: redis.set(f"{namespace}:cancel-probe", "x")) == []


async def test_an_append_cancelled_in_flight_raises_cancelled_error(
    redis: RedisClient, appender: Appender, codec: EventCodec,
) -> None:
    assert await _cancel_mid_command(lambda: appender.append(factories.message(chat_id=1, text="probe"))) == []
