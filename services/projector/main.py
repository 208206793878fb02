"""The projector process: the ``readmodel`` and ``postgres`` groups, and the trimmer.

Both groups read the ``conv`` and ``ledger`` streams (token deltas are not
projected: the response events carry the final text and usage). Clients are
built here once and closed on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import CollectorRegistry

from eventbot.connections import keys_for, redis_client
from eventbot.consumer import Consumer, ConsumerConfig
from eventbot.metrics import ConsumerMetrics
from eventbot.readmodels import ArchiveLog, ReadModelBuilder, limits_for
from eventbot.settings import Settings, SettingsError
from events import default_codec
from services.projector.handlers import POSTGRES_GROUP, READMODEL_GROUP, PostgresHandler, ReadModelHandler
from services.projector.migrations import load, migrate
from services.projector.pg_pool import open_pool
from services.projector.pg_projection import PostgresProjection
from services.projector.trimmer import Trimmer

log = logging.getLogger("eventbot.projector")


async def run_projector(
    settings: Settings, *, registry: CollectorRegistry | None = None, stop: asyncio.Event | None = None,
    trim_interval_s: float = 60.0, consumer_name: str | None = None,
) -> None:
    """Project until ``stop`` is set, then finish the batches in hand and return."""
    for name, value in (("REDIS_URL", settings.redis_url), ("DATABASE_URL", settings.database_url)):
        if not value:
            raise SettingsError(f"{name} is required by the projector")
    registry = registry if registry is not None else CollectorRegistry()
    stop = stop or asyncio.Event()
    codec = default_codec()
    keys = keys_for(settings)
    redis = redis_client(settings.redis_url)  # type: ignore[arg-type]
    pool = await open_pool(settings.database_url)  # type: ignore[arg-type]
    try:
        async with pool.connection() as conn:
            await migrate(conn, settings.pg_schema, load())
        builder = ReadModelBuilder(redis, keys, limits_for(settings), ArchiveLog(pool, redis, keys, codec, settings.pg_schema))
        projection = PostgresProjection(pool, codec, settings.pg_schema, group=POSTGRES_GROUP)
        metrics = ConsumerMetrics(registry)
        streams = keys.streams("conv") + keys.streams("ledger")
        consumers = [
            Consumer(redis, keys, codec, handler, streams, ConsumerConfig(
                group=group, batch_size=batch_size, block_ms=settings.block_ms,
                claim_idle_ms=settings.claim_idle_ms, max_deliveries=settings.max_deliveries,
                **({"consumer": consumer_name} if consumer_name else {}),
            ), metrics)
            for group, handler, batch_size in (
                (READMODEL_GROUP, ReadModelHandler(builder), settings.batch_size),
                (POSTGRES_GROUP, PostgresHandler(projection), settings.projector_batch_size),
            )
        ]
        trimmer = Trimmer(redis, keys, pool, settings.pg_schema, tokens_maxlen=settings.tokens_maxlen,
                          keep_recent_s=settings.trim_keep_recent_s,
                          tokens_max_age_s=settings.tokens_max_age_s)
        tasks = [asyncio.create_task(c.run()) for c in consumers]
        tasks.append(asyncio.create_task(_trim_every(trimmer, trim_interval_s, stop)))
        await stop.wait()
        for c in consumers:
            c.stop()
        await asyncio.gather(*tasks)
    finally:
        await pool.close()
        await redis.aclose()


async def _trim_every(trimmer: Trimmer, interval_s: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
        if stop.is_set():
            return
        try:
            done = await trimmer.trim()
            removed = sum(t.removed for t in done)
            if removed:
                log.info("trimmed %d archived and acked entries", removed)
        except Exception as e:  # noqa: BLE001 - trimming is housekeeping; the next round tries again
            log.warning("trim skipped: %s", type(e).__name__)
