"""Projection throughput: the Postgres projector, the read-model builder and a 1M-event replay.

    .venv/bin/python -m bench.project [--events 200000] [--replay-events 1000000] [--peer-events 20000] [--rounds 3] [--json FILE]

Each figure stands next to a raw limit measured in the same run on the same rows:
- the projector (consumer runtime, binary COPY, upserts, checkpoint, XACK) vs raw
  COPY of the rows the tables end up holding (the archive row of every event and one
  row per key), built by the projector's own code, written the way it writes them
  (binary COPY, same types), into the same tables and indexes in one transaction;
- the read-model builder (consumer runtime, read, fold, checked script write) vs
  raw pipelined SETs of the same number of values;
- two peers on the same events (the LIST peer the whole backlog, eventsourcing every
  n-th event of it), writing the same rows into the same tables: a LIST
  write-behind queue (RPUSH JSON, a flusher LPOPs 100 and upserts their rows in one
  transaction, one statement per row in a pipeline; it loses what it popped when the
  commit fails) and the ``eventsourcing`` library's Postgres tracking recorder (its
  projection pattern: the rows and the tracking record, one transaction per event).
The projector, its raw COPY and the LIST peer run in rounds (three by default), close
in time, because this kind of machine changes speed by up to 1.7x for seconds at a time;
each ratio is reported from its median round. The projector and the LIST peer's flusher
each drain in a fresh process (as a service runs), and each measurement starts once the
server has settled what the previous one left it (autovacuum, a checkpoint).
Servers come from REDIS_URL / DATABASE_URL (else 127.0.0.1 defaults); the benchmark
creates its own database and key namespace and removes both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import multiprocessing
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import msgspec
import psycopg
from prometheus_client import CollectorRegistry
from psycopg import sql
from redis.asyncio import Redis

from bench.report import Figure, emit
from bench.servers import postgres_dsn, redis_url
from eventbot.appender import Appender
from eventbot.connections import redis_client
from eventbot.consumer import Consumer, ConsumerConfig
from eventbot.heap import freeze_startup_heap
from eventbot.keys import Keys
from eventbot.metrics import ConsumerMetrics
from eventbot.readmodels import ArchiveLog, Limits, ReadModelBuilder
from eventbot.readmodels.positions import Position
from eventbot.settings import Settings
from events import Event, EventCodec, default_codec
from services.projector.handlers import PostgresHandler, ReadModelHandler
from services.projector.migrations import load, migrate
from services.projector.pg_pool import open_pool
from services.projector.pg_projection import PostgresProjection, copy_rows
from services.projector.pg_tables import ALL_TABLES, BY_NAME, copy_into_table, merge, upsert_values
from services.projector.replay import replay_postgres
from services.projector.synthetic import Traffic

LIVE = "eventbot"
PARTITIONS = 8


def _dsn_for(dsn: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(dsn, dbname=dbname)


async def _drain(consumer: Consumer, redis: Redis, streams: list[str], total: int) -> float:
    """Run ``consumer`` until its group has acked ``total`` entries; seconds taken.

    Progress is read from the consumer's own counter (in process, no Redis round trips
    competing with the consumer), then checked once against the groups in Redis.
    """
    registry = consumer.metrics.processed
    started = time.perf_counter()
    task = asyncio.create_task(consumer.run())
    while sum(s.value for m in registry.collect() for s in m.samples if s.name.endswith("_total")) < total:
        await asyncio.sleep(0.01)
    seconds = time.perf_counter() - started
    consumer.stop()
    await task
    acked = 0
    for stream in streams:
        for g in await redis.xinfo_groups(stream):
            if g["name"].decode() == consumer.config.group:
                acked += int(g["entries-read"] or 0) - int(g["pending"])
    assert acked >= total, f"{consumer.config.group}: {acked} of {total} acked"
    return seconds


async def bench_projector(
    redis: Redis, keys: Keys, codec: EventCodec, pool: Any, total: int, batch: int, schema: str, group: str,
) -> float:
    """Projector events/s: a group of its own drains the whole backlog into ``schema``."""
    streams = keys.streams("conv") + keys.streams("ledger")
    if schema != LIVE:
        async with pool.connection() as conn:
            await migrate(conn, schema, load())
    consumer = Consumer(redis, keys, codec, PostgresHandler(PostgresProjection(pool, codec, schema, group)), streams,
                        ConsumerConfig(group=group, consumer="bench", batch_size=batch, block_ms=50),
                        ConsumerMetrics(CollectorRegistry()))
    cpu = time.process_time()
    rate = total / await _drain(consumer, redis, streams, total)
    print(f"#   projector process CPU {(time.process_time() - cpu) / total * 1e6:.1f} us/event", flush=True)
    return rate


def projector_process(namespace: str, dsn: str, total: int, batch: int, schema: str, group: str) -> float:
    """``bench_projector`` in a process of its own, set up as ``eventbot run projector`` sets up its own."""
    async def run() -> float:
        redis = redis_client(redis_url())
        pool = await open_pool(dsn, max_size=8, name="bench-projector")
        freeze_startup_heap()
        try:
            return await bench_projector(redis, Keys(namespace, PARTITIONS), default_codec(), pool, total, batch, schema, group)
        finally:
            await pool.close()
            await redis.aclose()

    return asyncio.run(run())


async def in_own_process(fn: Callable[..., float], *args: Any) -> float:
    """``fn(*args)`` in a fresh interpreter: a service's process holds its own work, not this
    benchmark's 200k generated events and raw rows (held here, they slow a drain by 10-30 %:
    the allocator hands out memory scattered among them)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as executor:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)


