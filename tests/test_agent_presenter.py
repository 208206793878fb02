"""Showing a streamed answer in Telegram, through the real aiogram client and the fake Bot API."""

from __future__ import annotations

import asyncio

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession

from eventbot.fakes.telegram import FakeTelegram, TgChat, TgUser, visible_length
from services.agent.limiter import ChatLimiter
from services.agent.presenter import Presenter, Target

USER = TgUser(id=501)
GROUP = TgChat.group(-42)


@pytest.fixture
async def telegram():
    async with FakeTelegram() as fake:
        fake.send_text(USER, "hi", deliver=False)  # the chats exist once the user wrote in them
        fake.send_text(USER, "hi", chat=GROUP, deliver=False)
        yield fake


@pytest.fixture
async def bot(telegram: FakeTelegram):
    b = Bot(telegram.token, session=AiohttpSession(api=telegram.api_server()))
    yield b
    await b.session.close()


def presenter(bot: Bot, *, private: bool, interval_s: float = 0.05, limiter: ChatLimiter | None = None) -> Presenter:
    target = Target(chat_id=USER.id if private else GROUP.id, private=private, reply_to=1, draft_id=7)
    return Presenter(bot, limiter or ChatLimiter(), target, interval_s=interval_s)


async def test_private_chat_drafts_then_one_real_formatted_message(bot: Bot, telegram: FakeTelegram) -> None:
    p = presenter(bot, private=True)
    p.update("Hello")
    await telegram.wait_for(lambda: len(telegram.drafts(USER.id)) == 1)
    p.update("Hello **wor")
    p.update("Hello **world**")
    ids = await p.finish("Hello **world**")
    drafts = telegram.drafts(USER.id)
    assert drafts[0].text == "Hello" and all(d.draft_id == 7 for d in drafts)
    assert len(drafts) <= 2  # the two quick updates were coalesced into at most one
    assert telegram.texts(USER.id) == ["Hello <b>world</b>"]
    assert ids == (telegram.messages(USER.id)[0].message_id,)
    assert p.first_sent_at is not None


async def test_group_message_is_edited_as_it_grows_and_never_with_the_same_text(bot: Bot, telegram: FakeTelegram) -> None:
    p = presenter(bot, private=False, interval_s=0.01)
    for text in ("one", "one two", "one two", "one two three"):
        p.update(text)
        await asyncio.sleep(0.03)
    await p.finish("one two three")
    [message] = telegram.messages(GROUP.id)
    assert message.text == "one two three" and message.reply_to_message_id == 1
    assert message.history == ["one", "one two", "one two three"]
    assert not [c for c in telegram.calls("editMessageText") if not c.ok]  # no "message is not modified"


async def test_long_answer_continues_in_new_messages_each_within_the_limit(bot: Bot, telegram: FakeTelegram) -> None:
    text = " ".join(f"Sentence {i} is here." for i in range(700))  # ~14,000 characters
    p = presenter(bot, private=True, interval_s=0.0)
    for end in range(0, len(text) + 500, 500):
        p.update(text[:end])
        await asyncio.sleep(0)
    ids = await p.finish(text)
    messages = telegram.messages(USER.id)
    assert len(ids) == len(messages) == 4
    assert all(visible_length(m.text, "HTML") <= 4096 for m in messages)
    assert " ".join(m.text for m in messages) == text


async def test_rejected_markup_falls_back_to_plain_text(bot: Bot, telegram: FakeTelegram, monkeypatch) -> None:
    # Markup our converter produces but Telegram refuses: the same text goes out plain.
    import services.agent.presenter as presenter_module

    monkeypatch.setattr(presenter_module, "markdown_to_html", lambda md: "<b>broken")
    telegram_reject = telegram._send_message

    async def strict(p):  # type: ignore[no-untyped-def]
        if p.get("parse_mode") == "HTML" and "<b>" in str(p.get("text")) and "</b>" not in str(p.get("text")):
            from eventbot.fakes.telegram_records import bad_request

            raise bad_request("can't parse entities: Can't find end tag corresponding to start tag b")
        return await telegram_reject(p)

    monkeypatch.setattr(telegram, "_send_message", strict)
    await presenter(bot, private=True).finish("**x")
    assert telegram.texts(USER.id) == ["**x"]


async def test_flood_control_slows_drafts_but_the_final_message_arrives(bot: Bot, telegram: FakeTelegram) -> None:
    limiter = ChatLimiter()
    p = presenter(bot, private=False, interval_s=0.0, limiter=limiter)
    telegram.flood(retry_after=1, times=2)
    p.update("first")
    await asyncio.sleep(0.1)
    p.update("first second")
    ids = await p.finish("first second third")
    assert telegram.texts(GROUP.id) == ["first second third"] and len(ids) == 1
    assert limiter.retry_afters >= 1
    ok = [c for c in telegram.calls() if c.ok and c.method in ("sendMessage", "editMessageText")]
    refused = [c for c in telegram.calls() if c.status == 429]
    assert refused and ok[0].at - refused[0].at >= 0.9  # waited out retry_after before sending again


