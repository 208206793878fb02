"""Rebuilding projections from the whole log, beside the live ones, then switching.

Postgres: ``event_log`` plus the streams' unarchived tail is projected into a
shadow schema by the live projector's own code (:class:`PostgresProjection`).
To verify or swap, the live checkpoints are locked (the live projector waits at
its next batch), the shadow catches up to them, the two are compared, and the
schemas are renamed in that same transaction: no batch is lost or doubled.
The shadow starts empty, so it is filled as a bulk load: secondary indexes built
after it, asynchronous commits, big chunks, several partitions at once (and, for a
large archive, worker processes). The archive itself is copied server-side as it
was written (never decoded and encoded again) while the projections are rebuilt from it.

Redis: the log is folded into a new read-model generation by the live
builder's code; once it has caught up, one pointer write switches readers and
the builder to it, and the old generation is deleted.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from eventbot.keys import Keys
from eventbot.readmodels import ArchiveLog, EventLog, ReadModelBuilder
from eventbot.readmodels.keys import ReadModelKeys
from eventbot.readmodels.positions import ZERO, Position
from eventbot.tasks import cancel_and_wait
from events import EventCodec, default_codec
from services.projector.handlers import POSTGRES_GROUP
from services.projector.migrations import load, migrate
from services.projector.pg_projection import PostgresProjection
from services.projector.pg_tables import EVENT_LOG
from services.projector.progress import Progress
from services.projector.replay_worker import Job
from services.projector.verify import TableDiff, compare

ProgressFactory = Callable[[str, int], Progress]
T = TypeVar("T")


class PostgresReplayReport(msgspec.Struct, kw_only=True):
    shadow: str
    events: int
    seconds: float
    events_per_s: float
    verified: bool | None = None
    equal: bool | None = None
    differences: list[TableDiff] = []
    swapped: bool = False
    previous_schema: str | None = None


class RedisReplayReport(msgspec.Struct, kw_only=True):
    generation: int
    previous_generation: int
    events: int
    seconds: float
    events_per_s: float
    deleted_keys: int


def _streams(keys: Keys) -> list[str]:
    return keys.streams("conv") + keys.streams("ledger")


async def _total(pool: AsyncConnectionPool, redis: Redis, keys: Keys, schema: str) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute(sql.SQL("SELECT count(*) FROM {}.event_log").format(sql.Identifier(schema)))
        archived = (await cur.fetchone())[0]  # type: ignore[index]
    # The tail overlaps the archive; only an estimate for the ETA.
    return int(archived)


async def replay_postgres(
    pool: AsyncConnectionPool, redis: Redis, keys: Keys, codec: EventCodec, *, live: str, shadow: str,
    verify: bool = False, swap: bool = False, progress: ProgressFactory = Progress, processes: int | None = None,
) -> PostgresReplayReport:
    """Project the whole log into ``shadow``; then, on request, compare it with ``live`` and swap them.

    ``processes``: how many processes shape the archive (None: one per core, up to
    four, once the archive is large enough to repay starting them, and only with the
    default codec, which is what they decode with).

    ``pool`` must be the replay's own, never the live projector's: under the lock, live
    batches wait holding their connections, while the catch-up needs one connection
    beside the one that holds the lock.
    """
    if (verify or swap) and pool.max_size < 2:
        raise ValueError("replay_postgres needs a pool of at least 2 connections to verify or swap")
    started = time.monotonic()
    async with pool.connection() as conn:
        await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(shadow)))
        await conn.commit()
        await migrate(conn, shadow, load())
        # An empty shadow is a bulk load: its secondary indexes are built once, after it.
        deferred = await _drop_secondary_indexes(conn, shadow)
    log = ArchiveLog(pool, redis, keys, codec, live)
    projection = PostgresProjection(pool, codec, shadow, group=POSTGRES_GROUP, durable=False)
    total = await _total(pool, redis, keys, live)
    bar = progress(f"replay postgres -> {shadow}", total)
    streams = _streams(keys)
    # The archive goes over as it was written, server-side, while the projections are rebuilt from it.
    archive_bounds: asyncio.Future[dict[str, Position]] = asyncio.get_running_loop().create_future()
    archive = asyncio.create_task(_copy_archive(pool.conninfo, archive_bounds, live=live, shadow=shadow))
    try:
        await asyncio.wait({archive_bounds, archive}, return_when=asyncio.FIRST_COMPLETED)
        if not archive_bounds.done():
            await archive  # it failed before it had the bounds: raises why
        copied = archive_bounds.result()
        if processes is None:
            processes = min(os.cpu_count() or 1, 4) if total >= PROCESSES_FROM and _is_default(codec) else 1
        if processes > 1:
            # The archive, by worker processes (the same projection code); then the rest here.
            await _archive_in_processes(pool, bar, streams, copied, live=live, shadow=shadow, processes=processes)

        # Compared or swapped with the live schema, the shadow must not pass the live checkpoints:
        # under the lock it can only catch up to them, so a shadow ahead would differ (and not
        # be swapped). The live checkpoints only move on, so these bounds stay at or behind them.
        bounds = await _live_checkpoints(pool, live) if verify or swap else None

        async def project(stream: str) -> None:
            after = await projection.position(stream) if processes > 1 else None
            upto = None if bounds is None else bounds.get(stream, ZERO)  # ZERO: the live projector has none of it yet
            async for chunk in log.stream(stream, after, upto, chunk=BULK_CHUNK):
                await projection.apply(stream, chunk, archived_upto=copied.get(stream))
                bar.add(len(chunk))

        # Partitions are independent: while one waits on Postgres, another is decoded and shaped.
        await _each(streams, project, workers=max(1, min(BULK_WORKERS, pool.max_size - 1)))
        await archive
    finally:
        await cancel_and_wait(archive)
    await _each(deferred, lambda ddl: _run(pool, ddl), workers=max(1, min(2, pool.max_size)))
    report = PostgresReplayReport(shadow=shadow, events=bar.done, seconds=0.0, events_per_s=0.0)
    if verify or swap:
        await _finish(pool, log, projection, bar, report, copied, live=live, shadow=shadow, verify=verify, swap=swap)
    bar.finish()
    report.events = bar.done
    report.seconds = time.monotonic() - started
    report.events_per_s = report.events / report.seconds if report.seconds else 0.0
    return report


BULK_CHUNK = 10_000
BULK_WORKERS = 4
PROCESSES_FROM = 200_000  # archived events; below, starting processes costs more than it saves


def _is_default(codec: EventCodec) -> bool:
    reference = default_codec()
    return type(codec) is type(reference) and codec.types == reference.types and (
        getattr(codec, "_upcasters", None) == getattr(reference, "_upcasters", None))


async def _archive_in_processes(
    pool: AsyncConnectionPool, bar: Progress, streams: list[str], copied: dict[str, Position], *,
    live: str, shadow: str, processes: int,
) -> None:
    """Each process projects the archived events (up to ``copied``) of its share of the streams; progress from the checkpoints.

    Workers are ``python -m services.projector.replay_worker`` with their job on stdin
    (the connection string stays out of the process list), not multiprocessing: that
    would import the caller's main module again in each of them.
    """
    archived = [s for s in streams if s in copied]
    shares = [archived[i::processes] for i in range(processes) if archived[i::processes]]
    workers = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.projector.replay_worker",
        stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    ) for _ in shares]
    jobs = [asyncio.create_task(w.communicate(msgspec.json.encode(Job(
        conninfo=pool.conninfo, live=live, shadow=shadow, upto={s: (copied[s].ms, copied[s].seq) for s in share}))))
        for w, share in zip(workers, shares)]
    try:
        counted = 0
        pending: set[asyncio.Task[tuple[bytes, bytes]]] = set(jobs)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=0.5)
            async with pool.connection() as conn:
                cur = await conn.execute(sql.SQL("SELECT coalesce(sum(events), 0) FROM {}.checkpoints").format(
                    sql.Identifier(shadow)))
                done = int((await cur.fetchone())[0])  # type: ignore[index]
            bar.add(done - counted)
            counted = done
    finally:
        for w in workers:
            if w.returncode is None:
                w.kill()
                await w.wait()
    for w, job in zip(workers, jobs):
        if w.returncode != 0:
            _, err = job.result()
            last = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise ReplayFailed(f"replay worker exited with {w.returncode}: {last[0]}")


class ReplayFailed(Exception):
    """A worker process of the replay failed; the shadow is left as it is, the live schema untouched."""


async def _copy_archive(
    conninfo: str, bounds: asyncio.Future[dict[str, Position]], *, live: str, shadow: str,
) -> None:
    """``live``'s ``event_log`` into ``shadow``'s, as written; ``bounds`` gets each stream's last position in it.

    One snapshot (REPEATABLE READ): the live checkpoints read first bound exactly the
    rows copied, since a batch's archive rows commit with its checkpoint. Rows stay as
    they were archived (the version they were written at, types this build no longer
    decodes): an archive is history, and a replay rebuilds projections from it, never
    the archive itself. Server-side, nothing is decoded, encoded or parsed again.
    """
    cols = sql.SQL(", ").join(map(sql.Identifier, EVENT_LOG.columns))
    # A connection of its own: it is busy for the whole projection, whatever the pool's size.
    async with await AsyncConnection.connect(conninfo) as conn, conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        await conn.execute("SET LOCAL synchronous_commit = off")
        bounds.set_result(await _checkpoints(conn, live))
        await conn.execute(sql.SQL("INSERT INTO {sh}.event_log ({cols}) SELECT {cols} FROM {lv}.event_log").format(
            sh=sql.Identifier(shadow), lv=sql.Identifier(live), cols=cols))


async def _each(items: list[T], fn: Callable[[T], Awaitable[None]], *, workers: int) -> None:
    """``fn`` over ``items``, ``workers`` at a time; the first failure cancels the rest."""
    queue = list(reversed(items))

    async def worker() -> None:
        while queue:
            await fn(queue.pop())

    tasks = [asyncio.create_task(worker()) for _ in range(min(workers, len(items)))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()


async def _drop_secondary_indexes(conn: AsyncConnection, schema: str) -> list[str]:
    """Drop ``schema``'s indexes that back no constraint; returns the DDL that builds them again."""
    cur = await conn.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i"
        " JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)",
        (schema,),
    )
    found = await cur.fetchall()
    async with conn.transaction():
        for name, _ in found:
            await conn.execute(sql.SQL("DROP INDEX {}").format(sql.SQL(name)))
    return [ddl for _, ddl in found]


