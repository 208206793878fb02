"""Redis read models: read-your-writes, one round trip, cold rebuilds, profiles from any chat."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from eventbot.appender import Appender
from eventbot.ids import new_event_id
from eventbot.keys import Keys
from eventbot.ledger import Ledger
from eventbot.readmodels import ArchiveLog, Limits, ReadModelBuilder, RedisReadModels, StreamLog, limits_for
from eventbot.readmodels.log import decode_entries
from eventbot.readmodels.keys import ReadModelKeys
from eventbot.readmodels.positions import Position
import eventbot.readmodels.reader as reader_module
from eventbot.readmodels.fold import apply
from eventbot.readmodels.reader import TAIL_MAX
from events import EventCodec, ModelChanged, PromptChanged, ThreadCreated, UserSeen, chat_key
from services.projector.handlers import PostgresHandler, ReadModelHandler
from services.projector.pg_projection import PostgresProjection
from services.projector.synthetic import Traffic
from tests.factories import credit, message, now
from tests.test_projector_helpers import LIVE, append, consumer, drained, eventually, migrated_pool, running


class CountingRedis:
    """Counts round trips: every pipeline execute and every direct command."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self.round_trips = 0

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        pipe = self._redis.pipeline(*args, **kwargs)
        execute = pipe.execute

        async def counted(*a: Any, **k: Any) -> Any:
            self.round_trips += 1
            return await execute(*a, **k)

        pipe.execute = counted  # type: ignore[method-assign]
        return pipe

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._redis, name)
        if callable(attr):
            async def counted(*a: Any, **k: Any) -> Any:
                self.round_trips += 1
                return await attr(*a, **k)
            return counted
        return attr


def _builder(redis: Redis, keys: Keys, codec: EventCodec) -> ReadModelBuilder:
    return ReadModelBuilder(redis, keys, Limits(history_turns=5), StreamLog(redis, keys, codec))


async def test_a_read_right_after_an_append_sees_it(redis: Redis, keys: Keys, codec: EventCodec, appender: Appender) -> None:
    reader = RedisReadModels(redis, keys, Limits(history_turns=5))
    async with running(consumer(redis, keys, codec, ReadModelHandler(_builder(redis, keys, codec)), "readmodel", "rm")):
        for i in range(20):
            appended = await appender.append(message(42, f"question {i}"))
            assert await reader.wait_applied(appended.stream, appended.entry_id, timeout=10)
            ctx = await reader.context(42, None, 42)
            assert ctx.history[-1].text == f"question {i}", "the barrier let a stale read through"


async def test_a_context_read_after_an_append_sees_it_in_one_round_trip_once_applied(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender
) -> None:
    reader = RedisReadModels(redis, keys, Limits(history_turns=5))
    async with running(consumer(redis, keys, codec, ReadModelHandler(_builder(redis, keys, codec)), "readmodel", "rm")):
        for i in range(20):
            appended = await appender.append(message(45, f"question {i}"))
            ctx = await reader.context_after(appended.entry_id, 45, None, 45, timeout=10)
            # Whole history: a batch applied while the context was read must be neither lost nor folded twice.
            assert ctx is not None and [t.text for t in ctx.history] == [f"question {j}" for j in range(max(0, i - 4), i + 1)]
        await eventually(lambda: drained(redis, keys, "readmodel"))
    counting = CountingRedis(redis)
    counted = RedisReadModels(counting, keys, Limits(history_turns=5))  # type: ignore[arg-type]
    counted._gen = 1
    assert await counted.context_after(appended.entry_id, 45, None, 45, timeout=10) is not None
    assert counting.round_trips == 1, "an applied barrier must cost no round trip of its own"