async def final_rows(redis: Redis, keys: Keys, codec: EventCodec, pool: Any) -> dict[str, list[list[Any]]]:
    """The rows the tables hold once every stream is projected: the archive row of every event and one
    row per key, built with the projector's own code."""
    streams = keys.streams("conv") + keys.streams("ledger")
    shaper = PostgresProjection(pool, codec, LIVE)
    archive: dict[Any, list[Any]] = {}
    merged: dict[str, dict[Any, dict[str, Any]]] = {}
    for stream in streams:
        entries = [(e[0].decode(), codec.decode(e[1][b"t"].decode(), int(e[1][b"v"]), e[1][b"d"]))
                   for e in await redis.xrange(stream)]
        todo = [(Position.parse(eid), eid, ev, None) for eid, ev in entries]
        logged, patched = shaper._rows(stream, todo)
        archive.update(logged)
        for name, by_key in patched.items():
            into = merged.setdefault(name, {})
            for key, row in by_key.items():
                into[key] = merge(BY_NAME[name], into[key], row) if key in into else row
    rows = {"event_log": list(archive.values())}
    rows |= {name: [[r.get(c) for c in BY_NAME[name].columns] for r in by_key.values()] for name, by_key in merged.items()}
    return rows


async def bench_raw_copy(pool: Any, codec: EventCodec, rows: dict[str, list[list[Any]]], total: int, schema: str) -> float:
    """Raw COPY events/s: ``rows`` written the way the projector writes them (binary COPY, same types),
    into the same tables and indexes, in one transaction."""
    shaper = PostgresProjection(pool, codec, schema)
    async with pool.connection() as conn:
        await migrate(conn, schema, load())
        await shaper._prepare(conn)
    started = time.perf_counter()
    async with pool.connection() as conn, conn.transaction():
        for name, table_rows in rows.items():
            await copy_rows(conn, copy_into_table(schema, BY_NAME[name]).as_string().encode(), shaper._types[name], table_rows)
    return total / (time.perf_counter() - started)


async def bench_builder(redis: Redis, keys: Keys, codec: EventCodec, pool: Any, total: int, batch: int) -> tuple[float, float]:
    """(read-model builder events/s, raw pipelined Redis SETs/s of as many values)."""
    streams = keys.streams("conv") + keys.streams("ledger")
    builder = ReadModelBuilder(redis, keys, Limits(), ArchiveLog(pool, redis, keys, codec, LIVE))
    consumer = Consumer(redis, keys, codec, ReadModelHandler(builder), streams,
                        ConsumerConfig(group="readmodel", consumer="bench", batch_size=batch, block_ms=50),
                        ConsumerMetrics(CollectorRegistry()))
    built = total / await _drain(consumer, redis, streams, total)
    value = b"x" * 600  # about a read-model value's size
    started = time.perf_counter()
    for i in range(0, total, 1000):
        pipe = redis.pipeline(transaction=False)
        for j in range(i, min(total, i + 1000)):
            pipe.set(f"{keys.namespace}:raw:{j}", value)
        await pipe.execute()
    raw = total / (time.perf_counter() - started)
    return built, raw


