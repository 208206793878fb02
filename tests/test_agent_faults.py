"""The agent under stress: TTFT, /stop, a short balance, model faults. Real clients, both fakes, real Redis."""

from __future__ import annotations

import asyncio
import math

import pytest

from eventbot.fakes.anthropic import Fault
from eventbot.fakes.telegram import TgUser
from events import BalanceCharged, BalanceReleased, BalanceReserved, Usage
from services.agent.answer import CUT_OFF, STOPPED, TOP_UP
from services.agent.pricing import DEFAULT_PRICES
from tests.agent_world import World, forbid_postgres
from tests.waiting import eventually

ADA = TgUser(id=2001, first_name="Ada")
HAIKU = DEFAULT_PRICES.price("claude-haiku-4-5")


@pytest.fixture
async def world(redis, redis_server_url, keys, codec, appender, ledger, monkeypatch):
    forbid_postgres(monkeypatch)
    async with World(redis, redis_server_url, keys, codec, appender, ledger) as w:
        yield w


def of(events: list, cls: type) -> list:
    return [e for e in events if isinstance(e, cls)]


async def test_first_delta_reaches_telegram_before_the_model_produces_the_second(world: World) -> None:
    shown_before_second: list[str] = []

    async def before_delta(request_index: int, index: int) -> None:
        if index == 1:
            # Hold the model until the bot showed something (or give up after 5 s, and the assert fails).
            try:
                await world.telegram.wait_for(lambda: bool(world.telegram.drafts(ADA.id)), timeout=5)
            except TimeoutError:
                return
            shown_before_second.append(world.telegram.drafts(ADA.id)[0].text)

    world.claude.before_delta = before_delta
    await world.credit(ADA, 10**7)
    await world.start_agent(world.settings(draft_interval_ms=1000))
    await world.says(ADA, "quick")
    await world.wait_events(ADA.id, "response.completed")
    first_delta = world.claude.deltas_of(0)[0].text
    assert shown_before_second == [first_delta]
    first_draft = world.telegram.drafts(ADA.id)[0]
    assert first_draft.at < world.claude.deltas_of(0)[1].produced_at


async def test_stop_keeps_the_partial_text_charges_what_was_produced_and_releases_the_rest(world: World) -> None:
    world.claude.answer_chars, world.claude.delta_chars, world.claude.delta_delay_s = 3000, 20, 0.03
    await world.credit(ADA, 10**7)
    await world.start_agent()
    await world.says(ADA, "tell me a long story")
    await asyncio.wait_for(_until(lambda: len(world.claude.deltas_of(0)) >= 10), 10)
    await world.says(ADA, "/stop")
    [cancelled] = await world.wait_events(ADA.id, "response.cancelled")
    assert cancelled.reason == "stop"
    assert 10 * 20 <= len(cancelled.partial_text) < 3000
    [message] = world.replies(ADA.id)
    assert message.text == cancelled.partial_text + STOPPED
    await world.settled(ADA)
    ledger = await world.ledger_events(ADA.id)
    [hold], [charge], [release] = of(ledger, BalanceReserved), of(ledger, BalanceCharged), of(ledger, BalanceReleased)
    produced = math.ceil(len(cancelled.partial_text) / 4)
    assert charge.output_tokens == produced and cancelled.usage.output_tokens == produced
    assert charge.amount == DEFAULT_PRICES.cost("claude-haiku-4-5", cancelled.usage) == cancelled.cost > 0
    assert charge.hold_settled + release.amount == hold.amount
    assert (await world.ledger.head(ADA.id)).held == 0
    assert len(world.claude.deltas_of(0)) < 150  # the stream was cut, not read to the end


