"""Appending events to their partitioned streams, idempotently.

An event id seen within the dedupe window is not stored again: the check and the
XADD run in one Lua script over keys of one hash slot, so a retried append (a
redelivered Telegram update, a timed-out call) can never store an event twice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter

from eventbot.errors import StoreUnavailable
from eventbot.keys import Keys
from eventbot.redisclient import STORE_DOWN, RedisClient
from eventbot.scripts import LuaScript
from events import Event, EventCodec


class Appended(NamedTuple):
    stream: str
    entry_id: str
    duplicate: bool


class AppendMetrics:
    """Events appended by type (duplicates apart): events/s by type on the dashboard."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.appended = Counter(
            "eventbot_events_appended_total", "Events appended to the streams", ("family", "type"), registry=registry
        )
        self.duplicates = Counter(
            "eventbot_events_duplicate_total", "Appends recognised as already stored", ("family", "type"), registry=registry
        )


class Appender:
    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        codec: EventCodec,
        *,
        dedupe_window_s: int = 7 * 24 * 3600,
        tokens_maxlen: int = 100_000,
        metrics: AppendMetrics | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.codec = codec
        self.window_ms = dedupe_window_s * 1000
        self.tokens_maxlen = tokens_maxlen
        self.metrics = metrics
        self._script = LuaScript("append")

    async def append(self, event: Event) -> Appended:
        return (await self.append_many([event]))[0]

    async def append_many(self, events: Sequence[Event]) -> list[Appended]:
        """Append a batch: one script call per partition, all pipelined in one round trip.

        Order is kept within each partition. Results come back in input order.
        On a cluster the partitions' calls go to their nodes in parallel, one round trip each.
        """
        by_stream: dict[str, list[int]] = defaultdict(list)
        for i, event in enumerate(events):
            by_stream[self.keys.stream_for(event)].append(i)
        calls = []
        for stream, positions in by_stream.items():
            partition = self.keys.partition_of(events[positions[0]].partition_key)
            keys = [stream]
            args: list[object] = [self.window_ms, self.tokens_maxlen if ":tokens:" in stream else 0]
            for i in positions:
                e = events[i]
                keys.append(self.keys.seen(partition, e.event_id))
                args += (e.type_name(), e.version, self.codec.encode(e))
            calls.append((keys, args))
        try:
            replies = await self._script.many(self.redis, calls)
        except STORE_DOWN as e:
            raise StoreUnavailable(f"append failed: {type(e).__name__}") from e
        results: list[Appended | None] = [None] * len(events)
        for (stream, positions), ids in zip(by_stream.items(), replies):
            for i, raw in zip(positions, ids):
                entry = raw.decode() if isinstance(raw, bytes) else raw
                dup = entry.startswith("=")
                results[i] = Appended(stream, entry[1:] if dup else entry, dup)
        if self.metrics is not None:
            for event, result in zip(events, results):
                counter = self.metrics.duplicates if result.duplicate else self.metrics.appended  # type: ignore[union-attr]
                counter.labels(event.family, event.type_name()).inc()
        return results  # type: ignore[return-value]