def _shaped(shaper: PostgresProjection, keys: Keys, events: list[tuple[Event, str]], first: int) -> list[tuple[str, list[Any]]]:
    """The rows these events put in the tables, by the projector's own shaping: (table, values) in table order.

    A write-behind has no stream positions: the archive rows get the event's stream and
    a running number as their entry id.
    """
    by_stream: dict[str, list[Any]] = {}
    for i, (event, payload) in enumerate(events, start=first):
        by_stream.setdefault(keys.stream_for(event), []).append((Position(i, 0), f"{i}-0", event, payload))
    out: dict[str, list[list[Any]]] = {}
    for stream, todo in by_stream.items():
        for name, rows in shaper.rows(stream, todo).items():
            out.setdefault(name, []).extend(rows)
    return [(t.name, row) for t in ALL_TABLES for row in out.get(t.name, [])]


async def fill_write_behind(redis: Redis, keys: Keys, codec: EventCodec, pool: Any, events: list[Event], schema: str) -> str:
    """The LIST peer's queue (its producers' RPUSH of JSON, not timed) and its tables; returns the queue's key."""
    queue = f"{keys.namespace}:wb:{schema}"
    for i in range(0, len(events), 1000):
        await redis.rpush(queue, *(codec.to_json(e) for e in events[i:i + 1000]))
    async with pool.connection() as conn:
        await migrate(conn, schema, load())
    return queue


def write_behind_process(namespace: str, dsn: str, queue: str, total: int, schema: str) -> float:
    """The LIST peer's flusher, in a process of its own as the projector is: events/s.

    The pattern this project replaces: a flusher LPOPs 100 and writes them in one transaction.
    It writes what the projector writes for those events (the archive row and the upserted
    table rows, same tables and indexes), one parameterised statement per row in a pipeline
    (psycopg's executemany); unlike the projector it keeps no checkpoint, and loses what it
    popped when the commit fails.
    """
    async def run() -> float:
        redis = redis_client(redis_url())
        codec, keys = default_codec(), Keys(namespace, PARTITIONS)
        shaping = await open_pool(dsn, max_size=1, name="bench-shaper")  # the shaper below writes nothing
        shaper = PostgresProjection(shaping, codec, schema)
        statements = {t.name: upsert_values(schema, t).as_string() for t in ALL_TABLES}
        head = msgspec.json.Decoder(_Head)
        freeze_startup_heap()
        try:
            async with await psycopg.AsyncConnection.connect(dsn) as conn:
                started = time.perf_counter()
                done = 0
                while True:
                    popped = await redis.lpop(queue, 100)
                    if not popped:
                        break
                    batch = []
                    for raw in popped:
                        kind = head.decode(raw).type
                        batch.append((codec.from_json(kind, codec.types[kind].version, raw), raw.decode()))
                    rows = _shaped(shaper, keys, batch, done + 1)
                    done += len(batch)
                    async with conn.transaction(), conn.cursor() as cur:
                        for name, group in itertools.groupby(rows, key=lambda r: r[0]):
                            await cur.executemany(statements[name], [values for _, values in group])
                assert done == total, f"LIST peer: {done} of {total} events flushed"
                return total / (time.perf_counter() - started)
        finally:
            await shaping.close()
            await redis.aclose()

    return asyncio.run(run())


class _Head(msgspec.Struct):
    type: str


def bench_eventsourcing(dsn: str, codec: EventCodec, shaper: PostgresProjection, keys: Keys, events: list[Event]) -> float:
    """``eventsourcing``'s tracking recorder: the event's rows (as the projector shapes them, in the
    same tables) and the tracking record, one transaction per event."""
    from eventsourcing.persistence import Tracking
    from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder

    info = psycopg.conninfo.conninfo_to_dict(dsn)
    statements = {t.name: upsert_values("eventsourcing", t).as_string() for t in ALL_TABLES}

    class EventView(PostgresTrackingRecorder):
        def __init__(self, datastore: PostgresDatastore) -> None:
            super().__init__(datastore, tracking_table_name="es_tracking")

        def project(self, event: Event, tracking: Tracking) -> None:
            rows = _shaped(shaper, keys, [(event, codec.to_json(event).decode())], tracking.notification_id)
            with self.datastore.transaction(commit=True) as cur:
                for name, values in rows:
                    cur.execute(statements[name], values)
                self._insert_tracking(cur, tracking)

    datastore = PostgresDatastore(
        dbname=str(info["dbname"]), host=str(info.get("host", "127.0.0.1")), port=str(info.get("port", 5432)),
        user=str(info.get("user", "postgres")), password=str(info.get("password", "")), pool_size=1,
    )
    view = EventView(datastore)
    view.create_table()
    started = time.perf_counter()
    for i, event in enumerate(events, start=1):
        view.project(event, Tracking(application_name="eventbot", notification_id=i))
    rate = len(events) / (time.perf_counter() - started)
    datastore.close()
    return rate


