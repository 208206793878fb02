"""Event ids: UUIDv7, time-ordered; derived ones are deterministic.

An event that comes from the outside world (a Telegram update, a payment charge,
a response to a message) gets an id derived from that world's id, so appending
it twice is recognised as the same event.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from uuid import UUID

from uuid_utils.compat import uuid7

__all__ = ["new_event_id", "derived_id"]


def new_event_id() -> UUID:
    return uuid7()


def derived_id(name: str, at: datetime) -> UUID:
    """A UUIDv7-shaped id whose time part is ``at`` and whose rest hashes ``name``.

    Same name and time -> same id; still sorts by time like any UUIDv7.
    """
    ms = int(at.timestamp() * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(hashlib.sha256(name.encode()).digest()[:10], "big")
    rand_a = (rand >> 68) & 0xFFF
    rand_b = rand & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return UUID(int=value)