async def test_a_context_read_folds_what_the_builder_has_not_applied_yet_in_one_round_trip(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender
) -> None:
    chat = 47
    neighbour = next(c for c in range(1000, 2000) if keys.partition_of(chat_key(c)) == keys.partition_of(chat_key(chat)))
    async with running(consumer(redis, keys, codec, ReadModelHandler(_builder(redis, keys, codec)), "readmodel", "rm")):
        await appender.append(message(chat, "applied"))
        await eventually(lambda: drained(redis, keys, "readmodel"))
    # The builder is stopped: what follows is only in the stream.
    changed = ModelChanged(event_id=new_event_id(), occurred_at=now(), partition_key=chat_key(chat), chat_id=chat,
                           user_id=chat, model="claude-opus-4-1")
    await append(appender, [changed, message(chat, "one"), message(neighbour, "not this chat"), message(chat, "two")])
    last = await appender.append(message(chat, "the one being answered"))
    before = str(Position.parse(last.entry_id).previous())
    counting = CountingRedis(redis)
    reader = RedisReadModels(counting, keys, Limits(history_turns=5), codec=codec)  # type: ignore[arg-type]
    folded = await reader.context_after(before, chat, None, chat, timeout=0.2)
    assert counting.round_trips == 1, "the unapplied tail must come with the context, not after a wait"
    assert folded is not None and [t.text for t in folded.history] == ["applied", "one", "two"]
    assert folded.user.model == "claude-opus-4-1"
    async with running(consumer(redis, keys, codec, ReadModelHandler(_builder(redis, keys, codec)), "readmodel", "rm")):
        await eventually(lambda: drained(redis, keys, "readmodel"))
    built = await RedisReadModels(redis, keys, Limits(history_turns=5)).context(chat, None, chat)
    assert [t.text for t in built.history] == ["applied", "one", "two", "the one being answered"]
    assert built.history[:3] == folded.history and built.user.model == folded.user.model, "folded unlike the builder"


async def test_a_request_sends_the_same_history_whether_the_read_model_holds_the_message_yet_or_not(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender
) -> None:
    """A retry or a takeover reads the chat after its message (and later ones) were applied; the
    request it builds must be the first attempt's, or a retried answer is a different answer."""
    from eventbot.settings import Settings
    from services.agent.request import build_request

    settings = Settings(history_turns=2)
    limits = limits_for(settings)
    builder = ReadModelBuilder(redis, keys, limits, StreamLog(redis, keys, codec))
    async with running(consumer(redis, keys, codec, ReadModelHandler(builder), "readmodel", "rm")):
        for i in range(4):
            await appender.append(message(50, f"earlier {i}"))
        await eventually(lambda: drained(redis, keys, "readmodel"))
    asked = await appender.append(message(50, "asked"))
    event = next(e for _, e in decode_entries(codec, await redis.xrange(asked.stream, asked.entry_id, asked.entry_id)))
    before = str(Position.parse(asked.entry_id).previous())
    reader = RedisReadModels(redis, keys, limits, codec=codec)
    first = await reader.context_after(before, 50, None, 50, timeout=1)
    async with running(consumer(redis, keys, codec, ReadModelHandler(builder), "readmodel", "rm")):
        await appender.append(message(50, "and later"))
        await eventually(lambda: drained(redis, keys, "readmodel"))
    again = await reader.context_after(before, 50, None, 50, timeout=1)
    assert first is not None and again is not None
    assert "asked" not in [t.text for t in first.history] and "asked" in [t.text for t in again.history]

    async def request(ctx: Any) -> Any:
        return await build_request(ctx, [event], models=("m",), default_model="m", history_turns=settings.history_turns,
                                   files=None)  # type: ignore[arg-type]

    assert (await request(first)).messages == (await request(again)).messages


async def test_a_context_read_waits_for_the_builder_when_the_gap_is_long(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender
) -> None:
    async with running(consumer(redis, keys, codec, ReadModelHandler(_builder(redis, keys, codec)), "readmodel", "rm")):
        await appender.append(message(48, "applied"))
        await eventually(lambda: drained(redis, keys, "readmodel"))
    await append(appender, [message(48, f"unapplied {i}") for i in range(TAIL_MAX + 1)])
    last = await appender.append(message(48, "asked"))
    reader = RedisReadModels(redis, keys, Limits(history_turns=5), codec=codec)
    assert await reader.context_after(last.entry_id, 48, None, 48, timeout=0.2) is None
    async with running(consumer(redis, keys, codec, ReadModelHandler(_builder(redis, keys, codec)), "readmodel", "rm")):
        ctx = await reader.context_after(last.entry_id, 48, None, 48, timeout=10)
    assert ctx is not None and ctx.history[-1].text == "asked"


