"""``eventbot migrate``: apply the numbered Postgres migrations that are not applied yet."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import psycopg

from eventbot.settings import Settings
from services.projector.migrations import DEFAULT_DIR, MigrationError, load, migrate


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("migrate", help="apply schemas/postgres/NNN_*.sql to DATABASE_URL (idempotent)")
    p.add_argument("--schema", help="target schema (default: EVENTBOT_PG_SCHEMA, 'eventbot')")
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="migrations folder (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if not settings.database_url:
        print("DATABASE_URL is not set", file=sys.stderr)
        return 2
    schema = args.schema or settings.pg_schema
    try:
        applied = asyncio.run(_migrate(settings.database_url, schema, args.dir))
    except MigrationError as e:
        print(f"migrate: {e}", file=sys.stderr)
        return 1
    except psycopg.OperationalError as e:
        print(f"migrate: cannot reach Postgres: {type(e).__name__}", file=sys.stderr)
        return 1
    for m in applied:
        print(f"applied {m.version:03d}_{m.name}")
    print(f"schema {schema}: up to date ({len(applied)} applied now)")
    return 0


async def _migrate(dsn: str, schema: str, directory: Path) -> list:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        return await migrate(conn, schema, load(directory))
