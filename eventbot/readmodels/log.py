"""The whole log: ``event_log`` in Postgres (the archive) plus the streams' unarchived tail.

Read when a read model must be rebuilt (a new generation, a cold or flushed
Redis, a gap after a generation switch), never on the hot path of a warm Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from psycopg import sql
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from eventbot.keys import Keys
from eventbot.readmodels.positions import Position
from events import Event, EventCodec, EventDecodeError

Entry = tuple[str, Event]  # (entry id, event)
PROFILE_TYPES = ("user.seen", "user.profile_changed", "model.changed", "prompt.changed")


class EventLog(Protocol):
    def stream(self, stream: str, after: Position | None, upto: Position | None, chunk: int = 1000) -> AsyncIterator[list[Entry]]:
        """Entries of ``stream`` in (after, upto], oldest first, in chunks."""
        ...

    async def partition_key(self, stream: str, partition_key: str, upto: Position | None) -> list[Entry]: ...

    async def profile(self, user_id: int) -> list[Event]: ...


class StreamLog:
    """The streams alone: for deployments (and tests) whose streams were never trimmed."""

    def __init__(self, redis: Redis, keys: Keys, codec: EventCodec) -> None:
        self.redis = redis
        self.keys = keys
        self.codec = codec

    async def stream(self, stream: str, after: Position | None, upto: Position | None, chunk: int = 1000) -> AsyncIterator[list[Entry]]:
        async for part in _tail(self.redis, self.codec, stream, str(after) if after else None, upto, chunk):
            yield part

    async def partition_key(self, stream: str, partition_key: str, upto: Position | None) -> list[Entry]:
        return [(eid, e) async for part in _tail(self.redis, self.codec, stream, None, upto)
                for eid, e in part if e.partition_key == partition_key]

    async def profile(self, user_id: int) -> list[Event]:
        events = []
        for stream in self.keys.streams("conv"):
            async for part in _tail(self.redis, self.codec, stream, None, None):
                events += [e for _, e in part if _is_profile_of(e, user_id)]
        return sorted(events, key=lambda e: (e.occurred_at, e.event_id))


class ArchiveLog:
    """``event_log`` rows first, then stream entries past the last archived one (deduplicated by id)."""

    def __init__(self, pool: AsyncConnectionPool, redis: Redis, keys: Keys, codec: EventCodec, schema: str) -> None:
        self.pool = pool
        self.redis = redis
        self.keys = keys
        self.codec = codec
        self.schema = sql.Identifier(schema)

    async def stream(self, stream: str, after: Position | None, upto: Position | None, chunk: int = 1000) -> AsyncIterator[list[Entry]]:
        last = after or Position(0, 0)
        async for entries in archived(self.pool, self.codec, self.schema, stream, after, upto, chunk):
            last = Position.parse(entries[-1][0])
            yield entries
        # The tail that is not archived yet.
        async for part in _tail(self.redis, self.codec, stream, str(last) if last != Position(0, 0) else None, upto, chunk):
            yield part

    async def partition_key(self, stream: str, partition_key: str, upto: Position | None) -> list[Entry]:
        family = stream.rsplit(":", 2)[-2]
        top = upto or Position(2**62, 0)
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                sql.SQL(
                    "SELECT entry_id, type, version, payload::text FROM {}.event_log"
                    " WHERE family = %s AND partition_key = %s AND stream = %s AND (entry_ms, entry_seq) <= (%s, %s)"
                    " ORDER BY entry_ms, entry_seq"
                ).format(self.schema),
                (family, partition_key, stream, top.ms, top.seq),
            )
            out = self._decode_rows(await cur.fetchall())
        seen = {eid for eid, _ in out}
        async for chunk in _tail(self.redis, self.codec, stream, out[-1][0] if out else None, upto):
            out += [(eid, e) for eid, e in chunk if eid not in seen and e.partition_key == partition_key]
        return out

    async def profile(self, user_id: int) -> list[Event]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                sql.SQL(
                    "SELECT entry_id, type, version, payload::text FROM {}.event_log"
                    " WHERE user_id = %s AND type = ANY(%s) ORDER BY occurred_at"
                ).format(self.schema),
                (user_id, list(PROFILE_TYPES)),
            )
            events = [e for _, e in self._decode_rows(await cur.fetchall())]
        known = {e.event_id for e in events}
        for stream in self.keys.streams("conv"):
            async for chunk in _tail(self.redis, self.codec, stream, None, None):
                events += [e for _, e in chunk if _is_profile_of(e, user_id) and e.event_id not in known]
        return sorted(events, key=lambda e: (e.occurred_at, e.event_id))

    def _decode_rows(self, rows: Sequence[tuple[str, str, int, str]]) -> list[Entry]:
        return _decode(self.codec, rows)


async def archived(
    pool: AsyncConnectionPool, codec: EventCodec, schema: sql.Identifier, stream: str,
    after: Position | None, upto: Position | None, chunk: int = 1000,
) -> AsyncIterator[list[Entry]]:
    """``event_log`` rows of ``stream`` in (after, upto], decoded (undecodable ones left out)."""
    last = after or Position(0, 0)
    query = sql.SQL(
        "SELECT entry_id, type, version, payload::text FROM {}.event_log"
        " WHERE stream = %s AND (entry_ms, entry_seq) > (%s, %s) AND (entry_ms, entry_seq) <= (%s, %s)"
        " ORDER BY entry_ms, entry_seq LIMIT %s"
    ).format(schema)
    top = upto or Position(2**62, 0)
    while True:
        async with pool.connection() as conn:
            cur = await conn.execute(query, (stream, last.ms, last.seq, top.ms, top.seq, chunk))
            rows = await cur.fetchall()
        if not rows:
            return
        out = _decode(codec, rows)
        last = Position.parse(rows[-1][0])
        if out:
            yield out


def _decode(codec: EventCodec, rows: Sequence[tuple[str, str, int, str]]) -> list[Entry]:
    out = []
    for entry_id, type_name, version, payload in rows:
        try:
            out.append((entry_id, codec.from_json(type_name, version, payload)))
        except EventDecodeError:
            continue  # the live consumers skip or dead-letter it too
    return out


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _is_profile_of(event: Event, user_id: int) -> bool:
    return event.type_name() in PROFILE_TYPES and getattr(event, "user_id", None) == user_id


def decode_entries(codec: EventCodec, raw: Sequence[tuple[bytes | str, dict[bytes, bytes]]]) -> list[Entry]:
    """Stream entries (id, fields) decoded; undecodable ones are left out, as the consumers skip or dead-letter them."""
    out = []
    for entry_id, fields in raw:
        try:
            out.append((_str(entry_id), codec.decode(_str(fields[b"t"]), int(fields[b"v"]), fields[b"d"])))
        except (EventDecodeError, KeyError, ValueError):
            continue
    return out


async def _tail(
    redis: Redis, codec: EventCodec, stream: str, after: str | None, upto: Position | None, chunk: int = 1000
) -> AsyncIterator[list[Entry]]:
    """Stream entries in (after, upto], decoded; undecodable ones are left out as the consumers do."""
    start = f"({after}" if after else "-"
    end = str(upto) if upto else "+"
    while True:
        raw = await redis.xrange(stream, start, end, count=chunk)
        if not raw:
            return
        out = decode_entries(codec, raw)
        start = f"({_str(raw[-1][0])}"
        if out:
            yield out
