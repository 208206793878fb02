"""Shared by the projection tests: a migrated Postgres, consumers of the two groups, draining, dumps."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry
from psycopg import sql
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from eventbot.appender import Appender
from eventbot.consumer import BatchHandler, Consumer, ConsumerConfig
from eventbot.keys import Keys
from eventbot.metrics import ConsumerMetrics
from tests.waiting import eventually  # noqa: F401 - re-exported to other test modules
from events import Event, EventCodec
from services.projector.migrations import load, migrate
from services.projector.pg_pool import open_pool
from services.projector.pg_projection import PostgresProjection
from services.projector.pg_tables import ALL_TABLES

LIVE = "eventbot"
FAST = dict(claim_idle_ms=600, block_ms=50, backoff_base_s=0.01, backoff_cap_s=0.05, stats_interval_s=0.2)


async def migrated_pool(database_url: str, *schemas: str, max_size: int = 6) -> AsyncConnectionPool:
    pool = await open_pool(database_url, max_size=max_size, name="test")
    async with pool.connection() as conn:
        for schema in schemas or (LIVE,):
            await migrate(conn, schema, load())
    return pool


def consumer(redis: Redis, keys: Keys, codec: EventCodec, handler: BatchHandler, group: str, name: str, **config: Any) -> Consumer:
    return Consumer(
        redis, keys, codec, handler, keys.streams("conv") + keys.streams("ledger"),
        ConsumerConfig(group=group, consumer=name, **{**FAST, **config}), ConsumerMetrics(CollectorRegistry()),
    )


@contextlib.asynccontextmanager
async def running(*consumers: Consumer) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(c.run()) for c in consumers]
    try:
        yield
    finally:
        for c in consumers:
            c.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)


async def drained(redis: Redis, keys: Keys, group: str) -> bool:
    """Every entry of every conv/ledger stream delivered to ``group`` and acked."""
    for stream in keys.streams("conv") + keys.streams("ledger"):
        if not await redis.exists(stream):
            continue
        try:
            groups = {g["name"].decode(): g for g in await redis.xinfo_groups(stream)}
        except ResponseError:
            return False
        g = groups.get(group)
        if g is None or int(g["pending"]) or (g.get("lag") or 0):
            return False
        last = await redis.xrevrange(stream, count=1)
        if last and last[0][0] != g["last-delivered-id"]:
            return False
    return True


async def append(appender: Appender, events: list[Event], chunk: int = 200) -> None:
    for i in range(0, len(events), chunk):
        await appender.append_many(events[i:i + chunk])


async def stream_entries(redis: Redis, codec: EventCodec, stream: str) -> list[tuple[str, Event]]:
    out = []
    for entry_id, fields in await redis.xrange(stream):
        out.append((entry_id.decode(), codec.decode(fields[b"t"].decode(), int(fields[b"v"]), fields[b"d"])))
    return out


async def clean_pass(pool: AsyncConnectionPool, redis: Redis, keys: Keys, codec: EventCodec, schema: str) -> None:
    """What one uninterrupted pass produces: every stream projected in one go into ``schema``."""
    async with pool.connection() as conn:
        await migrate(conn, schema, load())
    projection = PostgresProjection(pool, codec, schema)
    for stream in keys.streams("conv") + keys.streams("ledger"):
        entries = await stream_entries(redis, codec, stream)
        if entries:
            await projection.apply(stream, entries)


async def dump(pool: AsyncConnectionPool, schema: str) -> dict[str, list[tuple]]:
    out = {}
    async with pool.connection() as conn:
        for table in ALL_TABLES:
            cur = await conn.execute(sql.SQL("SELECT * FROM {}.{} ORDER BY {}").format(
                sql.Identifier(schema), sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, table.key))))
            out[table.name] = await cur.fetchall()
        cur = await conn.execute(sql.SQL(
            "SELECT group_name, stream, entry_id, events FROM {}.checkpoints ORDER BY 1, 2").format(sql.Identifier(schema)))
        out["checkpoints"] = await cur.fetchall()
    return out