async def bench_replay(redis: Redis, keys: Keys, codec: EventCodec, pool: Any, have: int, want: int) -> tuple[int, float]:
    """Fill event_log up to ``want`` events (straight through the projection), then time a replay into a shadow."""
    projection = PostgresProjection(pool, codec, LIVE)
    traffic = Traffic(seed=99, users=5_000)
    # History archived from each event's own stream and long since trimmed from Redis, with entry
    # ids after everything still in Redis (a conv event never sits in a ledger stream, or vice versa).
    ms = int(time.time() * 1000) + 10_000
    n = have
    while n < want:
        chunk = traffic.events(min(5_000, want - n))
        by_stream: dict[str, list[tuple[str, Event]]] = {}
        for i, e in enumerate(chunk):
            by_stream.setdefault(keys.stream_for(e), []).append((f"{ms + i}-0", e))
        for stream, entries in by_stream.items():
            await projection.apply(stream, entries)
        ms += len(chunk)
        n += len(chunk)

    class Quiet:
        def __init__(self, label: str, total: int) -> None:
            self.done = 0

        def add(self, k: int) -> None:
            self.done += k

        def finish(self) -> None:
            pass

    started = time.perf_counter()
    report = await replay_postgres(pool, redis, keys, codec, live=LIVE, shadow="shadow", progress=Quiet)
    return report.events, time.perf_counter() - started


async def settle(pool: Any, timeout_s: float = 60.0) -> None:
    """Let the server finish what earlier writes left it (autovacuum of the tables just filled, dirty
    buffers) before a measurement starts, so that no figure pays for the one measured before it."""
    deadline = time.monotonic() + timeout_s
    async with pool.connection() as conn:
        await conn.set_autocommit(True)
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            await conn.execute("CHECKPOINT")
        while time.monotonic() < deadline:
            cur = await conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'")
            row = await cur.fetchone()
            if not row or not row[0]:
                return
            await asyncio.sleep(0.2)


