"""The agent end to end: real aiogram and anthropic clients against the two fakes, real Redis.

What a user sees in Telegram, what was sent to Claude, and what the ledger says.
"""

from __future__ import annotations

import asyncio

import pytest

from eventbot.fakes.anthropic import answer_text
from eventbot.fakes.telegram import TgUser, visible_length
from events import BalanceCharged, BalanceReleased, BalanceReserved
from tests.agent_world import World, forbid_postgres

ADA = TgUser(id=1001, first_name="Ada")
BOB = TgUser(id=1002, first_name="Bob")
DOLLAR = 1_000_000


@pytest.fixture
async def world(redis, redis_server_url, keys, codec, appender, ledger, monkeypatch):
    forbid_postgres(monkeypatch)
    async with World(redis, redis_server_url, keys, codec, appender, ledger) as w:
        yield w


async def test_three_turns_carry_the_history_and_users_never_see_each_other(world: World) -> None:
    await world.credit(ADA, 10 * DOLLAR)
    await world.credit(BOB, 10 * DOLLAR)
    await world.start_agent()
    for turn in range(1, 4):
        await asyncio.gather(world.says(ADA, f"ada question {turn}"), world.says(BOB, f"bob question {turn}"))
        await world.wait_replies(ADA.id, turn)
        await world.wait_replies(BOB.id, turn)
        await world.wait_events(ADA.id, "response.completed", turn)
        await world.wait_events(BOB.id, "response.completed", turn)

    requests = {r.texts()[-1]: r for r in world.claude.requests}
    third = requests["ada question 3"]
    roles = [m["role"] for m in third.messages]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    earlier_answers = [m.text for m in world.replies(ADA.id)[:2]]
    assert third.texts() == ["ada question 1", earlier_answers[0], "ada question 2", earlier_answers[1], "ada question 3"]
    # Each answer is the model's text for that request, as the user reads it.
    assert world.replies(ADA.id)[2].text == answer_text(third.body, world.claude.answer_chars)
    for r in world.claude.requests:
        texts = " ".join(r.texts())
        assert not ("ada" in texts and "bob" in texts)


async def test_long_answer_arrives_as_three_messages_within_the_limit(world: World) -> None:
    world.claude.answer_chars = 10_000
    world.claude.delta_chars = 200
    await world.credit(ADA, 10 * DOLLAR)
    await world.start_agent(world.settings(max_tokens=4096))
    await world.says(ADA, "write a lot")
    [completed] = await world.wait_events(ADA.id, "response.completed")
    replies = world.replies(ADA.id)
    assert len(replies) == 3 and len(completed.text) == 10_000
    assert all(visible_length(m.text, "HTML") <= 4096 for m in replies)
    assert list(completed.telegram_message_ids) == [m.message_id for m in replies]