async def test_an_unapplied_entry_that_does_not_fold_is_left_to_the_builder(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(consumer(redis, keys, codec, ReadModelHandler(_builder(redis, keys, codec)), "readmodel", "rm")):
        await appender.append(message(49, "applied"))
        await eventually(lambda: drained(redis, keys, "readmodel"))
    poison = await appender.append(message(49, "poison"))
    last = await appender.append(message(49, "asked"))

    def failing(ref: Any, state: Any, event: Any, limits: Any) -> Any:
        if getattr(event, "text", None) == "poison":
            raise ValueError("does not fold")
        return apply(ref, state, event, limits)

    monkeypatch.setattr(reader_module, "apply", failing)
    reader = RedisReadModels(redis, keys, Limits(history_turns=5), codec=codec)
    assert await reader.context_after(last.entry_id, 49, None, 49, timeout=0.2) is None, "folded around a poison entry"
    # The builder gets past it (here: applies it); the reader then reads the rest from the model.
    async with running(consumer(redis, keys, codec, ReadModelHandler(_builder(redis, keys, codec)), "readmodel", "rm")):
        assert await reader.wait_applied(poison.stream, poison.entry_id, timeout=10)
        ctx = await reader.context_after(last.entry_id, 49, None, 49, timeout=10)
    assert ctx is not None and ctx.history[-1].text == "asked"


async def test_a_context_read_after_an_unapplied_append_gives_up_at_its_timeout(
    redis: Redis, keys: Keys, appender: Appender
) -> None:
    appended = await appender.append(message(46, "nobody is projecting"))
    reader = RedisReadModels(redis, keys, Limits())
    assert await reader.context_after(appended.entry_id, 46, None, 46, timeout=0.2) is None


async def test_wait_applied_times_out_when_nothing_applies(redis: Redis, keys: Keys, appender: Appender) -> None:
    appended = await appender.append(message(43, "nobody is projecting"))
    reader = RedisReadModels(redis, keys, Limits())
    assert not await reader.wait_applied(appended.stream, appended.entry_id, timeout=0.2)


async def test_context_is_one_round_trip_and_holds_user_thread_history_files(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender, ledger: Ledger
) -> None:
    thread = ThreadCreated(event_id=new_event_id(), occurred_at=now(), partition_key=chat_key(-7, 3), chat_id=-7,
                           topic_id=3, thread_id=new_event_id(), user_id=9, title="plans")
    seen = UserSeen(event_id=new_event_id(), occurred_at=now(), partition_key=chat_key(-7, 3), chat_id=-7, topic_id=3,
                    user_id=9, username="nine", first_name="Nina")
    await append(appender, [seen, thread, message(-7, "hi all", user_id=9, topic_id=3)])
    await ledger.transact(9, lambda head: [credit(9, 5_000_000)])
    async with running(consumer(redis, keys, codec, ReadModelHandler(_builder(redis, keys, codec)), "readmodel", "rm")):
        await eventually(lambda: drained(redis, keys, "readmodel"))
    counting = CountingRedis(redis)
    reader = RedisReadModels(counting, keys, Limits())  # type: ignore[arg-type]
    reader._gen = 1
    ctx = await reader.context(-7, 3, 9)
    assert counting.round_trips == 1
    assert (ctx.user.username, ctx.user.first_name, ctx.user.balance) == ("nine", "Nina", 5_000_000)
    assert ctx.thread is not None and ctx.thread.title == "plans" and ctx.thread.topic_id == 3
    assert [t.text for t in ctx.history] == ["hi all"]
    assert ctx.user.recent_ops[-1].amount == 5_000_000


async def test_a_profile_change_in_any_chat_wins_by_time(redis: Redis, keys: Keys, codec: EventCodec, appender: Appender) -> None:
    # User 11 changes model in a group and later in private: partitions differ, the later change wins.
    base = now()
    early = ModelChanged(event_id=new_event_id(), occurred_at=base, partition_key=chat_key(-501), chat_id=-501, user_id=11, model="old")
    late = ModelChanged(event_id=new_event_id(), occurred_at=base + timedelta(seconds=1), partition_key=chat_key(11), chat_id=11,
                        user_id=11, model="new")
    prompt = PromptChanged(event_id=new_event_id(), occurred_at=base, partition_key=chat_key(-501), chat_id=-501, user_id=11, prompt="be brief")
    assert keys.partition_of(early.partition_key) != keys.partition_of(late.partition_key)
    await append(appender, [late])
    await append(appender, [early, prompt])  # appended after, but older
    async with running(consumer(redis, keys, codec, ReadModelHandler(_builder(redis, keys, codec)), "readmodel", "rm")):
        await eventually(lambda: drained(redis, keys, "readmodel"))
    user = await RedisReadModels(redis, keys, Limits()).user(11)
    assert user is not None and (user.model, user.prompt) == ("new", "be brief")


async def test_a_flushed_read_model_is_rebuilt_from_the_log(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender, database_url: str
) -> None:
    traffic = Traffic(seed=5, users=5)
    await append(appender, traffic.events(500))
    pool = await migrated_pool(database_url)
    try:
        log = ArchiveLog(pool, redis, keys, codec, LIVE)
        builder = ReadModelBuilder(redis, keys, Limits(history_turns=5), log)
        projector = consumer(redis, keys, codec, PostgresHandler(PostgresProjection(pool, codec, LIVE)), "postgres", "pg")
        async with running(projector, consumer(redis, keys, codec, ReadModelHandler(builder), "readmodel", "rm")):
            await eventually(lambda: drained(redis, keys, "readmodel"))
            await eventually(lambda: drained(redis, keys, "postgres"))
        reader = RedisReadModels(redis, keys, Limits(history_turns=5), log)
        user = traffic.users[0]
        warm_user = await reader.user(user)
        warm_ctx = await reader.context(user, None, user)
        # Trim the streams to nothing (all archived and acked) and lose every read-model key.
        for stream in keys.streams("conv") + keys.streams("ledger"):
            await redis.xtrim(stream, maxlen=0)
        async for key in redis.scan_iter(match=f"{ReadModelKeys(keys).prefix(1)}*"):
            await redis.delete(key)
        await redis.delete(ReadModelKeys(keys).pointer)
        cold_user = await reader.user(user)
        cold_ctx = await reader.context(user, None, user)
        assert cold_user == warm_user and cold_ctx == warm_ctx, "the reader answered from the log"
        # New traffic: the builder fills the lost generation from the archive, then applies it.
        more = traffic.events(60)
        await append(appender, more)
        async with running(consumer(redis, keys, codec, ReadModelHandler(builder), "readmodel", "rm2")):
            await eventually(lambda: drained(redis, keys, "readmodel"))
        for u, head in traffic.heads.items():
            view = await reader.user(u)
            assert view is not None and (view.balance, view.held) == (head.balance, head.held)
    finally:
        await pool.close()


async def test_the_builder_survives_a_script_flush(redis: Redis, keys: Keys, codec: EventCodec, appender: Appender) -> None:
    builder = _builder(redis, keys, codec)
    reader = RedisReadModels(redis, keys, Limits(history_turns=5))
    async with running(consumer(redis, keys, codec, ReadModelHandler(builder), "readmodel", "rm")):
        first = await appender.append(message(44, "before the flush"))
        assert await reader.wait_applied(first.stream, first.entry_id, timeout=10)
        await redis.script_flush()
        second = await appender.append(message(44, "after the flush"))
        assert await reader.wait_applied(second.stream, second.entry_id, timeout=10)
    ctx = await reader.context(44, None, 44)
    assert [t.text for t in ctx.history] == ["before the flush", "after the flush"]


async def _applied(builder: ReadModelBuilder, appender: Appender, event: Any) -> Any:
    at = await appender.append(event)
    assert await builder.apply(at.stream, [(at.entry_id, event)]) == 1
    return at


async def test_a_batch_is_two_round_trips_once_the_builder_knows_the_generation(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender,
) -> None:
    counting = CountingRedis(redis)
    builder = ReadModelBuilder(counting, keys, Limits(history_turns=5), StreamLog(redis, keys, codec))  # type: ignore[arg-type]
    trips = []
    for text in ("one", "two", "three"):
        before = counting.round_trips
        await _applied(builder, appender, message(45, text))
        trips.append(counting.round_trips - before)
    assert trips[1:] == [2, 2], trips  # read (the pointer with it) and write


async def test_the_builder_writes_where_the_pointer_points_at_each_batch(
    redis: Redis, keys: Keys, codec: EventCodec, appender: Appender,
) -> None:
    rm = ReadModelKeys(keys)
    builder = _builder(redis, keys, codec)
    first = await _applied(builder, appender, message(46, "one"))  # generation 1, now known to the builder
    partition = keys.partition_of(chat_key(46))
    await redis.hset(rm.pointer, "next", 2)  # a replay began: profiles go to both generations
    seen = UserSeen(event_id=new_event_id(), occurred_at=now(), partition_key=chat_key(46), chat_id=46, user_id=46, first_name="Ann")
    await _applied(builder, appender, seen)
    assert await redis.exists(rm.user_profile(1, 46)) and await redis.exists(rm.user_profile(2, 46))
    await redis.hset(rm.pointer, "live", 2)  # ...and switched
    await redis.hdel(rm.pointer, "next")
    last = await _applied(builder, appender, message(46, "two"))
    assert (await redis.hget(rm.position(2, partition), last.stream)) == last.entry_id.encode()
    assert (await redis.hget(rm.position(1, partition), first.stream)) != last.entry_id.encode()
    ctx = await RedisReadModels(redis, keys, Limits(history_turns=5)).context(46, None, 46)
    assert [t.text for t in ctx.history] == ["one", "two"]  # generation 2, filled from the log first