@pytest.mark.parametrize("shown", [True, False], ids=["thinking-summarised", "thinking-omitted"])
async def test_stop_while_the_model_thinks_charges_the_call_and_shows_no_text(world: World, shown: bool) -> None:
    # Current models think before they write, billed like output; with display "omitted" the
    # thinking block carries no text at all. Stopped then, the call still cost its input.
    world.claude.thinking_chars, world.claude.thinking_shown = 4000, shown
    world.claude.delta_chars, world.claude.delta_delay_s = 20, 0.02  # 200 thinking deltas: 4 s of thinking
    await world.credit(ADA, 10**7)
    await world.start_agent()
    await world.says(ADA, "think hard")
    await asyncio.wait_for(_until(lambda: len(world.claude.requests) == 1), 10)
    await asyncio.sleep(0.5)
    await world.says(ADA, "/stop")
    [cancelled] = await world.wait_events(ADA.id, "response.cancelled")
    assert world.claude.deltas_of(0) == [], "stopped before any text, as intended"
    assert cancelled.reason == "stop" and cancelled.partial_text == ""
    assert cancelled.usage.input_tokens > 0 and (cancelled.usage.output_tokens > 0) == shown
    await world.settled(ADA)
    ledger = await world.ledger_events(ADA.id)
    [hold], [charge], [release] = of(ledger, BalanceReserved), of(ledger, BalanceCharged), of(ledger, BalanceReleased)
    assert charge.amount == cancelled.cost == DEFAULT_PRICES.cost("claude-haiku-4-5", cancelled.usage) > 0
    assert charge.hold_settled + release.amount == hold.amount and (await world.ledger.head(ADA.id)).held == 0


async def test_a_message_and_its_stop_read_together_end_stopped_with_no_call_and_no_hold_left(world: World) -> None:
    """The agent finds the message and the /stop in one read (or in a takeover of both): the message
    is not dropped unanswered; it ends cancelled, the model is never called, its hold is released."""
    await world.credit(ADA, 10**7)
    message = await world.says(ADA, "never mind")
    await world.says(ADA, "/stop")
    await world.start_agent()
    [cancelled] = await world.wait_events(ADA.id, "response.cancelled")
    assert cancelled.reason == "stop" and cancelled.partial_text == "" and cancelled.cost == 0
    [started] = [e for e in await world.conv_events(ADA.id) if e.type_name() == "response.started"]
    assert started.message_ids == (message.message_id,) and started.response_id == cancelled.response_id
    assert world.claude.requests == []
    await world.settled(ADA)
    ledger = await world.ledger_events(ADA.id)
    [hold], [release] = of(ledger, BalanceReserved), of(ledger, BalanceReleased)
    assert release.amount == hold.amount and of(ledger, BalanceCharged) == []
    assert (await world.ledger.head(ADA.id)).held == 0
    assert world.replies(ADA.id) == []


async def test_a_message_answered_already_is_not_answered_again_merged_with_a_newer_one(world: World) -> None:
    """Handed over again after its answer (an ack lost to a kill, a handler retried) and merged
    with the user's next message: only the next message is answered, and only once."""
    import msgspec

    from eventbot.ids import new_event_id

    await world.credit(ADA, 10**7)
    await world.start_agent(merge_window_s=0.3)
    first = await world.says(ADA, "first question")
    await world.wait_events(ADA.id, "response.completed")
    again = msgspec.structs.replace(first, event_id=new_event_id())  # the same message, delivered again
    await world.appender.append_many([again])
    second = await world.says(ADA, "second question")
    completed = await world.wait_events(ADA.id, "response.completed", n=2)
    await asyncio.sleep(0.5)
    started = [e for e in await world.conv_events(ADA.id) if e.type_name() == "response.started"]
    assert [s.message_ids for s in started] == [(first.message_id,), (second.message_id,)]
    assert len(await world.wait_events(ADA.id, "response.completed", n=2)) == 2 == len(completed)
    assert len(world.claude.requests) == 2


async def test_a_short_balance_lowers_max_tokens_and_never_overdraws_beyond_the_input_estimate(world: World) -> None:
    world.claude.answer_chars = 8000  # 2000 tokens wanted, far more than the balance covers
    await world.credit(ADA, 1_500)  # micro-USD: ~250 Haiku output tokens
    await world.start_agent()
    await world.says(ADA, "go on at length")
    [completed] = await world.wait_events(ADA.id, "response.completed")
    [started] = await world.wait_events(ADA.id, "response.started")
    await world.settled(ADA)
    ledger = await world.ledger_events(ADA.id)
    [hold], [charge] = of(ledger, BalanceReserved), of(ledger, BalanceCharged)
    assert started.max_tokens < 2048 and completed.stop_reason == "max_tokens"
    assert completed.usage.output_tokens == started.max_tokens
    assert hold.amount <= 1_500
    head = await world.ledger.head(ADA.id)
    # Output can't exceed what was held; only input beyond the estimate may take the balance below zero.
    estimated_input_cost = hold.amount - math.ceil(started.max_tokens * HAIKU.output / 1_000_000)
    actual_input_cost = charge.amount - math.ceil(completed.usage.output_tokens * HAIKU.output / 1_000_000)
    assert head.balance >= -max(0, actual_input_cost - estimated_input_cost) - 1
    assert head.held == 0


