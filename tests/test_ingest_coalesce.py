"""Concurrent handlers share round trips; each still gets its own result or the shared failure."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from eventbot.appender import Appended, Appender
from eventbot.errors import StoreUnavailable
from eventbot.ids import new_event_id
from events import Event, UserSeen, chat_key
from services.ingest.coalesce import CoalescingAppender
from services.ingest.feeding import PerConversation
from services.ingest.gates import Gates
from tests.ingest_env import give_credit


def seen(chat_id: int) -> UserSeen:
    return UserSeen(event_id=new_event_id(), occurred_at=datetime.now(UTC), partition_key=chat_key(chat_id),
                    chat_id=chat_id, user_id=chat_id)


class CountingAppender:
    def __init__(self, inner: Appender, fail: bool = False) -> None:
        self.inner, self.fail, self.calls = inner, fail, []

    async def append_many(self, events: list[Event]) -> list[Appended]:
        self.calls.append(len(events))
        if self.fail:
            raise StoreUnavailable("append failed: ConnectionError")
        return await self.inner.append_many(events)


async def test_concurrent_appends_go_out_as_one_call_in_order(appender: Appender, redis, keys) -> None:
    counting = CountingAppender(appender)
    shared = CoalescingAppender(counting)  # type: ignore[arg-type]
    batches = [[seen(7), seen(7)], [seen(8)], [seen(7)]]
    results = await asyncio.gather(*(shared.append_many(b) for b in batches))
    assert counting.calls == [4]
    assert [len(r) for r in results] == [2, 1, 1]
    # Each caller got its own entries; chat 7's three events are in call order in their stream.
    stream = keys.stream("conv", keys.partition_of(chat_key(7)))
    ids = [entry_id.decode() for entry_id, _ in await redis.xrange(stream)]
    assert ids == [results[0][0].entry_id, results[0][1].entry_id, results[2][0].entry_id]
    again = await shared.append(batches[1][0])  # alone, it still works (and is a duplicate)
    assert again.duplicate and counting.calls == [4, 1]


async def test_a_failed_shared_append_fails_every_caller(appender: Appender) -> None:
    shared = CoalescingAppender(CountingAppender(appender, fail=True))  # type: ignore[arg-type]
    results = await asyncio.gather(*(shared.append(seen(i)) for i in range(3)), return_exceptions=True)
    assert [type(r) for r in results] == [StoreUnavailable] * 3


async def test_gate_checks_survive_a_script_flush(redis, keys, ledger) -> None:
    gates = Gates(redis, keys, per_minute=10)
    await give_credit(ledger, 5, 100)
    now = datetime.now(UTC)
    await redis.script_flush()
    alone = await gates.admit(5, 1, now)  # one call: redis-py's script reloads itself
    await redis.script_flush()
    together = await asyncio.gather(*(gates.admit(user, 2, now) for user in (5, 6)))  # pipelined: ours does
    assert alone.disposition == "answer"
    assert [v.disposition for v in together] == ["answer", "no_balance"]


@pytest.mark.parametrize("per_minute", [1, 3])
async def test_concurrent_checks_of_one_user_count_each_update(redis, keys, ledger, per_minute: int) -> None:
    gates = Gates(redis, keys, per_minute=per_minute)
    await give_credit(ledger, 9, 100)
    now = datetime.now(UTC)
    verdicts = await asyncio.gather(*(gates.admit(9, update_id, now) for update_id in range(6)))
    assert sorted(v.disposition for v in verdicts).count("answer") == per_minute
    assert sum(v.tell for v in verdicts) == 1


async def test_per_conversation_keeps_order_within_a_chat_and_lets_others_run() -> None:
    in_order = PerConversation()
    log: list[str] = []
    release = asyncio.Event()

    async def handle(key: str, name: str, wait: bool) -> None:
        async with in_order.hold(key):
            log.append(f"start {name}")
            if wait:
                await release.wait()
            log.append(f"end {name}")

    first = asyncio.create_task(handle("chat:1", "a1", wait=True))
    await asyncio.sleep(0)
    second = asyncio.create_task(handle("chat:1", "a2", wait=False))
    other = asyncio.create_task(handle("chat:2", "b1", wait=False))
    await other  # another chat is not held up
    assert log == ["start a1", "start b1", "end b1"]
    release.set()
    await asyncio.gather(first, second)
    assert log[3:] == ["end a1", "start a2", "end a2"]
    assert in_order._locks == {}  # no lock kept once nobody waits
