"""A replay whose archive is shaped by worker processes equals the live projection, as the in-process one does."""

from __future__ import annotations

import random

import pytest

from redis.asyncio import Redis

from eventbot.appender import Appender
from eventbot.keys import Keys
from events import EventCodec
from services.projector.pg_projection import PostgresProjection
from services.projector.replay import replay_postgres
from services.projector.synthetic import Traffic
from tests.test_projector_contract import Quiet, _live
from tests.test_projector_helpers import LIVE, append, dump, migrated_pool, stream_entries


async def test_replay_in_processes_equals_the_live_projection(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender, database_url: str
) -> None:
    await append(appender, Traffic(seed=21, users=6).events(300))
    pool = await migrated_pool(database_url)
    try:
        streams = keys.streams("conv") + keys.streams("ledger")
        projection = PostgresProjection(pool, codec, LIVE)
        await _live(projection.apply, redis, codec, streams, random.Random(3))
        report = await replay_postgres(pool, redis, keys, codec, live=LIVE, shadow="shadow", verify=True,
                                       progress=Quiet, processes=2)
        assert report.equal, [d for d in report.differences if not d.equal]
        assert await dump(pool, LIVE) == await dump(pool, "shadow")
        assert report.events == sum([len(await stream_entries(redis, codec, s)) for s in streams])
    finally:
        await pool.close()


@pytest.mark.parametrize("processes", [1, 2])
async def test_a_replay_keeps_the_archive_as_it_was_written(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender, database_url: str, processes: int
) -> None:
    # History the running build reads differently: an entry archived at an older version
    # (upcast on reading) and one of a type this build no longer knows. A replay rebuilds
    # the projections from them, but the shadow's archive is what was written, row for row.
    await append(appender, Traffic(seed=22, users=6).events(300))
    pool = await migrated_pool(database_url)
    try:
        streams = keys.streams("conv") + keys.streams("ledger")
        await _live(PostgresProjection(pool, codec, LIVE).apply, redis, codec, streams, random.Random(4))
        async with pool.connection() as conn:
            older = await conn.execute(
                "UPDATE eventbot.event_log SET version = 1, payload = (payload - 'usage')"
                " || jsonb_build_object('input_tokens', payload->'usage'->'input_tokens',"
                "                       'output_tokens', payload->'usage'->'output_tokens')"
                " WHERE event_id = (SELECT event_id FROM eventbot.event_log WHERE type = 'response.completed'"
                "   AND (payload->'usage'->>'cache_read_tokens')::int = 0 AND (payload->'usage'->>'cache_write_tokens')::int = 0"
                "   ORDER BY entry_ms LIMIT 1)")
            assert older.rowcount == 1, "the traffic holds an answer without cache tokens"
            await conn.execute(
                "INSERT INTO eventbot.event_log SELECT gen_random_uuid(), stream, '1-0', 1, 0, family, 'retired.type', 3,"
                " partition_key, user_id, occurred_at, '{\"gone\": true}' FROM eventbot.event_log LIMIT 1")
        report = await replay_postgres(pool, redis, keys, codec, live=LIVE, shadow="shadow", verify=True,
                                       progress=Quiet, processes=processes)
        assert report.equal, [d for d in report.differences if not d.equal]
        live, shadow = await dump(pool, LIVE), await dump(pool, "shadow")
        assert live["event_log"] == shadow["event_log"] and live == shadow
        async with pool.connection() as conn:
            kept = await (await conn.execute(
                "SELECT type, version FROM shadow.event_log WHERE (type = 'response.completed' AND version = 1) OR type = 'retired.type'")).fetchall()
        assert sorted(kept) == [("response.completed", 1), ("retired.type", 3)]
    finally:
        await pool.close()