async def _run(pool: AsyncConnectionPool, ddl: str) -> None:
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
        await conn.execute(ddl)  # type: ignore[arg-type]  # read back from the catalog just above


async def _live_checkpoints(pool: AsyncConnectionPool, live: str) -> dict[str, Position]:
    async with pool.connection() as conn:
        return await _checkpoints(conn, live)


async def _checkpoints(conn: AsyncConnection, schema: str) -> dict[str, Position]:
    cur = await conn.execute(
        sql.SQL("SELECT stream, entry_ms, entry_seq FROM {}.checkpoints WHERE group_name = %s").format(sql.Identifier(schema)),
        (POSTGRES_GROUP,),
    )
    return {stream: Position(ms, seq) for stream, ms, seq in await cur.fetchall()}


async def _finish(
    pool: AsyncConnectionPool, log: ArchiveLog, projection: PostgresProjection, bar: Progress,
    report: PostgresReplayReport, copied: dict[str, Position], *, live: str, shadow: str, verify: bool, swap: bool,
) -> None:
    lv, sh = sql.Identifier(live), sql.Identifier(shadow)
    async with pool.connection() as conn, conn.transaction():
        # The live projector moves its checkpoint first in every batch: with the table
        # locked it waits there, before writing anything, until this transaction ends.
        await conn.execute(sql.SQL("LOCK TABLE {}.checkpoints IN EXCLUSIVE MODE").format(lv))
        for stream, target in (await _checkpoints(conn, live)).items():
            at = await projection.position(stream)
            if at < target:
                async for chunk in log.stream(stream, at, target, chunk=5000):
                    await projection.apply(stream, chunk, archived_upto=copied.get(stream))
                    bar.add(len(chunk))
        if verify:
            report.verified = True
            report.differences = await compare(conn, live, shadow)
            report.equal = all(d.equal for d in report.differences)
        if swap and (not verify or report.equal):
            previous = f"{live}_old_{time.strftime('%Y%m%d%H%M%S')}"
            # A live batch already waiting on the old table must fail its checkpoint
            # check and retry against the swapped-in schema, not write to the old one.
            await conn.execute(sql.SQL("UPDATE {}.checkpoints SET entry_ms = -1").format(lv))
            await conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(lv, sql.Identifier(previous)))
            await conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sh, lv))
            report.swapped = True
            report.previous_schema = previous


