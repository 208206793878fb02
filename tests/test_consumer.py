"""The consumer runtime: redelivery, claiming, dead letters, bad entries, shutdown, order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from redis.asyncio import Redis

from eventbot.appender import Appender
from eventbot.consumer import Batch, Consumer, ConsumerConfig
from eventbot.keys import Keys
from eventbot.metrics import ConsumerMetrics
from tests.waiting import eventually  # noqa: F401 - re-exported to other test modules
from events import EventCodec
from tests.factories import message

FAST = dict(claim_idle_ms=600, block_ms=100, backoff_base_s=0.01, backoff_cap_s=0.05, stats_interval_s=0.2)


class Recorder:
    """An idempotent handler: the effect (``applied``) happens once per event id."""

    def __init__(self, behaviour: Callable[[Batch], Awaitable[None]] | None = None) -> None:
        self.calls: list[str] = []  # every delivery handled, duplicates included
        self.applied: dict[str, str] = {}  # event id -> text: the effect
        self.behaviour = behaviour

    async def __call__(self, batch: Batch) -> None:
        for d in batch.deliveries:
            self.calls.append(str(d.event.event_id))
            self.applied.setdefault(str(d.event.event_id), d.event.text)  # type: ignore[attr-defined]
        if self.behaviour:
            await self.behaviour(batch)


@contextlib.asynccontextmanager
async def running(consumer: Consumer) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(consumer.run())
    try:
        yield task
    finally:
        if not task.done():
            consumer.stop()
            await asyncio.wait_for(task, 10)


def make(redis: Redis, keys: Keys, codec: EventCodec, handler, name: str, metrics: ConsumerMetrics | None = None, group: str = "g", **config) -> Consumer:  # type: ignore[no-untyped-def]
    from prometheus_client import CollectorRegistry

    return Consumer(
        redis, keys, codec, handler, keys.streams("conv"),
        ConsumerConfig(group=group, consumer=name, **{**FAST, **config}),
        metrics or ConsumerMetrics(CollectorRegistry()),
    )


async def pending_total(redis: Redis, keys: Keys, group: str = "g") -> int:
    total = 0
    for stream in keys.streams("conv"):
        with contextlib.suppress(Exception):
            total += (await redis.xpending(stream, group))["pending"]
    return total


async def test_order_within_a_partition_is_kept(redis: Redis, keys: Keys, codec: EventCodec, appender: Appender) -> None:
    events = [message(1, f"m{i}") for i in range(300)]
    for i in range(0, 300, 50):
        await appender.append_many(events[i : i + 50])
    recorder = Recorder()
    async with running(make(redis, keys, codec, recorder, "c1", batch_size=64)):
        await eventually(lambda: len(recorder.calls) == 300)
    assert recorder.calls == [str(e.event_id) for e in events]


async def test_killed_after_handling_before_ack_redelivers_and_effect_happens_once(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender
) -> None:
    events = [message(chat, "x") for chat in range(1, 9)]
    await appender.append_many(events)
    handled = asyncio.Event()

    async def die_before_ack(batch: Batch) -> None:
        handled.set()
        await asyncio.Event().wait()  # the process "dies" here: effect done, no ack

    first = Recorder(die_before_ack)
    doomed = asyncio.create_task(make(redis, keys, codec, first, "doomed").run())
    await eventually(lambda: len(first.applied) == len(events))
    doomed.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await doomed
    assert await pending_total(redis, keys) == len(events), "nothing was acked"

    second = Recorder()
    second.applied = first.applied  # the effect lives in a shared store (think: Postgres)
    async with running(make(redis, keys, codec, second, "heir")):
        await eventually(lambda: len(second.calls) == len(events))
        await eventually(lambda: _zero(pending_total(redis, keys)))
    assert sorted(second.calls) == sorted(str(e.event_id) for e in events), "every entry redelivered"
    assert len(first.applied) == len(events), "the idempotent effect happened once per event"


async def _zero(value: Awaitable[int]) -> bool:
    return await value == 0


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_dead_consumers_entries_are_claimed_after_idle_threshold(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender
) -> None:
    await appender.append_many([message(2, f"m{i}") for i in range(5)])
    stuck = Recorder(lambda b: asyncio.Event().wait())
    dead = asyncio.create_task(make(redis, keys, codec, stuck, "dead").run())
    await eventually(lambda: len(stuck.calls) > 0)
    dead.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await dead

    heir = Recorder()
    started = asyncio.get_running_loop().time()
    async with running(make(redis, keys, codec, heir, "heir")):
        await eventually(lambda: len(heir.calls) == 5)
        elapsed = asyncio.get_running_loop().time() - started
        await eventually(lambda: _zero(pending_total(redis, keys)))
    # Not before the lease and the entries were idle past the threshold (0.6 s).
    assert elapsed >= 0.5
    stream = keys.stream("conv", keys.partition_of("2"))
    consumers = {c["name"].decode(): c["pending"] for c in await redis.xinfo_consumers(stream, "g")}
    assert consumers.get("dead", 0) == 0


async def test_a_batch_read_while_an_earlier_entry_is_pending_elsewhere_waits_for_it(
    redis: Redis, keys: Keys, codec: EventCodec
) -> None:
    """Another reader took entry 1 (a consumer whose lease lapsed in an outage, still blocked in
    XREADGROUP); we read entry 2. Applying 2 first would let a checkpoint pass 1 and skip it for good."""
    first, second = message(4, "first"), message(4, "second")
    stream = keys.stream_for(first)
    recorder = Recorder()
    consumer = make(redis, keys, codec, recorder, "live")
    async with running(consumer):
        await consumer.started.wait()
        await asyncio.sleep(0.3)  # past its take-over: blocked reading new entries
        async with redis.pipeline(transaction=True) as tx:  # one step: the other reader gets 1, we get 2
            tx.xadd(stream, {"t": first.type_name(), "v": first.version, "d": codec.encode(first)})
            tx.xreadgroup("g", "lapsed", {stream: ">"}, count=1)
            tx.xadd(stream, {"t": second.type_name(), "v": second.version, "d": codec.encode(second)})
            await tx.execute()
        await eventually(lambda: len(set(recorder.calls)) == 2, timeout=10)
        await eventually(lambda: _zero(pending_total(redis, keys)))
    assert recorder.calls == [str(first.event_id), str(second.event_id)]


async def test_live_slow_consumer_keeps_its_entries(redis: Redis, keys: Keys, codec: EventCodec, appender: Appender) -> None:
    await appender.append_many([message(3, "slow")])
    stream = keys.stream("conv", keys.partition_of("3"))

    async def slow(batch: Batch) -> None:
        await asyncio.sleep(2.0)  # over three idle thresholds

    owner = Recorder(slow)
    other = Recorder()
    async with running(make(redis, keys, codec, owner, "owner")):
        await eventually(lambda: len(owner.calls) == 1)
        async with running(make(redis, keys, codec, other, "other")):
            for _ in range(8):
                await asyncio.sleep(0.2)
                # What any other consumer's XAUTOCLAIM would see: nothing idle enough.
                claimed = await redis.xautoclaim(stream, "g", "thief", 600, "0-0", justid=True)
                assert claimed == []
            await eventually(lambda: _zero(pending_total(redis, keys)))
    assert other.calls == [] and len(owner.calls) == 1


async def test_a_handler_retried_in_process_sees_the_attempt_count(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender
) -> None:
    """A retry is a redelivery to the handler: the agent relies on the count to check what an
    earlier attempt already did (else it may answer a message a second time)."""
    await appender.append_many([message(6, "flaky")])
    seen: list[int] = []

    async def fail_twice(batch: Batch) -> None:
        seen.append(batch.deliveries[0].deliveries)
        if len(seen) <= 2:
            raise ValueError("fails")

    async with running(make(redis, keys, codec, Recorder(fail_twice), "c", max_deliveries=5)):
        await eventually(lambda: len(seen) >= 3)
        await eventually(lambda: _zero(pending_total(redis, keys)))
    # The batch (fails), the entry alone (fails), the entry alone once more: each hand-over counts.
    assert seen == [1, 2, 3]


async def test_a_handler_retried_after_a_transient_error_sees_a_redelivery(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender
) -> None:
    """The handler's effect may be done and only the ack lost to an outage: handed the entry
    again, it must be told so (the agent took such a retry for a new message, which cancelled
    the answer in progress and left it unanswered)."""
    from eventbot.errors import StoreUnavailable

    await appender.append_many([message(6, "acked late")])
    seen: list[int] = []

    async def done_but_unacked(batch: Batch) -> None:
        seen.append(batch.deliveries[0].deliveries)
        if len(seen) <= 2:
            raise StoreUnavailable("redis went away before the ack")

    async with running(make(redis, keys, codec, Recorder(done_but_unacked), "c", max_deliveries=2)):
        await eventually(lambda: len(seen) >= 3)
        await eventually(lambda: _zero(pending_total(redis, keys)))
    assert seen == [1, 2, 3]
    assert await redis.xlen(keys.dead_letters("g", "conv", keys.partition_of("6"))) == 0


async def test_always_failing_entry_is_dead_lettered_and_the_partition_moves_on(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender, consumer_metrics: ConsumerMetrics
) -> None:
    events = [message(4, "ok-1"), message(4, "poison"), message(4, "ok-2")]
    results = await appender.append_many(events)

    async def fail_on_poison(batch: Batch) -> None:
        if any(d.event.text == "poison" for d in batch.deliveries):  # type: ignore[attr-defined]
            raise ValueError("cannot apply this one")

    recorder = Recorder(fail_on_poison)
    async with running(make(redis, keys, codec, recorder, "c", consumer_metrics, max_deliveries=3)):
        dlq = keys.dead_letters("g", "conv", keys.partition_of("4"))
        await eventually(lambda: redis.xlen(dlq))
        await eventually(lambda: _zero(pending_total(redis, keys)))
    [(_, letter)] = await redis.xrange(dlq)
    assert letter[b"entry_id"].decode() == results[1].entry_id
    assert letter[b"group"] == b"g" and letter[b"deliveries"] == b"3"
    assert b"ValueError: cannot apply this one" in letter[b"error"]
    assert letter[b"t"] == b"message.received"  # the original is kept, to re-drive later
    ok_ids = {str(events[0].event_id), str(events[2].event_id)}
    assert ok_ids <= set(recorder.calls)
    assert recorder.calls.count(str(events[1].event_id)) == 4  # in the batch once, then alone 3 times
    stream = keys.stream("conv", keys.partition_of("4"))
    assert consumer_metrics.dead_lettered.labels("g", stream)._value.get() == 1


async def test_unknown_type_and_corrupt_payload_do_not_stop_the_consumer(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender, consumer_metrics: ConsumerMetrics
) -> None:
    stream = keys.stream("conv", keys.partition_of("5"))
    await appender.append(message(5, "before"))
    await redis.xadd(stream, {"t": "nobody.knows", "v": 1, "d": b"\x80"})
    corrupt_id = (await redis.xadd(stream, {"t": "message.received", "v": 1, "d": b"\xc1garbage"})).decode()
    await redis.xadd(stream, {"nothing": "useful"})
    await appender.append(message(5, "after"))
    recorder = Recorder()
    async with running(make(redis, keys, codec, recorder, "c", consumer_metrics)):
        await eventually(lambda: sorted(recorder.applied.values()) == ["after", "before"])
        await eventually(lambda: _zero(pending_total(redis, keys)))
    assert consumer_metrics.unknown.labels("g", stream)._value.get() == 1
    letters = await redis.xrange(keys.dead_letters("g", "conv", keys.partition_of("5")))
    assert [f[b"entry_id"].decode() for _, f in letters][0] == corrupt_id
    assert len(letters) == 2  # the corrupt payload and the entry without fields


async def test_unknown_types_can_be_dead_lettered_by_policy(redis: Redis, keys: Keys, codec: EventCodec) -> None:
    stream = keys.stream("conv", 0)
    await redis.xadd(stream, {"t": "nobody.knows", "v": 1, "d": b"\x80"})
    async with running(make(redis, keys, codec, Recorder(), "c", on_unknown="dead_letter")):
        await eventually(lambda: redis.xlen(keys.dead_letters("g", "conv", 0)))


async def test_transient_errors_are_retried_without_dead_lettering(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender
) -> None:
    from eventbot.errors import StoreUnavailable

    await appender.append(message(6, "x"))
    failures = {"left": 12}

    async def flaky(batch: Batch) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise StoreUnavailable("postgres is restarting")

    recorder = Recorder(flaky)
    async with running(make(redis, keys, codec, recorder, "c", max_deliveries=2)):
        await eventually(lambda: failures["left"] == 0)
        await eventually(lambda: _zero(pending_total(redis, keys)))
    assert await redis.xlen(keys.dead_letters("g", "conv", keys.partition_of("6"))) == 0


async def test_stop_finishes_the_batch_in_hand(redis: Redis, keys: Keys, codec: EventCodec, appender: Appender) -> None:
    await appender.append_many([message(7, str(i)) for i in range(10)])
    entered = asyncio.Event()

    async def slow(batch: Batch) -> None:
        entered.set()
        await asyncio.sleep(0.5)

    recorder = Recorder(slow)
    consumer = make(redis, keys, codec, recorder, "c")
    task = asyncio.create_task(consumer.run())
    await asyncio.wait_for(entered.wait(), 10)
    consumer.stop()
    await asyncio.wait_for(task, 10)
    assert len(recorder.calls) == 10
    assert await pending_total(redis, keys) == 0, "the batch in hand was acked before stopping"


async def test_two_consumers_split_the_partitions(redis: Redis, keys: Keys, codec: EventCodec, appender: Appender) -> None:
    events = [message(chat, "x") for chat in range(1, 41)]
    await appender.append_many(events)
    a, b = Recorder(), Recorder()
    async with running(make(redis, keys, codec, a, "a")), running(make(redis, keys, codec, b, "b")):
        await eventually(lambda: len(a.calls) + len(b.calls) == 40)
    assert not set(a.calls) & set(b.calls), "no entry handled by both"


@pytest.mark.parametrize("mode", ["concurrent"])
async def test_concurrent_mode_does_not_wait_for_a_slow_entry(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender, mode: str
) -> None:
    slow, fast = message(8, "slow"), message(8, "fast")
    await appender.append_many([slow, fast])
    release = asyncio.Event()

    async def hold_slow(batch: Batch) -> None:
        if batch.deliveries[0].event.text == "slow":  # type: ignore[attr-defined]
            await release.wait()

    recorder = Recorder(hold_slow)
    async with running(make(redis, keys, codec, recorder, "c", mode=mode)):
        await eventually(lambda: len(recorder.calls) == 2)
        # The fast one is acked while the slow one is still held: it did not wait for it.
        await eventually(lambda: _equals(pending_total(redis, keys), 1))
        assert not release.is_set()
        release.set()
        await eventually(lambda: _zero(pending_total(redis, keys)))


async def test_a_consumer_added_and_removed_mid_run_rebalances_and_loses_nothing(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender
) -> None:
    """Scale out then in under steady traffic: each entry handled once, in order, never by two at once."""
    appended: list[tuple[str, str]] = []  # (stream, entry id), in append order
    handled: list[tuple[str, str, str]] = []  # (consumer, stream, entry id), in handling order
    inside: dict[str, str] = {}  # stream -> consumer handling one of its batches right now
    overlaps: list[str] = []

    def handler(name: str):  # type: ignore[no-untyped-def]
        async def handle(batch: Batch) -> None:
            holder = inside.setdefault(batch.stream, name)
            if holder != name:
                overlaps.append(f"{name} and {holder} on {batch.stream}")
            try:
                await asyncio.sleep(0.02)  # long enough that a second reader of the partition would show
                handled.extend((name, batch.stream, d.entry_id) for d in batch.deliveries)
            finally:
                if inside.get(batch.stream) == name:
                    del inside[batch.stream]
        return handle

    producing = asyncio.Event()
    producing.set()

    async def produce() -> None:
        n = 0
        while producing.is_set():
            results = await appender.append_many([message(chat, f"m{n}") for chat in range(1, 13)])
            appended.extend((r.stream, r.entry_id) for r in results)
            n += 1
            await asyncio.sleep(0.02)

    # Leases renewed every 0.5 s with 1.5 s to spare: a busy machine does not lose one mid-test.
    slow_leases = dict(claim_idle_ms=1_500)
    a = make(redis, keys, codec, handler("a"), "a", **slow_leases)
    b = make(redis, keys, codec, handler("b"), "b", **slow_leases)
    producer = asyncio.create_task(produce())
    try:
        async with running(a):
            await eventually(lambda: len(a.leases.held) == keys.partitions and len(handled) > 50)
            async with running(b):
                # Scaled out: the partitions split evenly, and the newcomer does work.
                await eventually(lambda: len(a.leases.held) == len(b.leases.held) == keys.partitions // 2)
                b_streams = set(b.leases.held)
                await eventually(lambda: sum(1 for c, _, _ in handled if c == "b") > 20)
            # Scaled in: b finished its batches, handed its leases back, and a took them over.
            await eventually(lambda: len(a.leases.held) == keys.partitions)
            mark = len(handled)
            await eventually(lambda: any(c == "a" and s in b_streams for c, s, _ in handled[mark:]))
            producing.clear()
            await producer
            await eventually(lambda: len(handled) >= len(appended))
            await eventually(lambda: _zero(pending_total(redis, keys)))
    finally:
        producing.clear()
        await asyncio.gather(producer, return_exceptions=True)
    assert overlaps == [], "a partition was read by two consumers at once"
    entries = [(s, e) for _, s, e in handled]  # entry ids are unique per stream only
    assert len(entries) == len(set(entries)), "an entry was handled twice"
    assert sorted(entries) == sorted(appended), "an entry was not handled"
    for stream in keys.streams("conv"):
        order = [e for _, s, e in handled if s == stream]
        assert order == [e for s, e in appended if s == stream], f"order broken on {stream}"


async def test_handlers_log_under_the_correlation_id_of_their_entry(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender
) -> None:
    import msgspec

    from eventbot.logs import correlation_id

    event = msgspec.structs.replace(message(9, "x"), correlation_id="tg:1:update:42")
    await appender.append(event)
    seen: list[str | None] = []

    async def remember(batch: Batch) -> None:
        seen.append(correlation_id.get())

    async with running(make(redis, keys, codec, Recorder(remember), "c", mode="concurrent")):
        await eventually(lambda: seen == ["tg:1:update:42"])
    assert correlation_id.get() is None


async def test_entries_a_handler_completed_together_are_acked_in_its_ack(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender
) -> None:
    # The agent answers two messages of a chat with one answer: acked one by one, a crash
    # between the two acks would redeliver one alone and have it answered again.
    first, second = message(4, "one"), message(4, "two")
    await appender.append_many([first, second])
    handed: dict[str, Batch] = {}
    second_handed, release = asyncio.Event(), asyncio.Event()

    async def handler(batch: Batch) -> list[str] | None:
        d = batch.deliveries[0]
        handed[d.event.text] = batch  # type: ignore[attr-defined]
        if d.event.text == "two":  # type: ignore[attr-defined]
            second_handed.set()
            await release.wait()  # its own handler is still running when it must be acked already
            return None
        await second_handed.wait()
        return [d.entry_id, handed["two"].deliveries[0].entry_id]

    async with running(make(redis, keys, codec, handler, "c", mode="concurrent")):
        await eventually(lambda: second_handed.is_set())
        await eventually(lambda: _zero(pending_total(redis, keys)))
        release.set()


async def test_a_handler_left_behind_by_a_failed_heartbeat_is_not_reported_lost(
    redis: Redis, keys: Keys, codec: EventCodec
) -> None:
    """Redis goes away mid-handler: the batch stays pending for later, and asyncio logs no 'never retrieved'."""
    import gc

    from redis.exceptions import ConnectionError as RedisConnectionError

    from eventbot.consumer import Delivery

    class HeartbeatFails:  # Redis, except that the heartbeat's XCLAIM finds it gone
        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return getattr(redis, name)

        async def xclaim(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            raise RedisConnectionError("Redis went away")

    async def handler(batch: Batch) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise RuntimeError("its clean-up needed the store too") from None

    consumer = make(HeartbeatFails(), keys, codec, handler, "c1", claim_idle_ms=30)  # type: ignore[arg-type]
    stream = keys.stream("conv", 0)
    batch = Batch("g", stream, "conv", 0, (Delivery(stream, "1-0", message(1, "hi"), 1),))
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _, context: reported.append(context["message"]))
    try:
        with pytest.raises(RedisConnectionError):
            await consumer._with_heartbeat(batch)
        await asyncio.sleep(0.05)  # the abandoned handler ends, with its error
        gc.collect()  # a task whose error nobody read says so when it is collected
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert reported == []
