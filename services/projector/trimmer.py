"""Trimming streams: only below what is archived in ``event_log`` and acked by every group.

For a ``conv`` or ``ledger`` stream the floor is the smallest of: the entry after
the ``postgres`` group's checkpoint (committed to the archive), and, for every
consumer group of the stream (and every group that must exist but does not yet,
which blocks trimming), its oldest pending entry or the entry after the last one
delivered to it. ``XTRIM MINID`` keeps everything at or above the floor.
``tokens`` streams are never archived: they are trimmed by length and age only.
"""

from __future__ import annotations

import time

import msgspec
from psycopg import sql
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from eventbot.keys import Keys, parse_stream
from eventbot.readmodels.positions import Position

# A group that must exist before its streams may be trimmed: until it reads them, it
# needs everything. The agent answers from conv, so conv waits for it too.
REQUIRED_GROUPS: dict[str, tuple[str, ...]] = {"conv": ("postgres", "readmodel", "agent"), "ledger": ("postgres", "readmodel")}


class Trimmed(msgspec.Struct, frozen=True):
    stream: str
    floor: str | None  # None: nothing may be trimmed yet
    removed: int


class Trimmer:
    def __init__(self, redis: Redis, keys: Keys, pool: AsyncConnectionPool, schema: str, *,
                 required_groups: dict[str, tuple[str, ...]] = REQUIRED_GROUPS, tokens_maxlen: int = 100_000,
                 tokens_max_age_s: int = 3600, keep_recent_s: int = 0) -> None:
        self.redis = redis
        self.keys = keys
        self.pool = pool
        self.schema = schema
        self.required = required_groups
        self.tokens_maxlen = tokens_maxlen
        self.tokens_max_age_s = tokens_max_age_s
        # Entries younger than this stay even when archived and acked: an agent taking
        # over a generation reads its hold back from the ledger stream by id.
        self.keep_recent_s = keep_recent_s

    async def trim(self) -> list[Trimmed]:
        archived = await self._archived()
        out = []
        recent = Position(int((time.time() - self.keep_recent_s) * 1000), 0)
        for stream in self.keys.streams("conv") + self.keys.streams("ledger"):
            floor = await self.floor(stream, archived.get(stream))
            if floor is not None and self.keep_recent_s:
                floor = min(floor, recent)
            removed = await self.redis.xtrim(stream, minid=str(floor), approximate=False) if floor else 0
            out.append(Trimmed(stream, str(floor) if floor else None, int(removed)))
        min_id = f"{int((time.time() - self.tokens_max_age_s) * 1000)}-0"
        for stream in self.keys.streams("tokens"):
            removed = await self.redis.xtrim(stream, maxlen=self.tokens_maxlen, approximate=True)
            # Exact for age: an old answer's tokens must not linger just because they share a node.
            removed += await self.redis.xtrim(stream, minid=min_id, approximate=False)
            out.append(Trimmed(stream, min_id, int(removed)))
        return out

    async def floor(self, stream: str, archived: Position | None) -> Position | None:
        """The smallest entry id that must stay, or None if nothing may go."""
        if archived is None:
            return None
        bounds = [archived.next()]
        try:
            groups = {g["name"].decode(): g for g in await self.redis.xinfo_groups(stream)}
        except ResponseError:
            return None  # no stream yet
        family = parse_stream(stream)[0]
        if any(name not in groups for name in self.required.get(family, ())):
            return None  # a projection that has not started yet needs the whole stream
        for name, g in groups.items():
            delivered = Position.parse(g["last-delivered-id"].decode())
            bounds.append(delivered.next())
            if int(g["pending"]):
                oldest = await self.redis.xpending_range(stream, name, min="-", max="+", count=1)
                if oldest:  # it may have been acked since XINFO counted it
                    bounds.append(Position.parse(oldest[0]["message_id"].decode()))
        return min(bounds)

    async def _archived(self) -> dict[str, Position]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                sql.SQL("SELECT stream, entry_ms, entry_seq FROM {}.checkpoints WHERE group_name = 'postgres'").format(
                    sql.Identifier(self.schema)))
            return {s: Position(ms, seq) for s, ms, seq in await cur.fetchall()}
