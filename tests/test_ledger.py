import asyncio
import random

import pytest
from redis.asyncio import Redis

from eventbot.errors import LedgerConflict
from eventbot.keys import Keys
from eventbot.ledger import HeadConflict, Ledger, LedgerHead
from events import GENESIS_HASH, EventCodec, LedgerEvent
from tests.factories import charge, credit


async def read_ledger(redis: Redis, keys: Keys, codec: EventCodec, user_id: int) -> list[LedgerEvent]:
    stream = keys.stream("ledger", keys.partition_of(str(user_id)))
    events = [codec.decode(f[b"t"].decode(), int(f[b"v"]), f[b"d"]) for _, f in await redis.xrange(stream)]
    return [e for e in events if isinstance(e, LedgerEvent) and e.user_id == user_id]


async def test_200_concurrent_writers_on_10_users_lose_nothing(ledger: Ledger, redis: Redis, keys: Keys, codec: EventCodec) -> None:
    rng = random.Random(7)
    plan = [(rng.randrange(10), rng.choice([1, 1, -1]) * rng.randrange(1, 1_000)) for _ in range(200)]

    async def write(user: int, amount: int) -> None:
        event = credit(user, amount) if amount > 0 else charge(user, -amount)
        await ledger.transact(user, lambda head: [event])

    await asyncio.gather(*(write(u, a) for u, a in plan))
    for user in range(10):
        events = await read_ledger(redis, keys, codec, user)
        expected_total = sum(a for u, a in plan if u == user)
        assert [e.seq for e in events] == list(range(1, len(events) + 1)), "seq must be gapless"
        assert len(events) == sum(1 for u, _ in plan if u == user), "no update lost"
        prev, balance = GENESIS_HASH, 0
        for e in events:
            assert e.prev_hash == prev and e.hash == e.computed_hash()
            balance += e.effect()[0]
            assert e.balance_after == balance
            prev = e.hash
        assert events[-1].balance_after == expected_total
        head = await ledger.head(user)
        assert (head.seq, head.hash, head.balance) == (events[-1].seq, events[-1].hash, expected_total)


async def test_stale_expected_seq_raises_a_typed_conflict(ledger: Ledger) -> None:
    await ledger.append(1, [credit(1, 10)], LedgerHead())
    with pytest.raises(HeadConflict) as err:
        await ledger.append(1, [credit(1, 20)], LedgerHead())
    assert err.value.head.seq == 1 and err.value.head.balance == 10
    assert isinstance(err.value, LedgerConflict)


async def test_the_same_events_twice_are_appended_once(ledger: Ledger) -> None:
    events = [credit(2, 100)]
    first = await ledger.transact(2, lambda h: events)
    again = await ledger.transact(2, lambda h: events)
    assert again.duplicate and not first.duplicate
    assert (await ledger.head(2)).balance == 100


async def test_decide_may_refuse(ledger: Ledger) -> None:
    class Insufficient(Exception):
        pass

    def spend(head: LedgerHead) -> list[LedgerEvent]:
        if head.available < 50:
            raise Insufficient
        return [charge(3, 50)]

    with pytest.raises(Insufficient):
        await ledger.transact(3, spend)
    await ledger.transact(3, lambda h: [credit(3, 60)])
    await ledger.transact(3, spend)
    assert (await ledger.head(3)).balance == 10


async def test_head_survives_script_flush(ledger: Ledger, redis: Redis) -> None:
    await ledger.transact(4, lambda h: [credit(4, 5)])
    await redis.script_flush()
    await ledger.transact(4, lambda h: [credit(4, 6)])
    assert (await ledger.head(4)) .balance == 11


async def test_a_stale_cached_head_never_refuses_wrongly_nor_loses_updates(redis: Redis, keys: Keys, codec: EventCodec) -> None:
    here, elsewhere = Ledger(redis, keys, codec), Ledger(redis, keys, codec)  # two processes

    def spend(head: LedgerHead) -> list[LedgerEvent]:
        if head.available < 50:
            raise ValueError("insufficient")
        return [charge(9, 50)]

    await here.transact(9, lambda h: [credit(9, 10)])  # `here` now caches balance 10
    await elsewhere.transact(9, lambda h: [credit(9, 100)])
    await here.transact(9, spend)  # decided on a fresh head, not the cached 10
    await here.transact(9, lambda h: [credit(9, 1)])  # cached head is stale by one: conflict, then retry
    events = await read_ledger(redis, keys, codec, 9)
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert events[-1].balance_after == 61 == (await elsewhere.head(9)).balance
