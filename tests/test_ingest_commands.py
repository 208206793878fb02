"""Commands: each appends its event, replies from read models; admin-only /topup."""

from __future__ import annotations

import json

from eventbot.appender import Appender
from eventbot.fakes.telegram import FakeTelegram
from eventbot.ids import new_event_id
from events import BalanceCredited, CommandIssued, ModelChanged, PromptChanged, ThreadCreated, chat_key
from services.ingest.main import Ingest
from services.ingest.menu import register_commands
from tests.factories import now
from tests.ingest_env import (  # noqa: F401 - fixtures
    ADA,
    ADMIN,
    BOB,
    GROUP,
    drain,
    fake_tg,
    give_credit,
    ingest,
    of_type,
    polling,
    read_events,
    settings,
    settled,
)


async def test_balance_with_an_empty_and_a_non_empty_ledger(fake_tg: FakeTelegram, ingest: Ingest, ledger) -> None:
    fake_tg.send_text(ADA, "/balance")
    await drain(ingest.poller(), fake_tg)
    assert fake_tg.texts(ADA.id) == ["Balance: $0.00\nNo operations yet. Top up with /pay."]

    await give_credit(ledger, ADA.id, 2_500_000)
    await give_credit(ledger, ADA.id, 10_000)
    fake_tg.send_text(ADA, "/balance")
    await drain(ingest.poller(), fake_tg)
    reply = fake_tg.texts(ADA.id)[-1]
    assert reply.startswith("Balance: $2.51\nLast operations:\n")
    ops = reply.splitlines()[2:]
    assert len(ops) == 2
    assert ops[0].endswith("balance.credited $2.50, balance $2.50")
    assert ops[1].endswith("balance.credited $0.01, balance $2.51")


async def test_topup_is_refused_for_a_non_admin_and_credits_for_an_admin(fake_tg: FakeTelegram, ingest: Ingest,
                                                                        redis, keys, codec, ledger) -> None:
    fake_tg.send_text(BOB, f"/topup {BOB.id} 100")
    await drain(ingest.poller(), fake_tg)
    assert fake_tg.texts(BOB.id) == ["This command is for admins."]
    assert (await ledger.head(BOB.id)).balance == 0
    assert of_type(await read_events(redis, keys, codec, "ledger"), BalanceCredited) == []
    # The attempt is on record all the same.
    issued = of_type(await read_events(redis, keys, codec), CommandIssued)
    assert [(c.command, c.args, c.user_id) for c in issued] == [("topup", f"{BOB.id} 100", BOB.id)]

    fake_tg.send_text(ADMIN, f"/topup {BOB.id} 2.50")
    fake_tg.send_text(ADMIN, "/topup bob lots")
    await drain(ingest.poller(), fake_tg)
    assert (await ledger.head(BOB.id)).balance == 2_500_000
    credits = of_type(await read_events(redis, keys, codec, "ledger"), BalanceCredited)
    assert [(c.user_id, c.amount, c.source, c.reference) for c in credits] == [
        (BOB.id, 2_500_000, "admin", str(ADMIN.id))]
    assert fake_tg.texts(ADMIN.id) == [f"Credited $2.50 to {BOB.id}. Their balance: $2.50.",
                                       "Usage: /topup <user id> <amount in USD>"]


