"""``eventbot replay postgres|redis``: rebuild projections from the log beside the live ones, then switch."""

from __future__ import annotations

import argparse
import sys

import msgspec
from psycopg import sql

from eventbot.commands._shared import load_settings, redis_url, run
from eventbot.connections import keys_for, redis_client
from eventbot.heap import freeze_startup_heap
from eventbot.readmodels import ArchiveLog, ReadModelBuilder, limits_for
from events import default_codec
from services.projector.pg_pool import open_pool
from services.projector.replay import PostgresReplayReport, replay_postgres, replay_redis


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="rebuild Postgres tables or Redis read models from event_log + streams")
    target = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    pg = target.add_parser("postgres", help="project the whole log into a shadow schema")
    pg.add_argument("--shadow", help="shadow schema (default: <live>_shadow)")
    pg.add_argument("--verify", action="store_true", help="compare shadow and live (row counts, checksums); exit 1 if they differ")
    pg.add_argument("--swap", action="store_true", help="make the shadow the live schema (after --verify passes, if given)")
    pg.add_argument("--json", action="store_true", help="print a machine-readable summary")
    pg.set_defaults(func=_postgres)
    rd = target.add_parser("redis", help="build a new read-model generation and switch to it")
    rd.add_argument("--json", action="store_true", help="print a machine-readable summary")
    rd.set_defaults(func=_redis)


def _postgres(args: argparse.Namespace) -> int:
    settings = load_settings()
    if not settings.database_url:
        print("DATABASE_URL is not set", file=sys.stderr)
        return 2
    shadow = args.shadow or f"{settings.pg_schema}_shadow"

    async def go() -> PostgresReplayReport:
        redis = redis_client(redis_url(settings), max_connections=8)
        pool = await open_pool(settings.database_url, max_size=4, name="replay")  # type: ignore[arg-type]
        try:
            return await replay_postgres(pool, redis, keys_for(settings), default_codec(), live=settings.pg_schema,
                                         shadow=shadow, verify=args.verify, swap=args.swap)
        finally:
            await pool.close()
            await redis.aclose()

    freeze_startup_heap()  # a replay is bulk work, as the projector's batches are
    report = run(go())
    if args.json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    else:
        print(f"replayed {report.events:,} events into {report.shadow} in {report.seconds:.1f} s "
              f"({report.events_per_s:,.0f} events/s)")
        if report.verified:
            for d in report.differences:
                mark = "ok  " if d.equal else "DIFF"
                print(f"  {mark} {d.table:<20} live {d.live_rows:>10,} rows {d.live_checksum}  "
                      f"shadow {d.shadow_rows:>10,} rows {d.shadow_checksum}")
                for key in d.only_live:
                    print(f"         only in live:   {key}")
                for key in d.only_shadow:
                    print(f"         only in shadow: {key}")
            print("shadow equals live" if report.equal else "shadow and live DIFFER")
        if report.swapped:
            print(f"swapped: {report.shadow} is now {settings.pg_schema}; the old one is {report.previous_schema}")
    return 1 if report.verified and not report.equal else 0


def _redis(args: argparse.Namespace) -> int:
    settings = load_settings()
    if not settings.database_url:
        print("DATABASE_URL is not set (the archive is part of the log)", file=sys.stderr)
        return 2

    async def go():  # type: ignore[no-untyped-def]
        codec = default_codec()
        keys = keys_for(settings)
        redis = redis_client(redis_url(settings), max_connections=8)
        pool = await open_pool(settings.database_url, max_size=4, name="replay")  # type: ignore[arg-type]
        try:
            log = ArchiveLog(pool, redis, keys, codec, settings.pg_schema)
            builder = ReadModelBuilder(redis, keys, limits_for(settings), log)
            async with pool.connection() as conn:
                cur = await conn.execute(sql.SQL("SELECT count(*) FROM {}.event_log").format(sql.Identifier(settings.pg_schema)))
                total = (await cur.fetchone())[0]  # type: ignore[index]
            return await replay_redis(redis, keys, builder, log, total=total)
        finally:
            await pool.close()
            await redis.aclose()

    freeze_startup_heap()  # a replay is bulk work, as the projector's batches are
    report = run(go())
    if args.json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    else:
        print(f"read models: generation {report.generation} built from {report.events:,} events in "
              f"{report.seconds:.1f} s ({report.events_per_s:,.0f} events/s), now live; "
              f"generation {report.previous_generation} removed ({report.deleted_keys:,} keys)")
    return 0