def _median_round(rounds: list[tuple[float, float, float]], ratio: Any) -> tuple[float, float, float]:
    """The round whose ``ratio`` is the median (the upper one of an even count)."""
    return sorted(rounds, key=ratio)[len(rounds) // 2]


async def main(events_n: int, replay_n: int, peer_n: int, batch: int, json_path: str | None, rounds: int = 3) -> None:
    codec = default_codec()
    redis = redis_client(redis_url())
    keys = Keys(f"bench{uuid.uuid4().hex[:8]}", PARTITIONS)
    dbname = f"bench_project_{uuid.uuid4().hex[:8]}"
    admin_dsn = postgres_dsn()
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    dsn = _dsn_for(admin_dsn, dbname)
    pool = await open_pool(dsn, max_size=8, name="bench")
    try:
        async with pool.connection() as conn:
            await migrate(conn, LIVE, load())
        print(f"generating {events_n:,} mixed events...", flush=True)
        events = Traffic(seed=7, users=2_000).events(events_n)
        appender = Appender(redis, keys, codec)
        for i in range(0, len(events), 500):
            await appender.append_many(events[i:i + 500])
        total = len(events)
        # The rows of the raw COPY, built once (not timed) and held through the rounds.
        raw_rows = await final_rows(redis, keys, codec, pool)
        # As `eventbot run` sets up a service's process; the events and rows generated here,
        # which no projector process holds, are frozen with it and not walked by every
        # collection (held unfrozen through the rounds, they cost the projector 40 % more CPU).
        freeze_startup_heap()
        # This machine's speed changes by up to 1.7x for seconds at a time (a CPU-bound loop, timed
        # back to back): a ratio of two figures taken a minute apart measures that as much as the code.
        # So the projector, its raw COPY and the LIST peer run in rounds, each round close in time,
        # and each ratio is reported from the round where it is the median (every round is printed).
        # The LIST peer gets the very backlog the projector gets: its mix and its order (which keys
        # repeat within a batch) both set its pace. The first events alone would be a lighter mix
        # (new users' profiles and credits, fewer answers). eventsourcing, one transaction per event,
        # too slow for all of them, gets every n-th event: the same mix.
        sampled = events[:: max(1, len(events) // peer_n)][:peer_n]
        measured: list[tuple[float, float, float]] = []
        for r in range(rounds):
            suffix = f"_r{r}" if r else ""
            print(f"round {r + 1} of {rounds}: projector, raw COPY, LIST write-behind peer...", flush=True)
            queue = await fill_write_behind(redis, keys, codec, pool, events, "writebehind" + suffix)
            await settle(pool)
            projected = await in_own_process(projector_process, keys.namespace, dsn, total, batch, LIVE + suffix, "postgres" + suffix)
            await settle(pool)
            raw_copy = await bench_raw_copy(pool, codec, raw_rows, total, "rawcopy" + suffix)
            await settle(pool)
            write_behind = await in_own_process(write_behind_process, keys.namespace, dsn, queue, total, "writebehind" + suffix)
            measured.append((projected, raw_copy, write_behind))
            # Read again by nothing: dropped, so that every round starts on the same database
            # (the live schema, filled in the first round, stays for the replay).
            async with pool.connection() as conn:
                for schema in ("rawcopy" + suffix, "writebehind" + suffix, *((LIVE + suffix,) if suffix else ())):
                    await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
            print(f"#   projector {projected:,.0f}/s, raw COPY {raw_copy:,.0f}/s ({projected / raw_copy:.2f}), "
                  f"LIST peer {write_behind:,.0f}/s ({projected / write_behind:.2f})", flush=True)
        projected, raw_copy, _ = _median_round(measured, lambda m: m[0] / m[1])
        projected_vs_peer, _, write_behind = _median_round(measured, lambda m: m[0] / m[2])
        print("read-model builder...", flush=True)
        built, raw_set = await bench_builder(redis, keys, codec, pool, total, batch)
        print("eventsourcing peer...", flush=True)
        async with pool.connection() as conn:
            await migrate(conn, "eventsourcing", load())
        library = await asyncio.to_thread(bench_eventsourcing, dsn, codec, PostgresProjection(pool, codec, "eventsourcing"),
                                          keys, sampled)
        print(f"replay of {replay_n:,} events...", flush=True)
        replayed, replay_s = await bench_replay(redis, keys, codec, pool, total, replay_n)
        emit([
            Figure("project.postgres_events_per_s_vs_raw_copy", projected, "events/s", limit=raw_copy, target=0.5, target_kind="min"),
            Figure("project.postgres_vs_write_behind_list", projected_vs_peer, "events/s", limit=write_behind, target=3, target_kind="min"),
            Figure("project.postgres_vs_eventsourcing_tracking", projected, "events/s", limit=library, target=3, target_kind="min"),
            Figure("project.readmodel_events_per_s_vs_raw_pipelined_set", built, "events/s", limit=raw_set),
            Figure(f"project.replay_{replayed // 1000}k_events_seconds", replay_s, "s", target=40, target_kind="max"),
            Figure("project.replay_events_per_s", replayed / replay_s, "events/s"),
        ], json_path)
    finally:
        await pool.close()
        async for key in redis.scan_iter(match=f"{keys.namespace}:*", count=5000):
            await redis.unlink(key)
        await redis.aclose()
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--replay-events", type=int, default=1_000_000)
    parser.add_argument("--peer-events", type=int, default=20_000,
                        help="events fed to the eventsourcing peer, every n-th of the backlog (it is slow); the LIST peer gets them all")
    parser.add_argument("--batch", type=int, default=Settings().projector_batch_size,
                        help="consumer batch size (default: the projector's, EVENTBOT_PROJECTOR_BATCH_SIZE's default)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of projector, raw COPY and LIST peer (the median is reported)")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    asyncio.run(main(args.events, args.replay_events, args.peer_events, args.batch, args.json_path, args.rounds))