async def test_an_answer_retried_in_the_same_process_sends_its_final_message_once(bot: Bot, telegram: FakeTelegram) -> None:
    """Redis failed after the final send, so the answer runs again on the chat's same limiter: no second copy."""
    limiter = ChatLimiter()
    first = presenter(bot, private=True, limiter=limiter)
    ids = await first.finish("the whole answer")
    again = presenter(bot, private=True, limiter=limiter)
    assert await again.finish("the whole answer") == ids
    assert telegram.texts(USER.id) == ["the whole answer"]


async def test_typing_until_the_first_text(bot: Bot, telegram: FakeTelegram) -> None:
    p = Presenter(bot, ChatLimiter(), Target(chat_id=USER.id, private=True), interval_s=0.05, typing_interval_s=0.02)
    p.start_typing()
    await telegram.wait_for(lambda: len(telegram.calls("sendChatAction")) >= 2)
    p.update("x")
    await telegram.wait_for(lambda: len(telegram.drafts(USER.id)) == 1)
    typed = len(telegram.calls("sendChatAction"))
    await asyncio.sleep(0.1)
    assert len(telegram.calls("sendChatAction")) == typed
    await p.close()


async def test_a_group_answer_records_each_message_it_starts(bot: Bot, telegram: FakeTelegram) -> None:
    started: list[tuple[int, int]] = []
    target = Target(chat_id=GROUP.id, private=False, reply_to=1, draft_id=7)
    p = Presenter(bot, ChatLimiter(), target, interval_s=0.0, limit=100,
                  on_message_started=lambda index, message_id: started.append((index, message_id)))
    p.update("First part of the answer.")
    await telegram.wait_for(lambda: len(telegram.messages(GROUP.id)) == 1)
    ids = await p.finish("First part of the answer. " + "Then a long second part that goes on. " * 4)
    assert len(ids) >= 2 and started == list(enumerate(ids))


async def test_a_private_answer_records_nothing(bot: Bot, telegram: FakeTelegram) -> None:
    started: list[tuple[int, int]] = []
    target = Target(chat_id=USER.id, private=True, draft_id=7)
    p = Presenter(bot, ChatLimiter(), target, interval_s=0.0,
                  on_message_started=lambda index, message_id: started.append((index, message_id)))
    p.update("a draft")
    await p.finish("a draft, then the answer")
    assert started == [] and telegram.texts(USER.id) == ["a draft, then the answer"]


async def dead_agents_messages(bot: Bot, *texts: str) -> list[int]:
    """What an agent killed mid-answer left in the group: its messages, as they were."""
    return [(await bot.send_message(GROUP.id, text)).message_id for text in texts]


async def test_a_takeover_goes_on_in_the_message_its_dead_agent_started(bot: Bot, telegram: FakeTelegram) -> None:
    [left] = await dead_agents_messages(bot, "The answer so f")
    p = presenter(bot, private=False, interval_s=0.0)
    p.continue_in([left])
    p.update("The answer")
    await asyncio.sleep(0.05)
    ids = await p.finish("The answer, whole.")
    assert ids == (left,)
    assert telegram.texts(GROUP.id) == ["The answer, whole."]  # one message: no stale partial beside a copy
    assert len(telegram.calls("sendMessage")) == 1  # the dead agent's only


async def test_a_takeover_whose_final_edit_had_landed_sends_nothing_more(bot: Bot, telegram: FakeTelegram) -> None:
    """Killed after Telegram applied the final edit, before the answer's end was recorded."""
    [left] = await dead_agents_messages(bot, "Done.")
    p = presenter(bot, private=False)
    p.continue_in([left])
    assert await p.finish("Done.") == (left,)
    assert telegram.texts(GROUP.id) == ["Done."] and len(telegram.calls("sendMessage")) == 1


async def test_a_takeover_with_a_shorter_answer_deletes_the_dead_agents_extra_message(bot: Bot, telegram: FakeTelegram) -> None:
    left = await dead_agents_messages(bot, "part one", "part two")
    p = presenter(bot, private=False)
    p.continue_in(left)
    assert await p.finish("all in one") == (left[0],)
    assert telegram.texts(GROUP.id) == ["all in one"]


async def test_a_private_takeover_starts_afresh(bot: Bot, telegram: FakeTelegram) -> None:
    p = presenter(bot, private=True)
    p.continue_in([12345])  # a private chat's drafts are gone with their agent: nothing to edit
    ids = await p.finish("hello")
    assert telegram.texts(USER.id) == ["hello"] and ids == (telegram.messages(USER.id)[0].message_id,)


async def test_a_takeover_whose_message_was_deleted_in_the_chat_sends_the_answer_anew(bot: Bot, telegram: FakeTelegram) -> None:
    [left] = await dead_agents_messages(bot, "The answer so f")
    await bot.delete_message(GROUP.id, left)  # by an admin, before the takeover
    started: list[tuple[int, int]] = []
    target = Target(chat_id=GROUP.id, private=False, reply_to=1, draft_id=7)
    p = Presenter(bot, ChatLimiter(), target, interval_s=0.0,
                  on_message_started=lambda index, message_id: started.append((index, message_id)))
    p.continue_in([left])
    p.update("The answer")
    await asyncio.sleep(0.05)
    p.update("The answer, wh")
    ids = await p.finish("The answer, whole.")
    assert telegram.texts(GROUP.id) == ["The answer, whole."] and ids[0] != left
    assert started == [(0, ids[0])]  # the new message is recorded for a takeover after this one
