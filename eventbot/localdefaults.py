"""Local defaults: with REDIS_URL / DATABASE_URL unset, find or start the servers.

Order: the server on its default local port if it answers; else one started
from the binaries on PATH under ``.eventbot/`` in the project; else a clear
message saying how to get one.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import psycopg
from psycopg import sql

from eventbot.localservices import LocalPostgres, LocalRedis, ServiceUnavailable, port_answers
from eventbot.settings import Settings

DEFAULT_REDIS_PORT = 6379
DEFAULT_POSTGRES_PORT = 5432


def project_state_dir() -> Path:
    return Path.cwd() / ".eventbot"


def with_database(dsn: str, name: str) -> str:
    """The same server and user as ``dsn``, database ``name``, as a postgresql:// URL."""
    parts = psycopg.conninfo.conninfo_to_dict(dsn)
    auth = quote(str(parts.get("user", "postgres")), safe="")
    if parts.get("password"):
        auth += ":" + quote(str(parts["password"]), safe="")
    host = parts.get("host", "127.0.0.1")
    query = {k: v for k, v in parts.items() if k not in ("user", "password", "host", "port", "dbname")}
    url = f"postgresql://{auth}@{host}:{parts.get('port', 5432)}/{quote(name, safe='')}"
    return url + ("?" + urlencode(query) if query else "")


def ensure_database(server_dsn: str, name: str, *, fresh: bool = False) -> str:
    """The DSN of database ``name`` on that server, created (or recreated) if needed."""
    with psycopg.connect(server_dsn, autocommit=True, connect_timeout=5) as conn:
        if fresh:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        exists = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(server_dsn, name)


def _postgres_answers(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


@contextlib.contextmanager
def local_services(
    settings: Settings, *, need_postgres: bool = True, database: str = "eventbot", fresh_database: bool = False,
    own_database: bool = False, state_dir: Path | None = None,
) -> Iterator[Settings]:
    """Settings with working REDIS_URL and DATABASE_URL; servers started here are stopped on exit.

    ``own_database``: even with DATABASE_URL set, use (create) ``database`` on that
    server rather than the one named, so a demo never writes into a deployment's data.
    """
    state = state_dir or project_state_dir()
    started: list[LocalRedis | LocalPostgres] = []
    try:
        redis_url = settings.redis_url
        if redis_url is None:
            if port_answers(DEFAULT_REDIS_PORT):
                redis_url = f"redis://127.0.0.1:{DEFAULT_REDIS_PORT}/0"
            else:
                server = LocalRedis(state / "redis")
                started.append(server)
                redis_url = server.start()
        database_url = settings.database_url
        if database_url is not None and need_postgres and own_database:
            database_url = ensure_database(database_url, database, fresh=fresh_database)
        elif database_url is None and need_postgres:
            default = f"postgresql://postgres@127.0.0.1:{DEFAULT_POSTGRES_PORT}/postgres"
            if port_answers(DEFAULT_POSTGRES_PORT) and _postgres_answers(default):
                server_dsn = default
            else:
                pg = LocalPostgres(state / "postgres")
                started.append(pg)
                server_dsn = pg.start()
            database_url = ensure_database(server_dsn, database, fresh=fresh_database)
        yield dataclasses.replace(settings, redis_url=redis_url, database_url=database_url)
    except ServiceUnavailable:
        raise
    finally:
        for server in reversed(started):
            server.stop()
