"""Trimming: never an unarchived or unacked entry; tokens by length and age."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from eventbot.appender import Appender
from eventbot.keys import Keys
from events import EventCodec
from services.projector.pg_projection import PostgresProjection
from services.projector.trimmer import Trimmer
from tests.factories import message
from tests.test_projector_helpers import LIVE, append, migrated_pool, stream_entries


async def test_trims_only_below_archived_and_acked_by_every_group(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender, database_url: str
) -> None:
    await append(appender, [message(1, f"m{i}") for i in range(40)])
    stream = keys.stream("conv", keys.partition_of("1"))
    entries = await stream_entries(redis, codec, stream)
    ids = [eid for eid, _ in entries]
    pool = await migrated_pool(database_url)
    try:
        trimmer = Trimmer(redis, keys, pool, LIVE)
        # Nothing archived yet: nothing may go, whatever the groups did.
        for group in ("postgres", "readmodel", "agent"):
            await redis.xgroup_create(stream, group, id="0")
        assert sum(t.removed for t in await trimmer.trim()) == 0

        # Archive the first 30; the read-model group acked 25; the agent has read 20 and still holds 12..20.
        await PostgresProjection(pool, codec, LIVE).apply(stream, entries[:30])
        await redis.xreadgroup("postgres", "p", {stream: ">"}, count=30)
        await redis.xack(stream, "postgres", *ids[:30])
        await redis.xreadgroup("readmodel", "r", {stream: ">"}, count=25)
        await redis.xack(stream, "readmodel", *ids[:25])
        await redis.xreadgroup("agent", "a", {stream: ">"}, count=20)
        await redis.xack(stream, "agent", *ids[:12])
        trimmed = {t.stream: t for t in await trimmer.trim()}
        left = [e[0].decode() for e in await redis.xrange(stream)]
        assert trimmed[stream].removed == 12 and left == ids[12:], "the agent's pending entry 12 bounds the trim"

        await redis.xack(stream, "agent", *ids[12:20])
        await trimmer.trim()
        assert [e[0].decode() for e in await redis.xrange(stream)] == ids[20:], "undelivered to the agent: kept"

        await redis.xreadgroup("agent", "a", {stream: ">"})
        await redis.xack(stream, "agent", *ids)
        await trimmer.trim()
        assert [e[0].decode() for e in await redis.xrange(stream)] == ids[25:], "unacked by the read models: kept"

        await redis.xreadgroup("readmodel", "r", {stream: ">"})
        await redis.xack(stream, "readmodel", *ids)
        await trimmer.trim()
        assert [e[0].decode() for e in await redis.xrange(stream)] == ids[30:], "unarchived: kept"
    finally:
        await pool.close()


async def test_a_stream_without_a_required_group_is_not_trimmed(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender, database_url: str
) -> None:
    await append(appender, [message(2, f"m{i}") for i in range(10)])
    stream = keys.stream("conv", keys.partition_of("2"))
    entries = await stream_entries(redis, codec, stream)
    pool = await migrated_pool(database_url)
    try:
        await PostgresProjection(pool, codec, LIVE).apply(stream, entries)
        await redis.xgroup_create(stream, "postgres", id="$")  # archived and acked; no read-model group yet
        await Trimmer(redis, keys, pool, LIVE).trim()
        assert await redis.xlen(stream) == 10
    finally:
        await pool.close()


async def test_tokens_are_trimmed_by_length_and_age(redis: Redis, keys: Keys, database_url: str) -> None:
    stream = keys.stream("tokens", 0)
    old = int((time.time() - 7200) * 1000)
    for i in range(50):  # two hours old
        await redis.xadd(stream, {"t": "token.streamed", "v": 1, "d": b""}, id=f"{old}-{i}")
    for _ in range(300):
        await redis.xadd(stream, {"t": "token.streamed", "v": 1, "d": b"x"})
    pool = await migrated_pool(database_url)
    try:
        await Trimmer(redis, keys, pool, LIVE, tokens_maxlen=10_000, tokens_max_age_s=3600).trim()
        first = (await redis.xrange(stream, count=1))[0][0].decode()
        assert int(first.split("-")[0]) > old and await redis.xlen(stream) == 300
        await Trimmer(redis, keys, pool, LIVE, tokens_maxlen=100, tokens_max_age_s=3600).trim()
        assert 100 <= await redis.xlen(stream) < 300
    finally:
        await pool.close()


async def test_conv_waits_for_the_agent_group_and_recent_entries_stay(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender, database_url: str
) -> None:
    await append(appender, [message(3, f"m{i}") for i in range(6)])
    stream = keys.stream("conv", keys.partition_of("3"))
    entries = await stream_entries(redis, codec, stream)
    pool = await migrated_pool(database_url)
    try:
        await PostgresProjection(pool, codec, LIVE).apply(stream, entries)
        for group in ("postgres", "readmodel"):
            await redis.xgroup_create(stream, group, id="$")  # archived and acked by both projections
        await Trimmer(redis, keys, pool, LIVE).trim()
        assert await redis.xlen(stream) == 6, "no agent has read these messages yet: they must stay"

        await redis.xgroup_create(stream, "agent", id="$")
        await Trimmer(redis, keys, pool, LIVE, keep_recent_s=600).trim()
        assert await redis.xlen(stream) == 6, "younger than the margin: kept for a takeover to read back"
        await Trimmer(redis, keys, pool, LIVE).trim()
        assert await redis.xlen(stream) == 0
    finally:
        await pool.close()
