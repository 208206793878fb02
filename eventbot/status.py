"""What an operator wants to see at a glance: streams, groups, lag, pending, dead letters."""

from __future__ import annotations

import msgspec
from redis.exceptions import ResponseError

from eventbot.deadletters import DeadLetters
from eventbot.keys import FAMILIES, Keys
from eventbot.readmodels.keys import ReadModelKeys
from eventbot.redisclient import RedisClient


class GroupStatus(msgspec.Struct, frozen=True):
    group: str
    consumers: int
    pending: int
    lag: int | None
    last_delivered: str


class StreamStatus(msgspec.Struct, frozen=True):
    stream: str
    family: str
    partition: int
    length: int
    last_entry: str | None
    groups: list[GroupStatus]


class Status(msgspec.Struct, frozen=True):
    namespace: str
    partitions: int
    streams: list[StreamStatus]
    dead_letters: dict[str, int]
    readmodel_generation: str | None
    rejected_updates: int = 0  # Telegram updates ingest could not handle, kept aside

    def totals(self) -> dict[str, dict[str, int]]:
        """Per group: pending, lag and consumers summed over its streams."""
        out: dict[str, dict[str, int]] = {}
        for s in self.streams:
            for g in s.groups:
                t = out.setdefault(g.group, {"pending": 0, "lag": 0, "consumers": 0, "streams": 0})
                t["pending"] += g.pending
                t["lag"] += g.lag or 0
                t["consumers"] = max(t["consumers"], g.consumers)
                t["streams"] += 1
        return out


async def collect(redis: RedisClient, keys: Keys, generation_key: str | None = None) -> Status:
    streams = []
    for family in FAMILIES:
        for p in range(keys.partitions):
            name = keys.stream(family, p)
            length = await redis.xlen(name)
            try:
                groups = await redis.xinfo_groups(name)
            except ResponseError:
                groups = []
            last = await redis.xrevrange(name, count=1) if length else []
            streams.append(
                StreamStatus(
                    stream=name, family=family, partition=p, length=length,
                    last_entry=last[0][0].decode() if last else None,
                    groups=[
                        GroupStatus(
                            group=_s(g["name"]), consumers=int(g["consumers"]), pending=int(g["pending"]),
                            lag=None if g.get("lag") is None else int(g["lag"]),
                            last_delivered=_s(g["last-delivered-id"]),
                        )
                        for g in groups
                    ],
                )
            )
    raw = await redis.hget(ReadModelKeys(keys).pointer, "live")
    generation = raw.decode() if raw else None
    rejected = await redis.xlen(keys.rejected_updates())
    return Status(keys.namespace, keys.partitions, streams, await DeadLetters(redis, keys).count(), generation, rejected)


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
