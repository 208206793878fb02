"""The Postgres projector: exactly-once effects across crashes, outages and poison events."""

from __future__ import annotations

import asyncio
import contextlib

from psycopg import sql
from redis.asyncio import Redis

from eventbot.appender import Appender
from eventbot.consumer import Batch
from eventbot.keys import Keys
from events import EventCodec, MessageReceived
from services.projector.handlers import PostgresHandler
from services.projector.pg_projection import PostgresProjection
from services.projector.synthetic import Traffic
from tests.factories import message
from tests.test_projector_helpers import LIVE, append, clean_pass, consumer, drained, dump, eventually, migrated_pool, running


async def test_projects_every_table_from_a_mixed_log(redis: Redis, keys: Keys, codec: EventCodec, appender: Appender, database_url: str) -> None:
    traffic = Traffic(seed=1, users=8)
    events = traffic.events(600)
    await append(appender, events)
    pool = await migrated_pool(database_url)
    try:
        async with running(consumer(redis, keys, codec, PostgresHandler(PostgresProjection(pool, codec, LIVE)), "postgres", "p1")):
            await eventually(lambda: drained(redis, keys, "postgres"))
        tables = await dump(pool, LIVE)
    finally:
        await pool.close()
    assert len(tables["event_log"]) == len(events)
    users = {row[0]: row for row in tables["users"]}
    for user, head in traffic.heads.items():
        balance, held, seq = users[user][11], users[user][12], users[user][13]
        assert (balance, held, seq) == (head.balance, head.held, head.seq)
    ops = [e for e in events if e.type_name().startswith("balance.")]
    assert len(tables["balance_operations"]) == len(ops)
    received = [e for e in events if isinstance(e, MessageReceived)]
    completed = [e for e in events if e.type_name() == "response.completed"]
    assert sum(1 for m in tables["messages"] if m[1] == "user") == len(received)
    assert sum(1 for m in tables["messages"] if m[1] == "assistant") >= len(completed)
    assert {r[0] for r in tables["responses"]} == {e.response_id for e in events if e.type_name() == "response.started"}


async def _die_after(pool, codec, stage: str):  # type: ignore[no-untyped-def]
    """A handler that commits (or not) and then hangs forever: the process 'dies' there."""
    projection = PostgresProjection(pool, codec, LIVE)
    handled = asyncio.Event()

    async def handler(batch: Batch) -> None:
        if stage == "after_commit":
            await projection.apply(batch.stream, [(d.entry_id, d.event) for d in batch.deliveries])
        handled.set()
        await asyncio.Event().wait()

    return handler, handled


async def test_dies_after_commit_before_ack_then_restart_equals_one_clean_pass(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender, database_url: str
) -> None:
    await append(appender, Traffic(seed=2, users=6).events(400))
    pool = await migrated_pool(database_url)
    # The doomed projector has connections of its own, closed when it "dies" as a killed
    # process's would be: a cancelled transaction left open in a shared pool would hold
    # its row locks and stall the heir, which no real crash does.
    doomed_pool = await migrated_pool(database_url + ("&" if "?" in database_url else "?") + "application_name=doomed")
    try:
        handler, handled = await _die_after(doomed_pool, codec, "after_commit")
        doomed = asyncio.create_task(consumer(redis, keys, codec, handler, "postgres", "doomed", batch_size=37).run())
        await asyncio.wait_for(handled.wait(), 20)
        await asyncio.sleep(0.3)  # let several partitions commit their first batch
        doomed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await doomed
        async with pool.connection() as conn:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'doomed' AND pid <> pg_backend_pid()")
        async with pool.connection() as conn:
            committed = (await (await conn.execute("SELECT count(*) FROM eventbot.event_log")).fetchone())[0]
        assert committed > 0, "the doomed projector committed before dying"
        async with running(consumer(redis, keys, codec, PostgresHandler(PostgresProjection(pool, codec, LIVE)), "postgres", "heir")):
            await eventually(lambda: drained(redis, keys, "postgres"))
        await clean_pass(pool, redis, keys, codec, "clean")
        assert await dump(pool, LIVE) == await dump(pool, "clean")
    finally:
        await doomed_pool.close(timeout=1)
        await pool.close()


