"""The one consumer runtime that every group runs.

Per stream (partition) this consumer holds a lease for, one loop:

1. take over what a dead consumer left pending (``XAUTOCLAIM`` past the idle threshold);
2. re-read its own pending entries (``XREADGROUP ... 0``);
3. read new ones in batches (``XREADGROUP ... > COUNT BLOCK``).

A batch is decoded, handed to the handler, and acked only after the handler
returns (its effect is durable by contract). Transient errors are retried with
capped backoff without limit; other errors are retried entry by entry, and after
``max_deliveries`` the entry moves to the dead-letter stream (atomically with its
ack) so the partition moves on. While a handler runs, its entries' idle time is
reset (heartbeat) so nobody claims them from a live consumer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections.abc import Iterable, Sequence
from typing import Any, Literal, Protocol

import msgspec
from redis.exceptions import ResponseError

from eventbot.errors import TransientError
from eventbot.keys import Keys, parse_stream
from eventbot.leases import PartitionLeases
from eventbot.logs import correlation_id
from eventbot.metrics import ConsumerMetrics
from eventbot.redisclient import UNAVAILABLE, RedisClient
from events import CorruptEvent, Event, EventCodec, Family, UnknownEventType

log = logging.getLogger("eventbot.consumer")

# Includes a cluster failing over or moving slots (see redisclient.UNAVAILABLE).
TRANSIENT = (TransientError, *UNAVAILABLE, ConnectionError, TimeoutError)


class Delivery(msgspec.Struct, frozen=True):
    stream: str
    entry_id: str
    event: Event
    deliveries: int


class Batch(msgspec.Struct, frozen=True):
    group: str
    stream: str
    family: Family
    partition: int
    deliveries: tuple[Delivery, ...]

    @property
    def last_entry_id(self) -> str:
        return self.deliveries[-1].entry_id


class BatchHandler(Protocol):
    """Applies a batch of one partition's entries, in order; durable when it returns.

    It may return ids of other entries of the same stream whose effect it completed
    together with this batch's (the agent answers merged messages with one answer):
    they are acked in the same XACK, so a crash cannot ack one and redeliver another.
    """

    async def __call__(self, batch: Batch) -> Iterable[str] | None: ...


class ConsumerConfig(msgspec.Struct, frozen=True, kw_only=True):
    group: str
    consumer: str = msgspec.field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{random.randrange(16**6):06x}")
    batch_size: int = 256
    block_ms: int = 2_000
    claim_idle_ms: int = 30_000
    max_deliveries: int = 5
    on_unknown: Literal["skip", "dead_letter"] = "skip"
    # "partition": a batch at a time, in order (projections).
    # "concurrent": every entry handled as soon as read, acked when its handler
    # returns, up to max_in_flight at once; the handler orders what needs order
    # (the agent serialises per chat, so one slow answer doesn't hold a partition).
    mode: Literal["partition", "concurrent"] = "partition"
    max_in_flight: int = 256
    backoff_base_s: float = 0.05
    backoff_cap_s: float = 5.0
    stats_interval_s: float = 5.0


class Stopped(Exception):
    """Raised inside a loop when shutdown interrupts a retry; the entry stays pending."""


class EarlierEntriesPending(Exception):
    """A batch was read while entries before it are still pending in the group.

    Another reader holds them: a consumer that lost its lease in a Redis outage
    but was still blocked in XREADGROUP, or one that died mid-batch. Applying this
    batch first would move a checkpoint past them and the projection would then
    skip them as already applied. The batch stays pending; the loop goes back to
    recovery, which waits for (or claims) the earlier entries and takes them in order.
    """


class Consumer:
    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        codec: EventCodec,
        handler: BatchHandler,
        streams: Sequence[str],
        config: ConsumerConfig,
        metrics: ConsumerMetrics,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.codec = codec
        self.handler = handler
        self.streams = list(streams)
        self.config = config
        self.metrics = metrics
        self.leases = PartitionLeases(
            redis, keys.namespace, config.group, config.consumer, self.streams, config.claim_idle_ms
        )
        self._stopping = asyncio.Event()
        self._loops: dict[str, tuple[asyncio.Task[None], asyncio.Event]] = {}
        # Keyed by (stream, entry id): entry ids are per stream, two partitions can share one.
        self._in_flight: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(config.max_in_flight)
        self.started = asyncio.Event()

    @property
    def name(self) -> str:
        return self.config.consumer

    def stop(self) -> None:
        """Finish the batches in hand, ack them, and return from :meth:`run`."""
        self._stopping.set()

    async def ensure_groups(self) -> None:
        for stream in self.streams:
            try:
                # From the start of the stream: a new projection must see all history.
                await self.redis.xgroup_create(stream, self.config.group, id="0", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    async def run(self) -> None:
        try:
            await self._retrying(self.ensure_groups)
        except Stopped:
            return  # stopped while Redis was still unreachable: nothing in hand
        self.started.set()
        last_stats = 0.0
        try:
            while not self._stopping.is_set():
                try:
                    await self._rebalance()
                    if time.monotonic() - last_stats > self.config.stats_interval_s:
                        last_stats = time.monotonic()
                        await self.update_stats()
                except TRANSIENT as e:
                    log.warning("consumer %s: redis unavailable (%s), retrying", self.name, type(e).__name__)
                # Short of a fair share, look again soon: a partition handed over is read by
                # nobody from its release until someone takes it.
                await self._sleep(self.config.claim_idle_ms / (30_000 if self.leases.below_share else 3000))
        except asyncio.CancelledError:
            # Cancelled is abrupt, like a killed process: nothing more is acked,
            # what is in hand stays pending and is claimed after the idle threshold.
            for task, _ in self._loops.values():
                task.cancel()
            for task in self._in_flight.values():
                task.cancel()
            raise
        await self._stop_loops(list(self._loops))
        try:
            await self.leases.leave()
        except TRANSIENT:
            pass  # the leases expire on their own

    async def _rebalance(self) -> None:
        idle = {s for s, (task, _) in self._loops.items() if not task.done()}
        for stream in [s for s, (t, _) in self._loops.items() if t.done()]:
            task, _ = self._loops.pop(stream)
            if not task.cancelled() and task.exception() is not None:
                log.error("consumer %s: loop of %s died: %r", self.name, stream, task.exception())
            self.leases.held.discard(stream)
        acquired, lost, to_release = await self.leases.rebalance(releasable=idle)
        for stream in acquired:
            # A lease lost and won back while its old loop still finishes a batch: the new
            # loop starts after it, never beside it (two readers would reorder the partition).
            previous = self._loops.get(stream)
            stop = asyncio.Event()
            task = asyncio.create_task(self._partition_loop(stream, stop, after=previous[0] if previous else None))
            self._loops[stream] = (task, stop)
        if lost:
            log.warning("consumer %s: lost leases of %s", self.name, sorted(lost))
            for stream in lost:
                self._loops[stream][1].set()
        if to_release:
            await self._stop_loops(to_release)
            for stream in to_release:
                await self.leases.release(stream)
        self.metrics.partitions_owned.labels(self.config.group).set(len(self.leases.held))

    async def _stop_loops(self, streams: Sequence[str]) -> None:
        entries = [self._loops.pop(s) for s in streams if s in self._loops]
        for _, stop in entries:
            stop.set()
        await asyncio.gather(*(task for task, _ in entries), return_exceptions=True)

    async def _partition_loop(self, stream: str, stop: asyncio.Event, after: asyncio.Task[None] | None = None) -> None:
        if after is not None:
            await asyncio.wait({after})
        try:
            await self._read_loop(stream, stop)
        finally:
            mine = [t for t in self._in_flight.values() if t.get_name() == stream]
            await asyncio.gather(*mine, return_exceptions=True)

    async def _read_loop(self, stream: str, stop: asyncio.Event) -> None:
        family, partition = parse_stream(stream)
        cursor = "0"
        while not (stop.is_set() or self._stopping.is_set()):
            try:
                if cursor == "0" and not await self._take_over(stream, family, partition):
                    await self._sleep(min(1.0, self.config.claim_idle_ms / 4000))
                    continue
                recovering = cursor != ">"
                earliest: str | None = None
                if recovering or self.config.mode == "concurrent":
                    reply = await self.redis.xreadgroup(
                        self.config.group,
                        self.name,
                        {stream: cursor},
                        count=self.config.batch_size,
                        block=None if recovering else self.config.block_ms,
                    )
                else:
                    reply, earliest = await self._read_new_in_order(stream)
                entries = reply[0][1] if reply else []
                if recovering and not entries:
                    cursor = ">"
                    continue
                if not entries:
                    continue
                if recovering:
                    cursor = _str(entries[-1][0])
                    earliest = await self._earliest_pending(stream)
                self._check_in_order(stream, entries, earliest)
                counts = await self._delivery_counts(stream, entries) if recovering else {}
                await self._process(stream, family, partition, entries, counts)
            except Stopped:
                return
            except EarlierEntriesPending:
                self.metrics.out_of_order.labels(self.config.group, stream).inc()
                log.warning("consumer %s on %s: earlier entries still pending elsewhere; recovering in order",
                            self.name, stream)
                cursor = "0"
                await self._sleep(min(1.0, self.config.claim_idle_ms / 4000))
            except TRANSIENT as e:
                log.warning("consumer %s on %s: redis unavailable (%s)", self.name, stream, type(e).__name__)
                cursor = "0"  # after a reconnect, start again from what is pending
                await self._sleep(self.config.backoff_cap_s / 5)

    async def _take_over(self, stream: str, family: Family, partition: int) -> bool:
        """Claim and handle what other (dead) consumers left pending; True once none is left."""
        start = "0-0"
        while True:
            cursor, entries, _deleted = await self.redis.xautoclaim(
                stream, self.config.group, self.name, self.config.claim_idle_ms, start, count=self.config.batch_size
            )
            if entries:
                self._check_in_order(stream, entries, await self._earliest_pending(stream))
                counts = await self._delivery_counts(stream, entries)
                await self._process(stream, family, partition, entries, counts)
            start = _str(cursor)
            if start == "0-0":
                break
        summary = await self.redis.xpending(stream, self.config.group)
        others = [c for c in summary.get("consumers", []) if _str(c["name"]) != self.name]
        return not others

    async def _read_new_in_order(self, stream: str) -> tuple[list, str | None]:
        """New entries, and the oldest entry then pending in the group (with any consumer).

        One round trip: Redis answers the XPENDING queued behind a blocked
        XREADGROUP once the read returns, so it sees the batch just read.
        """
        pipe = self.redis.pipeline(transaction=False)
        pipe.xreadgroup(self.config.group, self.name, {stream: ">"}, count=self.config.batch_size, block=self.config.block_ms)
        pipe.xpending(stream, self.config.group)
        reply, summary = await pipe.execute()
        return reply, _summary_min(summary)

    async def _earliest_pending(self, stream: str) -> str | None:
        if self.config.mode == "concurrent":
            return None  # entries are handled out of order by design
        return _summary_min(await self.redis.xpending(stream, self.config.group))

    def _check_in_order(self, stream: str, entries: list, earliest: str | None) -> None:
        """In partition mode a batch is applied only when nothing before it is pending."""
        if earliest is not None and _entry_order(earliest) < _entry_order(_str(entries[0][0])):
            raise EarlierEntriesPending(stream)

    async def _delivery_counts(self, stream: str, entries: list) -> dict[str, int]:
        first, last = _str(entries[0][0]), _str(entries[-1][0])
        rows = await self.redis.xpending_range(
            stream, self.config.group, min=first, max=last, count=len(entries), consumername=self.name
        )
        return {_str(r["message_id"]): int(r["times_delivered"]) for r in rows}

    async def _process(self, stream: str, family: Family, partition: int, entries: list, counts: dict[str, int]) -> None:
        started = time.perf_counter()
        labels = (self.config.group, stream)
        good: list[Delivery] = []
        settled: list[str] = []  # acked without handling: trimmed away or skipped
        for raw_id, fields in entries:
            entry_id = _str(raw_id)
            if not fields:
                settled.append(entry_id)  # trimmed or deleted while pending
                continue
            deliveries = counts.get(entry_id, 1)
            only = fields.get(b"only")
            if only is not None and _str(only) != self.config.group:
                settled.append(entry_id)  # re-driven from another group's dead letters
                continue
            try:
                event = self.codec.decode(_str(fields[b"t"]), int(fields[b"v"]), fields[b"d"])
            except UnknownEventType as e:
                self.metrics.unknown.labels(*labels).inc()
                if self.config.on_unknown == "skip":
                    settled.append(entry_id)
                else:
                    await self._dead_letter(stream, family, partition, entry_id, fields, deliveries, e)
                continue
            except (CorruptEvent, KeyError, ValueError) as e:
                # Bytes don't heal on redelivery: straight to the dead letters.
                await self._dead_letter(stream, family, partition, entry_id, fields, deliveries, e)
                continue
            good.append(Delivery(stream, entry_id, event, deliveries))
        if settled:
            await self.redis.xack(stream, self.config.group, *settled)
        if good and self.config.mode == "concurrent":
            for d in good:
                if (stream, d.entry_id) not in self._in_flight:
                    await self._slots.acquire()
                    single = Batch(self.config.group, stream, family, partition, (d,))
                    task = asyncio.create_task(self._handle_released(single), name=stream)
                    self._in_flight[(stream, d.entry_id)] = task
        elif good:
            batch = Batch(self.config.group, stream, family, partition, tuple(good))
            await self._handle(batch)
        self.metrics.batch_seconds.labels(self.config.group).observe(time.perf_counter() - started)

    async def _handle_released(self, batch: Batch) -> None:
        try:
            await self._handle(batch)
        except Stopped:
            pass  # stays pending; handled again after the restart
        except TRANSIENT as e:
            log.warning("%s on %s: gave up for now: %s", self.config.group, batch.stream, type(e).__name__)
        finally:
            self._slots.release()
            for d in batch.deliveries:
                self._in_flight.pop((d.stream, d.entry_id), None)

    async def _handle(self, batch: Batch) -> None:
        labels = (self.config.group, batch.stream)
        failures = 0
        while True:
            try:
                # Every hand-over counts in the handler's view, a retry after a transient error
                # too: its effect may be done and only the XACK lost (the agent's answer
                # delivered), and a handler that took it for a first delivery would act afresh.
                together = await self._with_heartbeat(_handed_again(batch, failures))
                await self.redis.xack(batch.stream, self.config.group, *_ids(batch.deliveries, together))
                self.metrics.processed.labels(*labels).inc(len(batch.deliveries))
                return
            except TRANSIENT as e:
                self.metrics.failed.labels(*labels).inc()
                failures += 1
                log.warning("%s on %s: transient %s, retry %d", self.config.group, batch.stream, type(e).__name__, failures)
                await self._backoff(failures)
            except Exception as e:  # noqa: BLE001 - the handler's bug must not stop the partition
                self.metrics.failed.labels(*labels).inc()
                log.warning("%s on %s: handler failed: %s", self.config.group, batch.stream, type(e).__name__)
                break
        # Find the poison: one entry at a time, in order, so the good ones still apply.
        for delivery in batch.deliveries:
            await self._handle_one(batch, delivery, handed=failures + 1)

    async def _handle_one(self, batch: Batch, delivery: Delivery, handed: int) -> None:
        """``handed``: how often the handler has had this entry already (in its batch)."""
        labels = (self.config.group, batch.stream)
        deliveries = delivery.deliveries  # counted in the group, toward dead-lettering
        failures = 0
        while True:
            # The handler sees every hand-over as a redelivery (the agent then checks what the
            # earlier attempt already did); only the handler's own failures count toward the
            # dead-letter limit, not a store's outage.
            single = msgspec.structs.replace(
                batch, deliveries=(msgspec.structs.replace(delivery, deliveries=deliveries + handed + failures),)
            )
            try:
                together = await self._with_heartbeat(single)
                await self.redis.xack(batch.stream, self.config.group, *_ids(single.deliveries, together))
                self.metrics.processed.labels(*labels).inc()
                return
            except TRANSIENT as e:
                failures += 1
                self.metrics.failed.labels(*labels).inc()
                log.warning("%s on %s: transient %s", self.config.group, batch.stream, type(e).__name__)
                await self._backoff(failures)
            except Exception as e:  # noqa: BLE001
                self.metrics.failed.labels(*labels).inc()
                if deliveries >= self.config.max_deliveries:
                    fields = await self.redis.xrange(batch.stream, delivery.entry_id, delivery.entry_id)
                    raw = fields[0][1] if fields else {}
                    await self._dead_letter(
                        batch.stream, batch.family, batch.partition, delivery.entry_id, raw, deliveries, e
                    )
                    return
                deliveries += 1
                self.metrics.retried.labels(*labels).inc()
                # Count the attempt in the group too, so a crash doesn't reset it.
                await self.redis.xclaim(
                    batch.stream, self.config.group, self.name, 0, [delivery.entry_id], retrycount=deliveries
                )
                await self._backoff(deliveries - delivery.deliveries)

    async def _with_heartbeat(self, batch: Batch) -> Iterable[str] | None:
        # The handler's log lines carry the correlation id of what it handles (the
        # Telegram update a message came from); a batch carries its first entry's.
        token = correlation_id.set(batch.deliveries[0].event.correlation_id)
        try:
            task = asyncio.ensure_future(self.handler(batch))
        finally:
            correlation_id.reset(token)
        ids = [d.entry_id for d in batch.deliveries]
        interval = self.config.claim_idle_ms / 3000
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=interval)
                if done:
                    return task.result()
                # Still working: reset the idle time so nobody claims these from us.
                await self.redis.xclaim(batch.stream, self.config.group, self.name, 0, ids, justid=True)
        finally:
            if not task.done():
                task.cancel()
                # Left behind (the heartbeat failed, or we were stopped): its entries stay pending
                # and come back, so how it ends is nobody's news; without this asyncio would log
                # an error it raises on its way out as "never retrieved".
                task.add_done_callback(_outcome_dropped)

    async def _dead_letter(
        self, stream: str, family: Family, partition: int, entry_id: str, fields: dict, deliveries: int, error: BaseException
    ) -> None:
        record = {
            "stream": stream,
            "entry_id": entry_id,
            "group": self.config.group,
            "deliveries": deliveries,
            # The type and a bounded message: enough to act on, no payload in it.
            "error": f"{type(error).__name__}: {str(error)[:300]}",
            "failed_at": int(time.time() * 1000),
        }
        for k in (b"t", b"v", b"d"):
            if k in fields:
                record[k.decode()] = fields[k]
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(self.keys.dead_letters(self.config.group, family, partition), record)
        pipe.xack(stream, self.config.group, entry_id)
        await pipe.execute()
        self.metrics.dead_lettered.labels(self.config.group, stream).inc()
        log.error(
            "%s: entry %s of %s dead-lettered after %d deliveries: %s",
            self.config.group, entry_id, stream, deliveries, type(error).__name__,
        )

    async def update_stats(self) -> None:
        for stream in self.streams:
            try:
                groups = await self.redis.xinfo_groups(stream)
            except ResponseError:
                continue
            for g in groups:
                if _str(g["name"]) == self.config.group:
                    self.metrics.pending.labels(self.config.group, stream).set(int(g["pending"]))
                    lag = g.get("lag")
                    if lag is not None:
                        self.metrics.lag.labels(self.config.group, stream).set(int(lag))

    async def _backoff(self, failures: int) -> None:
        delay = min(self.config.backoff_cap_s, self.config.backoff_base_s * 2 ** min(failures, 20))
        await self._sleep(delay * (0.5 + random.random() / 2))
        if self._stopping.is_set():
            raise Stopped

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass

    async def _retrying(self, fn) -> None:  # type: ignore[no-untyped-def]
        failures = 0
        while True:
            try:
                return await fn()
            except TRANSIENT:
                failures += 1
                await self._backoff(failures)


def _outcome_dropped(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _summary_min(summary: dict) -> str | None:
    """The oldest pending entry id from an XPENDING summary (None: nothing pending)."""
    if not summary or not summary.get("pending"):
        return None
    return _str(summary["min"])


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _handed_again(batch: Batch, times: int) -> Batch:
    """``batch`` as its handler sees it after ``times`` earlier hand-overs in this process."""
    if not times:
        return batch
    return msgspec.structs.replace(
        batch, deliveries=tuple(msgspec.structs.replace(d, deliveries=d.deliveries + times) for d in batch.deliveries)
    )


def _ids(deliveries: Sequence[Delivery], together: Iterable[str] | None) -> list[str]:
    """The batch's entry ids, then those its handler completed together with them, each once."""
    return list(dict.fromkeys([*(d.entry_id for d in deliveries), *(together or ())]))
