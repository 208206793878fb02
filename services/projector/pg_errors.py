"""Postgres errors, translated at the boundary so callers never import psycopg to catch one.

A dropped connection, a server restarting, a deadlock or a serialization
failure is worth retrying (the consumer runtime retries TransientError forever,
with backoff); anything else is a bug or bad data and takes the dead-letter path.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import psycopg
from psycopg import errors as pg

from eventbot.errors import StoreUnavailable, TransientError

# Class 08 (connection), 57P (operator intervention: shutdown, restart), 53 (resources).
_UNAVAILABLE_CLASSES = ("08", "57", "53")
_RETRYABLE = (pg.DeadlockDetected, pg.SerializationFailure, pg.LockNotAvailable, pg.QueryCanceled)


def translate(e: psycopg.Error) -> Exception:
    state = e.sqlstate or ""
    if isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError)) and not state:
        return StoreUnavailable(f"postgres unavailable: {type(e).__name__}")
    if state[:2] in _UNAVAILABLE_CLASSES:
        return StoreUnavailable(f"postgres unavailable: {state} {type(e).__name__}")
    if isinstance(e, _RETRYABLE):
        return TransientError(f"postgres: {state} {type(e).__name__}")
    return e


@contextlib.asynccontextmanager
async def postgres_errors() -> AsyncIterator[None]:
    """Re-raise transient psycopg errors as eventbot's own, keeping the cause."""
    try:
        yield
    except psycopg.Error as e:
        translated = translate(e)
        if translated is e:
            raise
        raise translated from e
