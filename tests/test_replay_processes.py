"""A replay whose archive is shaped by worker processes equals the live projection, as the in-process one does."""

from __future__ import annotations

import random

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
