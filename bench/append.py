"""Append throughput: eventbot's appender next to raw redis-py XADD on the same server.

    .venv/bin/python -m bench.append [--events N] [--json FILE]

Raw XADD writes the same three fields with the same payload bytes, so the
ratio is the price of idempotency (the Lua check-and-XADD) and of encoding.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from bench.report import Figure, emit
from bench.servers import redis_url
from eventbot.appender import Appender
from eventbot.connections import redis_client
from eventbot.ids import new_event_id
from eventbot.keys import Keys
from eventbot.ledger import Ledger
from events import BalanceCredited, Event, default_codec, user_key
from tests.factories import message, now

BATCH = 100


async def rate(n: int, work: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    await work()
    return n / (time.perf_counter() - started)


async def main(events_n: int, json_path: str | None) -> None:
    redis = redis_client(redis_url())
    keys = Keys(f"bench-{uuid.uuid4().hex[:8]}", partitions=8)
    codec = default_codec()
    appender = Appender(redis, keys, codec)
    ledger = Ledger(redis, keys, codec)
    rng = random.Random(1)
    texts = ["".join(rng.choice("abcdefghij ") for _ in range(rng.randrange(20, 200))) for _ in range(64)]

    def batch_of(n: int) -> list[Event]:
        return [message(rng.randrange(1, 10_000), rng.choice(texts)) for _ in range(n)]

    single_events, batched_events = batch_of(events_n), batch_of(events_n)
    raw_fields = [
        (keys.stream_for(e), {"t": e.type_name(), "v": e.version, "d": codec.encode(e)}) for e in batch_of(events_n)
    ]
    await redis.ping()
    await appender.append(batch_of(1)[0])  # load the script, warm the pool

    async def raw_single() -> None:
        for stream, fields in raw_fields:
            await redis.xadd(stream, fields)

    async def raw_pipelined() -> None:
        for i in range(0, len(raw_fields), BATCH):
            pipe = redis.pipeline(transaction=False)
            for stream, fields in raw_fields[i : i + BATCH]:
                pipe.xadd(stream, fields)
            await pipe.execute()

    async def ours_single() -> None:
        for e in single_events:
            await appender.append(e)

    async def ours_batched() -> None:
        for i in range(0, len(batched_events), BATCH):
            await appender.append_many(batched_events[i : i + BATCH])

    async def ledger_appends() -> None:
        users = list(range(1, 201))

        async def writer(user: int, count: int) -> None:
            for _ in range(count):
                e = BalanceCredited(
                    event_id=new_event_id(), occurred_at=now(), partition_key=user_key(user),
                    user_id=user, amount=1_000, source="promo", reference="bench",
                )
                await ledger.transact(user, lambda head: [e])

        per_user = max(1, events_n // len(users))
        await asyncio.gather(*(writer(u, per_user) for u in users))

    try:
        # Interleave raw and ours, best of three, so drift on the machine hits both alike.
        best: dict[str, float] = {}
        for _ in range(3):
            for name, fn in [
                ("raw_single", raw_single), ("ours_single", ours_single),
                ("raw_pipelined", raw_pipelined), ("ours_batched", ours_batched),
            ]:
                await _clear(redis, keys)
                best[name] = max(best.get(name, 0.0), await rate(events_n, fn))
        await _clear(redis, keys)
        ledger_rate = await rate((events_n // 200) * 200, ledger_appends)
        emit(
            [
                Figure("append.single_events_per_s", best["ours_single"], "events/s",
                       limit=best["raw_single"], target=0.7, target_kind="min"),
                Figure(f"append.batched{BATCH}_events_per_s", best["ours_batched"], "events/s",
                       limit=best["raw_pipelined"], target=0.8, target_kind="min"),
                Figure("append.ledger_events_per_s", ledger_rate, "events/s", target=5_000, target_kind="min"),
            ],
            json_path,
        )
    finally:
        await _clear(redis, keys)
        await redis.aclose()


async def _clear(redis: Redis, keys: Keys) -> None:
    async for key in redis.scan_iter(match=f"{keys.prefix()}*", count=1000):
        await redis.unlink(key)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    asyncio.run(main(args.events, args.json_path))
