import asyncio

from redis.asyncio import Redis

from eventbot.appender import Appender
from eventbot.keys import Keys
from eventbot.localservices import LocalRedis
from events import EventCodec
from tests.factories import message


async def test_same_event_twice_is_stored_once(appender: Appender, redis: Redis) -> None:
    event = message(7, "hi")
    first = await appender.append(event)
    second = await appender.append(event)
    assert not first.duplicate and second.duplicate
    assert second.entry_id == first.entry_id
    assert await redis.xlen(first.stream) == 1


async def test_duplicates_inside_one_batch_are_stored_once(appender: Appender, redis: Redis) -> None:
    a, b = message(1, "a"), message(1, "b")
    results = await appender.append_many([a, b, a])
    assert [r.duplicate for r in results] == [False, False, True]
    entries = await redis.xrange(results[0].stream)
    assert [e[0].decode() for e in entries] == [results[0].entry_id, results[1].entry_id]


async def test_batch_keeps_order_per_partition_and_spreads_partitions(appender: Appender, redis: Redis, keys: Keys, codec: EventCodec) -> None:
    events = [message(chat, f"m{i}") for i in range(5) for chat in range(1, 9)]
    results = await appender.append_many(events)
    assert len({r.stream for r in results}) > 1
    for stream in {r.stream for r in results}:
        stored = [codec.decode(f[b"t"].decode(), int(f[b"v"]), f[b"d"]) for _, f in await redis.xrange(stream)]
        assert stored == [e for e, r in zip(events, results) if r.stream == stream]


async def test_still_idempotent_after_script_flush(appender: Appender, redis: Redis) -> None:
    event = message(3)
    first = await appender.append(event)
    await redis.script_flush()
    assert (await appender.append(event)).duplicate
    await redis.script_flush()
    again = await appender.append_many([event, message(3)])
    assert again[0].duplicate and not again[1].duplicate
    assert await redis.xlen(first.stream) == 2


async def test_still_idempotent_after_redis_restart(tmp_path, keys: Keys, codec: EventCodec) -> None:
    server = LocalRedis(tmp_path / "redis", appendfsync="always")
    url = server.start()
    try:
        client = Redis.from_url(url)
        appender = Appender(client, keys, codec)
        event = message(11)
        first = await appender.append(event)
        await client.aclose()
        server.stop()
        server.start()  # same dir, same port: reloads the AOF; the script cache is empty
        client = Redis.from_url(url)
        appender = Appender(client, keys, codec)
        second = await appender.append(event)
        assert second.duplicate and second.entry_id == first.entry_id
        assert await client.xlen(first.stream) == 1
        await client.aclose()
    finally:
        server.stop()


async def test_an_id_is_forgotten_after_the_window(redis: Redis, keys: Keys, codec: EventCodec) -> None:
    appender = Appender(redis, keys, codec, dedupe_window_s=1)
    event = message(5)
    await appender.append(event)
    assert (await appender.append(event)).duplicate
    await asyncio.sleep(1.2)
    assert not (await appender.append(event)).duplicate


async def test_tokens_streams_are_capped(redis: Redis, keys: Keys, codec: EventCodec) -> None:
    from eventbot.ids import new_event_id
    from events import TokenStreamed
    from tests.factories import now

    appender = Appender(redis, keys, codec, tokens_maxlen=100)
    rid = new_event_id()
    deltas = [
        TokenStreamed(event_id=new_event_id(), occurred_at=now(), partition_key="1", response_id=rid, index=i, delta="x")
        for i in range(1000)
    ]
    for i in range(0, 1000, 100):
        results = await appender.append_many(deltas[i : i + 100])
    assert await redis.xlen(results[0].stream) < 400  # approximate trimming keeps it near the cap