async def test_billing_charges_price_table_times_reported_usage(world: World) -> None:
    await world.credit(ADA, 10 * DOLLAR)
    await world.start_agent()
    await world.says(ADA, "price me")
    [completed] = await world.wait_events(ADA.id, "response.completed")
    await world.settled(ADA)
    ledger = await world.ledger_events(ADA.id)
    [hold] = [e for e in ledger if isinstance(e, BalanceReserved)]
    [charge] = [e for e in ledger if isinstance(e, BalanceCharged)]
    [release] = [e for e in ledger if isinstance(e, BalanceReleased)]
    # Haiku 4.5 list prices, USD per million tokens: input 1, output 5, cache write 1.25, cache read 0.10.
    u = completed.usage
    expected = -(-(u.input_tokens * 1_000_000 + u.output_tokens * 5_000_000 + u.cache_write_tokens * 1_250_000
                   + u.cache_read_tokens * 100_000) // 1_000_000)
    assert charge.amount == expected == completed.cost > 0 and charge.model == "claude-haiku-4-5"
    assert (charge.input_tokens, charge.output_tokens, charge.cache_write_tokens) == (u.input_tokens, u.output_tokens, u.cache_write_tokens)
    assert u.output_tokens == -(-len(completed.text) // 4)  # what the fake reported
    assert charge.charge_id == completed.response_id == hold.hold_id and charge.price_version == "anthropic-2026-11"
    assert charge.hold_settled + release.amount == hold.amount
    head = await world.ledger.head(ADA.id)
    assert head.held == 0 and head.balance == 10 * DOLLAR - charge.amount

    # What an operator sees on /metrics.
    metrics = {(s.name, tuple(sorted(s.labels.items()))): s.value for m in world.registry.collect() for s in m.samples}
    assert metrics[("bot_ttft_seconds_count", (("span", "model"),))] == 1
    assert metrics[("bot_ttft_seconds_count", (("span", "message"),))] == 1
    assert metrics[("bot_cost_micro_usd_total", (("model", "claude-haiku-4-5"),))] == charge.amount
    assert metrics[("bot_tokens_total", (("kind", "output"), ("model", "claude-haiku-4-5")))] == u.output_tokens
    assert metrics[("bot_responses_total", (("outcome", "completed"),))] == 1
    assert metrics[("bot_holds_outstanding", ())] == 0 and metrics[("bot_active_generations", ())] == 0


async def test_a_model_that_thinks_first_shows_only_its_answer_and_bills_the_thinking(world: World) -> None:
    # The current models (claude-sonnet-5-5, claude-opus-5-5) think before they answer by default.
    world.claude.thinking_chars = 400
    await world.credit(ADA, 10 * DOLLAR)
    await world.start_agent()
    await world.says(ADA, "think first")
    [completed] = await world.wait_events(ADA.id, "response.completed")
    [request] = world.claude.requests
    assert world.replies(ADA.id)[-1].text == completed.text == answer_text(request.body, world.claude.answer_chars)
    assert completed.usage.output_tokens == 400 // 4 + -(-len(completed.text) // 4)
    await world.settled(ADA)
    [charge] = [e for e in await world.ledger_events(ADA.id) if isinstance(e, BalanceCharged)]
    assert charge.output_tokens == completed.usage.output_tokens and charge.amount == completed.cost


def test_postgres_is_really_forbidden_in_these_tests(monkeypatch) -> None:
    import psycopg

    forbid_postgres(monkeypatch)
    with pytest.raises(AssertionError, match="Postgres"):
        psycopg.connect("postgresql://127.0.0.1:1/none")


async def test_a_message_during_an_answer_restarts_it_with_both(world: World) -> None:
    world.claude.answer_chars, world.claude.delta_chars, world.claude.delta_delay_s = 2000, 20, 0.03
    await world.credit(ADA, 10 * DOLLAR)
    await world.start_agent()
    await world.says(ADA, "first thought")
    await world.telegram.wait_for(lambda: len(world.telegram.drafts(ADA.id)) >= 1)
    world.claude.answer_chars = 100
    await world.says(ADA, "second thought")
    [completed] = await world.wait_events(ADA.id, "response.completed")
    [cancelled] = await world.wait_events(ADA.id, "response.cancelled")
    assert cancelled.reason == "superseded" and cancelled.response_id != completed.response_id
    assert world.claude.requests[-1].texts() == ["first thought", "second thought"]
    assert [m.text for m in world.replies(ADA.id)] == [completed.text]  # one answer shown for both
    await world.settled(ADA)
    ledger = await world.ledger_events(ADA.id)
    charged = {e.charge_id: e.amount for e in ledger if isinstance(e, BalanceCharged)}
    assert charged == {cancelled.response_id: cancelled.cost, completed.response_id: completed.cost}  # what each produced
    assert (await world.ledger.head(ADA.id)).held == 0


async def test_messages_within_the_merge_window_make_one_request(world: World) -> None:
    await world.credit(ADA, 10 * DOLLAR)
    await world.start_agent(world.settings(merge_window_ms=300))
    await world.says(ADA, "one")
    await world.says(ADA, "two")
    await world.wait_events(ADA.id, "response.completed")
    assert len(world.claude.requests) == 1 and world.claude.requests[0].texts() == ["one", "two"]


async def test_group_answers_are_edited_in_place_and_reply_to_the_message(world: World) -> None:
    from eventbot.fakes.telegram import TgChat

    group = TgChat.group(-500)
    world.claude.answer_chars, world.claude.delta_delay_s = 300, 0.01
    await world.credit(ADA, 10 * DOLLAR)
    await world.start_agent()
    asked = await world.says(ADA, "in the group", chat=group)
    [completed] = await world.wait_events(group.id, "response.completed")
    [message] = world.replies(group.id)
    assert message.text == completed.text and message.reply_to_message_id == asked.message_id
    assert message.edited and not world.telegram.drafts(group.id)
