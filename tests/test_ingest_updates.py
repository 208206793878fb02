"""Telegram updates -> events, through the real aiogram client polling the fake Bot API."""

from __future__ import annotations

from dataclasses import replace

from eventbot.fakes.telegram import FakeTelegram
from events import FileUploaded, MessageEdited, MessageReceived, UserSeen, chat_key
from services.ingest.main import Ingest
from tests.ingest_env import (  # noqa: F401 - fixtures
    ADA,
    BOB,
    FORUM,
    GROUP,
    drain,
    fake_tg,
    give_credit,
    ingest,
    of_type,
    read_events,
    settings,
)


async def test_text_message_lands_as_user_seen_and_message_received(fake_tg: FakeTelegram, ingest: Ingest,
                                                                    redis, keys, codec, ledger) -> None:
    await give_credit(ledger, ADA.id, 1_000_000)
    update = fake_tg.send_text(ADA, "What is an event log?")
    await drain(ingest.poller(), fake_tg)

    events = await read_events(redis, keys, codec)
    seen, received = of_type(events, UserSeen), of_type(events, MessageReceived)
    assert [(s.user_id, s.username, s.first_name) for s in seen] == [(ADA.id, "ada", "Ada")]
    assert len(received) == 1
    m = received[0]
    assert (m.chat_id, m.topic_id, m.user_id, m.chat_type) == (ADA.id, None, ADA.id, "private")
    assert (m.update_id, m.message_id, m.text, m.disposition) == (update["update_id"], 1, "What is an event log?",
                                                                   "answer")
    assert m.partition_key == chat_key(ADA.id)
    assert m.correlation_id == f"tg:{fake_tg.bot_id}:{update['update_id']}"
    # Both events of one update land in order in the chat's partition.
    stream = keys.stream("conv", keys.partition_of(chat_key(ADA.id)))
    assert await redis.xlen(stream) == 2
    assert fake_tg.texts(ADA.id) == []  # ingest never answers a message itself


async def test_photo_document_and_voice_carry_their_metadata(fake_tg: FakeTelegram, ingest: Ingest,
                                                             redis, keys, codec, ledger) -> None:
    await give_credit(ledger, ADA.id, 1_000_000)
    photo = fake_tg.send_file(ADA, "photo", b"\xff\xd8" + b"p" * 3000, caption="what is this?")
    doc = fake_tg.send_file(ADA, "document", b"%PDF" + b"d" * 5000, name="paper.pdf", mime_type="application/pdf")
    voice = fake_tg.send_file(ADA, "voice", b"OggS" + b"v" * 700)
    await drain(ingest.poller(), fake_tg)

    events = await read_events(redis, keys, codec)
    files = {f.message_id: f.file for f in of_type(events, FileUploaded)}
    received = {m.message_id: m for m in of_type(events, MessageReceived)}

    p = photo["message"]["photo"][-1]
    assert files[photo["message"]["message_id"]].kind == "photo"
    assert files[photo["message"]["message_id"]].file_id == p["file_id"]  # the largest size, not the thumbnail
    assert files[photo["message"]["message_id"]].size == 3002
    assert received[photo["message"]["message_id"]].caption == "what is this?"
    assert received[photo["message"]["message_id"]].attachments == (files[photo["message"]["message_id"]],)

    d = files[doc["message"]["message_id"]]
    assert (d.kind, d.name, d.mime_type, d.size) == ("document", "paper.pdf", "application/pdf", 5004)
    assert d.file_unique_id == doc["message"]["document"]["file_unique_id"]

    v = files[voice["message"]["message_id"]]
    assert (v.kind, v.mime_type, v.size) == ("voice", "audio/ogg", 704)
    assert all(m.disposition == "answer" for m in received.values())


async def test_forum_topic_message_lands_in_its_thread(fake_tg: FakeTelegram, ingest: Ingest,
                                                       redis, keys, codec, ledger) -> None:
    await give_credit(ledger, ADA.id, 1_000_000)
    fake_tg.send_text(ADA, "@eventbot_test_bot summarise the topic", chat=FORUM, topic_id=42)
    fake_tg.send_text(ADA, "@eventbot_test_bot and this one", chat=FORUM, topic_id=7)
    await drain(ingest.poller(), fake_tg)

    received = of_type(await read_events(redis, keys, codec), MessageReceived)
    by_topic = {m.topic_id: m for m in received}
    assert set(by_topic) == {42, 7}
    assert by_topic[42].partition_key == chat_key(FORUM.id, 42) == f"{FORUM.id}:42"
    assert by_topic[42].chat_type == "supergroup" and by_topic[42].disposition == "answer"
    # Each topic is its own conversation: its own partition key, so its own ordered stream.
    assert by_topic[7].partition_key == chat_key(FORUM.id, 7)


