"""Numbered SQL migrations (``schemas/postgres/NNN_name.sql``), applied once each, recorded.

The files create tables unqualified; each is run with the target schema first on
``search_path``, so the live schema and a replay's shadow schema get the same DDL.
A file edited after it was applied is refused (its checksum is recorded), and an
advisory lock keeps two migrators from racing.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import msgspec
from psycopg import AsyncConnection, sql

# From a checkout the migrations sit beside the packages; an installed package (the
# Docker image) finds them in the working directory, where the image copies schemas/.
_BESIDE = Path(__file__).resolve().parents[2] / "schemas" / "postgres"
DEFAULT_DIR = _BESIDE if _BESIDE.is_dir() else Path.cwd() / "schemas" / "postgres"
_NAME = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")


class Migration(msgspec.Struct, frozen=True):
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(Exception):
    pass


def load(directory: Path = DEFAULT_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if m is None:
            raise MigrationError(f"{path.name}: migration files are named NNN_name.sql")
        found.append(Migration(int(m.group(1)), m.group(2), path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a number in {directory}")
    return found


async def migrate(conn: AsyncConnection, schema: str, migrations: list[Migration]) -> list[Migration]:
    """Apply what is not applied yet to ``schema``; returns the ones applied now."""
    ident = sql.Identifier(schema)
    applied_now = []
    async with conn.transaction():
        # Serialise migrators of this schema; released at commit.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('eventbot-migrate:' || %s))", (schema,))
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        await conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(ident)
        )
        cur = await conn.execute(sql.SQL("SELECT version, checksum FROM {}.schema_migrations").format(ident))
        done = {v: c for v, c in await cur.fetchall()}
        for m in migrations:
            if m.version in done:
                if done[m.version] != m.checksum:
                    raise MigrationError(
                        f"migration {m.version:03d}_{m.name} changed after it was applied to {schema}; "
                        "add a new migration instead"
                    )
                continue
            await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
            await conn.execute(m.sql)  # type: ignore[arg-type]  # trusted: files of this repository
            await conn.execute(
                sql.SQL("INSERT INTO {}.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)").format(ident),
                (m.version, m.name, m.checksum),
            )
            applied_now.append(m)
    return applied_now