async def _catch_up(
    redis: Redis, keys: Keys, builder: ReadModelBuilder, source: EventLog, bar: Progress, *, ahead: int, behind: int,
) -> bool:
    """Apply to generation ``behind`` what generation ``ahead`` has and it lacks; True if it lacked any."""
    rm = ReadModelKeys(keys)
    lacked = False
    for stream in _streams(keys):
        p = int(stream.rsplit("{", 1)[1].rstrip("}"))
        at_ahead, at_behind = await redis.hget(rm.position(ahead, p), stream), await redis.hget(rm.position(behind, p), stream)
        ahead_pos = Position.parse(at_ahead.decode()) if at_ahead else None
        behind_pos = Position.parse(at_behind.decode()) if at_behind else None
        if ahead_pos is not None and (behind_pos is None or behind_pos < ahead_pos):
            lacked = True
            async for chunk in source.stream(stream, behind_pos, None, chunk=5000):
                await builder.apply(stream, chunk, gen=behind)
                bar.add(len(chunk))
    return lacked


async def replay_redis(
    redis: Redis, keys: Keys, builder: ReadModelBuilder, log: ArchiveLog | None = None, *,
    total: int = 0, progress: ProgressFactory = Progress, grace_s: float = 1.0,
) -> RedisReplayReport:
    started = time.monotonic()
    rm = ReadModelKeys(keys)
    live, nxt = await builder.live_generation()
    new = max(live, nxt or 0) + 1
    await redis.hset(rm.pointer, "next", new)
    source = log or builder.log
    bar = progress(f"replay redis -> generation {new}", total)
    for stream in _streams(keys):
        async for chunk in source.stream(stream, None, None, chunk=5000):
            await builder.apply(stream, chunk, gen=new)
            bar.add(len(chunk))
    # Catch up with what the live builder applied meanwhile, then switch.
    for _ in range(100):
        if not await _catch_up(redis, keys, builder, source, bar, ahead=live, behind=new):
            break
    pipe = redis.pipeline(transaction=True)
    pipe.hset(rm.pointer, "live", new)
    pipe.hdel(rm.pointer, "next")
    await pipe.execute()
    # Readers and the builder notice the pointer on their next call; give in-flight ones a moment.
    await asyncio.sleep(grace_s)
    # A batch the live builder began before the switch went to the old generation. The next
    # batch of its partition would fill the new one's gap from the log, but with no next batch
    # (the traffic paused) the new generation would go on missing it: copy it over now.
    await _catch_up(redis, keys, builder, source, bar, ahead=live, behind=new)
    bar.finish()
    deleted = 0
    async for key in redis.scan_iter(match=f"{rm.prefix(live)}*", count=1000):
        deleted += await redis.unlink(key)
    seconds = time.monotonic() - started
    return RedisReplayReport(
        generation=new, previous_generation=live, events=bar.done, seconds=seconds,
        events_per_s=bar.done / seconds if seconds else 0.0, deleted_keys=deleted,
    )