async def test_no_useful_answer_affordable_means_a_top_up_hint_and_no_call(world: World) -> None:
    await world.credit(ADA, 20)
    await world.start_agent()
    await world.says(ADA, "hello?")
    [failed] = await world.wait_events(ADA.id, "response.failed")
    assert failed.cause == "insufficient_balance" and not failed.retryable
    assert [m.text for m in world.replies(ADA.id)] == [TOP_UP]
    assert world.claude.requests == []
    assert of(await world.ledger_events(ADA.id), BalanceReserved) == []


async def test_529_before_the_first_token_is_retried_and_answered(world: World) -> None:
    world.claude.fail_next(Fault("http_529"), Fault("http_429"))
    await world.credit(ADA, 10**7)
    await world.start_agent()
    await world.says(ADA, "are you there")
    [completed] = await world.wait_events(ADA.id, "response.completed")
    assert len(world.claude.requests) == 3
    assert [m.text for m in world.replies(ADA.id)] == [completed.text]
    retries = {s.labels["cause"]: s.value for m in world.registry.collect() if m.name == "bot_model_retries"
               for s in m.samples if s.name == "bot_model_retries_total"}
    assert retries == {"overloaded": 1.0, "rate_limited": 1.0}
    await world.settled(ADA)
    ledger = await world.ledger_events(ADA.id)
    assert len(of(ledger, BalanceReserved)) == len(of(ledger, BalanceCharged)) == 1


async def test_error_mid_stream_ends_with_a_note_and_a_fair_charge(world: World) -> None:
    world.claude.fail_next(Fault("error_event", after_deltas=4))
    await world.credit(ADA, 10**7)
    await world.start_agent()
    await world.says(ADA, "explain")
    [failed] = await world.wait_events(ADA.id, "response.failed")
    assert failed.cause == "overloaded" and failed.retryable
    partial = "".join(d.text for d in world.claude.deltas_of(0))
    assert failed.partial_text == partial and len(world.claude.deltas_of(0)) == 4
    assert [m.text for m in world.replies(ADA.id)] == [partial + CUT_OFF]
    assert len(world.claude.requests) == 1  # not retried: the user had seen text already
    await world.settled(ADA)
    ledger = await world.ledger_events(ADA.id)
    [hold], [charge], [release] = of(ledger, BalanceReserved), of(ledger, BalanceCharged), of(ledger, BalanceReleased)
    assert charge.output_tokens == math.ceil(len(partial) / 4) and charge.input_tokens == failed.usage.input_tokens > 0
    assert charge.amount == DEFAULT_PRICES.cost("claude-haiku-4-5", failed.usage) == failed.cost
    assert charge.hold_settled + release.amount == hold.amount


async def test_model_failing_before_any_text_tells_the_user_and_releases_the_hold(world: World) -> None:
    world.claude.fail_next(*[Fault("http_529")] * 4)
    await world.credit(ADA, 10**7)
    await world.start_agent()
    await world.says(ADA, "anyone?")
    [failed] = await world.wait_events(ADA.id, "response.failed")
    assert failed.retryable and failed.usage == Usage() and failed.cost == 0
    assert len(world.claude.requests) == 4  # bounded: the retry policy allows 4 calls
    ledger = await world.ledger_events(ADA.id)
    [hold], [release] = of(ledger, BalanceReserved), of(ledger, BalanceReleased)
    assert release.amount == hold.amount and of(ledger, BalanceCharged) == []
    assert len(world.replies(ADA.id)) == 1


async def _until(predicate) -> None:  # type: ignore[no-untyped-def]
    while not predicate():
        await asyncio.sleep(0.01)