async def test_model_keyboard_and_choice(fake_tg: FakeTelegram, ingest: Ingest, redis, keys, codec,
                                         settings) -> None:
    async with polling(ingest):
        fake_tg.send_text(ADA, "/model")
        await fake_tg.wait_for(lambda: bool(fake_tg.messages(ADA.id)))
        menu = fake_tg.messages(ADA.id)[0]
        assert [data for _, data in menu.buttons()] == [f"model:{m}" for m in settings.models]
        assert menu.text == f"Current model: {settings.default_model}. Choose one:"
        fake_tg.press_button(ADA, menu, "model:claude-haiku-4-5")
        fake_tg.press_button(ADA, menu, "model:gpt-17")  # not offered: refused, nothing recorded
        await settled(fake_tg)
        fake_tg.send_text(ADA, "/model")
        await fake_tg.wait_for(lambda: len(fake_tg.messages(ADA.id)) == 2)
    changed = of_type(await read_events(redis, keys, codec), ModelChanged)
    assert [(c.user_id, c.model) for c in changed] == [(ADA.id, "claude-haiku-4-5")]
    assert menu.text == "Model set to claude-haiku-4-5."
    assert fake_tg.messages(ADA.id)[1].text == "Current model: claude-haiku-4-5. Choose one:"  # from the read model
    assert len(fake_tg.calls("answerCallbackQuery")) == 2


async def test_a_model_no_longer_offered_is_not_shown_as_current(fake_tg: FakeTelegram, ingest: Ingest,
                                                                  appender: Appender, settings) -> None:
    # Chosen before it was retired (claude-opus-4-1 was offered until 2026-11): the agent answers
    # with the default now, so that is what /model says.
    assert "claude-opus-4-1" not in settings.models
    await appender.append(ModelChanged(event_id=new_event_id(), occurred_at=now(), partition_key=chat_key(ADA.id),
                                       chat_id=ADA.id, user_id=ADA.id, model="claude-opus-4-1"))
    async with polling(ingest):
        fake_tg.send_text(ADA, "/model")
        await fake_tg.wait_for(lambda: bool(fake_tg.messages(ADA.id)))
    assert fake_tg.messages(ADA.id)[0].text == f"Current model: {settings.default_model}. Choose one:"


async def test_new_prompt_and_stop_append_their_events(fake_tg: FakeTelegram, ingest: Ingest, redis, keys,
                                                       codec) -> None:
    fake_tg.send_text(ADA, "/new Travel plans")
    fake_tg.send_text(ADA, "/prompt Answer like a pirate.")
    fake_tg.send_text(ADA, "/prompt")
    fake_tg.send_text(ADA, "/prompt clear")
    fake_tg.send_text(ADA, "/stop")
    fake_tg.send_text(ADA, "/new@eventbot_test_bot", chat=GROUP, topic_id=None)
    fake_tg.send_text(ADA, "/new@another_bot", chat=GROUP)  # for another bot: not a command to us
    await drain(ingest.poller(), fake_tg)

    events = await read_events(redis, keys, codec)
    threads = of_type(events, ThreadCreated)
    assert [(t.chat_id, t.title) for t in sorted(threads, key=lambda t: t.chat_id)] == [
        (GROUP.id, ""), (ADA.id, "Travel plans")]
    assert len({t.thread_id for t in threads}) == 2
    assert [p.prompt for p in of_type(events, PromptChanged)] == ["Answer like a pirate.", None]
    issued = [(c.chat_id, c.command) for c in of_type(events, CommandIssued)]
    assert issued.count((ADA.id, "stop")) == 1
    assert (GROUP.id, "new") in issued and len([i for i in issued if i[0] == GROUP.id]) == 1
    assert fake_tg.texts(ADA.id)[:3] == ["New conversation started. Title: Travel plans", "System prompt saved.",
                                         "Your system prompt:\nAnswer like a pirate."]


async def test_commands_are_registered_with_set_my_commands(fake_tg: FakeTelegram, ingest: Ingest,
                                                            settings) -> None:
    await register_commands(ingest.bot, settings)
    default = [c["command"] for c in fake_tg.commands[json.dumps({"type": "default"})]]
    admin = [c["command"] for c in fake_tg.commands[json.dumps({"chat_id": ADMIN.id, "type": "chat"},
                                                               sort_keys=True)]]
    assert {"new", "model", "prompt", "balance", "pay", "refund", "stop", "help"} == set(default)
    assert "topup" not in default and "topup" in admin
