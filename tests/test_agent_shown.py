"""response.shown: the messages an answer started, recorded beside it and read back by a takeover."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from eventbot.errors import StoreUnavailable
from eventbot.ids import new_event_id
from events import MessageReceived
from services.agent.answer import response_id_for
from services.agent.shown import ShownRecorder, shown_messages


def group_message() -> MessageReceived:
    return MessageReceived(
        event_id=new_event_id(), occurred_at=datetime.now(timezone.utc), partition_key="chat:-77", chat_id=-77,
        update_id=1, message_id=5, user_id=9, chat_type="group", text="hello",
    )


async def test_recorded_messages_are_read_back_in_order_once_each(redis, keys, codec, appender) -> None:
    message = group_message()
    rid = response_id_for(message)
    assert await shown_messages(redis, keys, codec, rid, message) == []
    first = ShownRecorder(appender, rid, message)
    first.started(0, 101)
    first.started(1, 102)
    await first.flush()
    again = ShownRecorder(appender, rid, message)  # a takeover recording the same chunk: the same event
    again.started(0, 101)
    await again.flush()
    assert await shown_messages(redis, keys, codec, rid, message) == [101, 102]
    other = response_id_for(group_message())
    assert await shown_messages(redis, keys, codec, other, message) == []


class DownAppender:
    async def append(self, event: object) -> None:
        raise StoreUnavailable("redis is down")


async def test_a_record_that_fails_is_logged_and_the_answer_goes_on(caplog) -> None:
    message = group_message()
    recorder = ShownRecorder(DownAppender(), response_id_for(message), message)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="eventbot.agent.shown"):
        recorder.started(0, 101)
        await recorder.flush()
    assert ["a started message of an answer was not recorded: StoreUnavailable"] == [r.getMessage() for r in caplog.records]