async def test_telegram_flood_control_slows_updates_but_the_answer_arrives_whole(world: World) -> None:
    world.claude.answer_chars, world.claude.delta_delay_s = 600, 0.01
    await world.credit(ADA, 10**7)
    await world.start_agent()
    world.telegram.flood(retry_after=1, times=3, chat_id=ADA.id)
    await world.says(ADA, "while Telegram is flooded")
    [completed] = await world.wait_events(ADA.id, "response.completed", timeout=20)
    assert [m.text for m in world.replies(ADA.id)] == [completed.text] and len(completed.text) == 600
    refused = [c for c in world.telegram.calls() if c.status == 429]
    assert refused  # Telegram did push back, and the final message still came through once
    assert len(world.telegram.calls("sendMessage")) == 1 + sum(1 for c in refused if c.method == "sendMessage")


async def test_an_answer_delivered_while_redis_is_down_is_recorded_once_not_answered_again(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis goes away between the final message and its terminal event: the agent waits for it
    and records that answer, instead of failing and answering the message a second time."""
    from eventbot.appender import Appender
    from eventbot.errors import StoreUnavailable
    from events import ResponseCompleted

    append_many = Appender.append_many
    refused: list[float] = []

    async def down_for_the_end(self, events):  # type: ignore[no-untyped-def]
        if any(isinstance(e, ResponseCompleted) for e in events) and len(refused) < 4:
            refused.append(asyncio.get_running_loop().time())
            raise StoreUnavailable("append failed: ConnectionError")
        return await append_many(self, events)

    monkeypatch.setattr(Appender, "append_many", down_for_the_end)
    await world.credit(ADA, 10**7)
    await world.start_agent()
    await world.says(ADA, "answer me through an outage")
    completed = await world.wait_events(ADA.id, "response.completed", timeout=15)
    await world.settled(ADA)
    await asyncio.sleep(0.5)  # a second answer, if one were coming, would have been asked for by now
    assert len(refused) == 4, "the terminal append was never refused: nothing was tested"
    assert len(world.claude.requests) == 1, "the message was answered a second time"
    assert len(world.replies(ADA.id)) == 1 and len(completed) == 1
    assert len(of(await world.ledger_events(ADA.id), BalanceCharged)) == 1


async def test_a_message_whose_ack_was_lost_does_not_cancel_the_next_answer(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first answer is delivered and its XACK lost to a blip; the consumer hands it over again
    while the user's next question is being answered. It must be taken for what it is, a message
    answered already: before, it looked new, superseded the answer in progress, and the merged
    retry found it answered and ended there, so the next question got no answer at all."""
    from redis.asyncio import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    from services.agent.main import GROUP

    xack = Redis.xack
    lost: list[tuple] = []
    blip = asyncio.Event()

    async def answered(name, ids) -> bool:  # type: ignore[no-untyped-def]
        entries = [entry for i in ids for entry in await world.redis.xrange(name, i, i)]
        return any(fields[b"t"] == b"message.received" for _, fields in entries)

    async def first_ack_lost(self, name, groupname, *ids):  # type: ignore[no-untyped-def]
        if groupname == GROUP and not lost and await answered(name, ids):
            lost.append(ids)
            await blip.wait()
            raise RedisConnectionError("connection lost before the ack")
        return await xack(self, name, groupname, *ids)

    monkeypatch.setattr(Redis, "xack", first_ack_lost)
    world.claude.answer_chars, world.claude.delta_chars, world.claude.delta_delay_s = 600, 10, 0.03
    await world.credit(ADA, 10**7)
    await world.start_agent()
    first = await world.says(ADA, "first question")
    await world.wait_events(ADA.id, "response.completed")
    await eventually(lambda: bool(lost), 10)
    second = await world.says(ADA, "second question")
    await eventually(lambda: len(world.claude.deltas_of(1)) >= 3, 10)
    blip.set()  # the ack fails now, and the first message comes back while the second streams
    completed = await world.wait_events(ADA.id, "response.completed", n=2, timeout=15)
    await asyncio.sleep(0.5)
    events = await world.conv_events(ADA.id)
    started = [e.message_ids for e in events if e.type_name() == "response.started"]
    assert started == [(first.message_id,), (second.message_id,)]
    assert not [e for e in events if e.type_name() == "response.cancelled"]
    assert len(completed) == 2 and len(world.claude.requests) == 2
    assert len(world.replies(ADA.id)) == 2
    stream = world.keys.stream("conv", world.keys.partition_of(first.partition_key))

    async def nothing_pending() -> bool:
        return (await world.redis.xpending(stream, GROUP))["pending"] == 0

    await eventually(nothing_pending, 10)  # both acked in the end