async def test_group_messages_are_answered_only_when_addressed(fake_tg: FakeTelegram, ingest: Ingest,
                                                               redis, keys, codec, ledger) -> None:
    await give_credit(ledger, ADA.id, 1_000_000)
    fake_tg.send_text(ADA, "just chatting with friends", chat=GROUP)
    fake_tg.send_text(ADA, "hey @EventBot_Test_Bot what's up", chat=GROUP)
    fake_tg.send_text(ADA, "hey @someone_else look", chat=GROUP)
    await drain(ingest.poller(), fake_tg)
    bot_message = await ingest.bot.send_message(GROUP.id, "an earlier answer")
    fake_tg.send_text(ADA, "a reply to the bot", chat=GROUP, reply_to_message_id=bot_message.message_id)
    await drain(ingest.poller(), fake_tg)

    received = sorted(of_type(await read_events(redis, keys, codec), MessageReceived), key=lambda m: m.message_id)
    assert [(m.text, m.disposition) for m in received] == [
        ("just chatting with friends", "not_addressed"),
        ("hey @EventBot_Test_Bot what's up", "answer"),
        ("hey @someone_else look", "not_addressed"),
        ("a reply to the bot", "answer"),
    ]
    assert received[-1].reply_to_message_id == bot_message.message_id


async def test_an_edit_is_recorded_as_message_edited(fake_tg: FakeTelegram, ingest: Ingest, redis, keys, codec,
                                                     ledger) -> None:
    await give_credit(ledger, BOB.id, 1_000_000)
    original = fake_tg.send_text(BOB, "helo")
    fake_tg.edit_text(original, "hello")
    await drain(ingest.poller(), fake_tg)
    edited = of_type(await read_events(redis, keys, codec), MessageEdited)
    assert [(e.message_id, e.text, e.user_id) for e in edited] == [(original["message"]["message_id"], "hello", BOB.id)]


async def test_polling_redelivery_after_a_crash_is_one_event(fake_tg: FakeTelegram, ingest: Ingest,
                                                             redis, keys, codec, ledger) -> None:
    await give_credit(ledger, ADA.id, 1_000_000)
    update = fake_tg.send_text(ADA, "only once please")
    first = ingest.poller()
    assert await first.poll_once(timeout_s=0) == 1  # appended, but the offset never reached Telegram...
    assert fake_tg.pending_update_ids == [update["update_id"]]
    # ...because this process "crashed"; a new one starts from Telegram's view and gets it again.
    second = ingest.poller()
    assert await second.poll_once(timeout_s=0) == 1
    await drain(second, fake_tg)

    received = of_type(await read_events(redis, keys, codec), MessageReceived)
    assert [m.update_id for m in received] == [update["update_id"]]
    assert len(of_type(await read_events(redis, keys, codec), UserSeen)) == 1


async def test_user_seen_is_appended_when_the_profile_changes_not_per_message(fake_tg: FakeTelegram, ingest: Ingest,
                                                                             redis, keys, codec, ledger) -> None:
    await give_credit(ledger, ADA.id, 1_000_000)
    fake_tg.send_text(ADA, "one")
    fake_tg.send_text(ADA, "two")
    fake_tg.send_text(replace(ADA, username="ada_lovelace"), "three")
    fake_tg.send_text(ADA, "four", chat=GROUP)  # seen in another chat: that chat records her too
    await drain(ingest.poller(), fake_tg)
    seen = of_type(await read_events(redis, keys, codec), UserSeen)
    assert sorted((s.chat_id, s.username) for s in seen) == sorted(
        [(ADA.id, "ada"), (ADA.id, "ada_lovelace"), (GROUP.id, "ada")])
    assert len(of_type(await read_events(redis, keys, codec), MessageReceived)) == 4


async def test_an_update_no_handler_can_handle_is_kept_aside(redis, keys) -> None:  # type: ignore[no-untyped-def]
    """A poison update must neither stop the bot nor vanish: its raw JSON is kept for an operator."""
    import json

    from aiogram.types import Update
    from prometheus_client import CollectorRegistry

    from services.ingest.feeding import feed_one
    from services.ingest.metrics import IngestMetrics
    from services.ingest.rejected import RejectedUpdates

    class ExplodingDispatcher:  # stands in for a handler bug on an unexpected update shape
        workflow_data = {"rejected": RejectedUpdates(redis, keys), "ingest_metrics": IngestMetrics(CollectorRegistry())}

        async def feed_update(self, bot, update):  # type: ignore[no-untyped-def]
            raise KeyError("a shape nobody expected")

    dp = ExplodingDispatcher()
    await feed_one(dp, None, Update(update_id=77))  # type: ignore[arg-type]  # returns: the bot goes on
    [(_, kept)] = await redis.xrange(keys.rejected_updates())
    assert kept[b"update_id"] == b"77" and kept[b"error"] == b"KeyError"
    assert json.loads(kept[b"update"])["update_id"] == 77
    assert await dp.workflow_data["rejected"].latest() == [(77, "KeyError")]
    assert dp.workflow_data["ingest_metrics"].updates.labels("rejected")._value.get() == 1
