"""eventbot's own exceptions, so callers never import a driver to catch one."""

from __future__ import annotations


class EventbotError(Exception):
    pass


class TransientError(EventbotError):
    """Worth retrying with backoff: a connection dropped, a server restarting, a timeout."""


class StoreUnavailable(TransientError):
    """Redis or Postgres could not be reached or did not answer in time."""


class LedgerConflict(EventbotError):
    """The user's ledger moved on since it was read; read again and decide again."""