async def test_dies_before_commit_then_restart_equals_one_clean_pass(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender, database_url: str
) -> None:
    await append(appender, Traffic(seed=3, users=6).events(400))
    pool = await migrated_pool(database_url)
    try:
        # Hold the archive table so the doomed projector's transactions stop midway (checkpoint
        # moved, rows staged, nothing committed), then kill it there.
        async with pool.connection() as blocker:
            await blocker.execute("LOCK TABLE eventbot.event_log IN EXCLUSIVE MODE")
            doomed_pool = await migrated_pool(database_url)
            doomed = asyncio.create_task(consumer(
                redis, keys, codec, PostgresHandler(PostgresProjection(doomed_pool, codec, LIVE)), "postgres", "doomed").run())

            async def stuck_in_transaction() -> bool:
                cur = await blocker.execute(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'eventbot.event_log'::regclass")
                return (await cur.fetchone())[0] > 0

            await eventually(stuck_in_transaction)
            doomed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await doomed
            await doomed_pool.close()  # the connections go away: the server rolls back
            await blocker.rollback()
        async with pool.connection() as conn:
            assert (await (await conn.execute("SELECT count(*) FROM eventbot.event_log")).fetchone())[0] == 0
        async with running(consumer(redis, keys, codec, PostgresHandler(PostgresProjection(pool, codec, LIVE)), "postgres", "heir")):
            await eventually(lambda: drained(redis, keys, "postgres"))
        await clean_pass(pool, redis, keys, codec, "clean")
        assert await dump(pool, LIVE) == await dump(pool, "clean")
    finally:
        await pool.close()


async def test_a_poison_event_is_dead_lettered_and_the_projection_moves_on(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender, database_url: str
) -> None:
    # Postgres text cannot hold NUL: this event can never be projected, however often retried.
    first = message(5, "before")
    poison = message(5, "bad\x00byte")
    after = [message(5, f"fine {i}") for i in range(3)]
    await append(appender, [first, poison, *after])
    pool = await migrated_pool(database_url)
    try:
        async with running(consumer(redis, keys, codec, PostgresHandler(PostgresProjection(pool, codec, LIVE)),
                                    "postgres", "p1", max_deliveries=2)):
            await eventually(lambda: drained(redis, keys, "postgres"))
        dlq = keys.dead_letters("postgres", "conv", keys.partition_of(poison.partition_key))
        dead = await redis.xrange(dlq)
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT text FROM eventbot.messages ORDER BY message_id")
            texts = [r[0] for r in await cur.fetchall()]
    finally:
        await pool.close()
    assert len(dead) == 1 and b"entry_id" in dead[0][1]
    assert texts == ["before", "fine 0", "fine 1", "fine 2"]


async def test_postgres_connections_dropping_mid_run_are_retried_not_dead_lettered(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender, database_url: str
) -> None:
    await append(appender, Traffic(seed=4, users=6).events(600))
    pool = await migrated_pool(database_url)
    admin = await migrated_pool(database_url, max_size=1)
    try:
        async with running(consumer(redis, keys, codec, PostgresHandler(PostgresProjection(pool, codec, LIVE)),
                                    "postgres", "p1", batch_size=16, max_deliveries=2)):
            for _ in range(5):  # an outage, five times: every projector connection is killed
                async with admin.connection() as conn:
                    await conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()")
                await asyncio.sleep(0.15)
            await eventually(lambda: drained(redis, keys, "postgres"))
        for p in range(keys.partitions):
            for family in ("conv", "ledger"):
                assert await redis.xlen(keys.dead_letters("postgres", family, p)) == 0
        # The checks use connections of their own: the projector's pool may still hold one
        # the last outage killed while it sat idle (the projector retries; a check should not).
        checker = await migrated_pool(database_url)
        try:
            await clean_pass(checker, redis, keys, codec, "clean")
            assert await dump(checker, LIVE) == await dump(checker, "clean")
        finally:
            await checker.close()
    finally:
        await admin.close()
        await pool.close()


async def test_migrate_is_idempotent_and_recorded(database_url: str) -> None:
    pool = await migrated_pool(database_url)
    try:
        async with pool.connection() as conn:
            from services.projector.migrations import load, migrate

            assert await migrate(conn, LIVE, load()) == []
            cur = await conn.execute(sql.SQL("SELECT version, name FROM eventbot.schema_migrations ORDER BY version"))
            assert [tuple(r) for r in await cur.fetchall()] == [(m.version, m.name) for m in load()]
    finally:
        await pool.close()
