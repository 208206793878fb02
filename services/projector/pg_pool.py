"""The projector's Postgres connection pool."""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool


async def open_pool(dsn: str, *, max_size: int = 8, name: str = "projector") -> AsyncConnectionPool:
    """An open pool whose connections never use server-side prepared statements.

    A replay's ``--swap`` renames schemas under running projectors; a prepared
    plan would keep pointing at the renamed-away tables, a fresh parse does not.
    """
    pool = AsyncConnectionPool(
        dsn, min_size=1, max_size=max_size, open=False, name=name,
        kwargs={"prepare_threshold": None}, timeout=30,
    )
    await pool.open(wait=True, timeout=30)
    return pool
