"""Which Telegram messages an answer has started, so that a takeover edits them instead of sending more.

Outside private chats an answer streams in a real message, edited as it grows,
that becomes its final text. An agent killed mid-answer leaves that message in
the chat. The agent taking the response over finds its ``response.shown``
events (by their derived ids, in the log itself: the read model may lag) and
goes on in the same message(s), so the chat ends with one answer, not a stale
partial one beside a second copy. The final edit of such a message is
idempotent, which closes, in groups, the window where a final message accepted
by Telegram just before a kill would be sent again.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from uuid import UUID

from redis.asyncio import Redis

from eventbot.appender import Appender
from eventbot.errors import TransientError
from eventbot.ids import derived_id
from eventbot.keys import Keys
from events import EventCodec, MessageReceived, ResponseShown
from services.agent.billing import stored_event

log = logging.getLogger("eventbot.agent.shown")


def shown_event_id(response_id: UUID, index: int, message: MessageReceived) -> UUID:
    return derived_id(f"response.shown:{response_id}:{index}", message.occurred_at)


async def shown_messages(redis: Redis, keys: Keys, codec: EventCodec, response_id: UUID, message: MessageReceived) -> list[int]:
    """The Telegram message ids of ``response_id``'s chunks, in order, as recorded so far.

    Two round trips a chunk (the dedupe marker, then the entry), and one more to find the end:
    only a takeover asks, never an answer on the hot path.
    """
    partition = keys.partition_of(message.partition_key)
    ids: list[int] = []
    while True:
        event = await stored_event(redis, keys, codec, partition, "conv", shown_event_id(response_id, len(ids), message))
        if not isinstance(event, ResponseShown):
            return ids
        ids.append(event.telegram_message_id)


class ShownRecorder:
    """Appends ``response.shown`` for each message an answer starts, beside the answer; ``flush()`` waits for them.

    Recording is best effort: one that fails (Redis out) only means a takeover
    would send a new message, as it would without this record.
    """

    def __init__(self, appender: Appender, response_id: UUID, message: MessageReceived) -> None:
        self.appender = appender
        self.response_id = response_id
        self.message = message
        self._pending: list[asyncio.Task[None]] = []

    def started(self, index: int, telegram_message_id: int) -> None:
        m = self.message
        event = ResponseShown(
            event_id=shown_event_id(self.response_id, index, m), occurred_at=datetime.now(timezone.utc), causation_id=m.event_id,
            partition_key=m.partition_key, correlation_id=m.correlation_id, chat_id=m.chat_id, topic_id=m.topic_id,
            response_id=self.response_id, user_id=m.user_id, index=index, telegram_message_id=telegram_message_id,
        )
        self._pending.append(asyncio.create_task(self._append(event)))

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.wait(pending)

    async def _append(self, event: ResponseShown) -> None:
        try:
            await self.appender.append(event)
        except TransientError as e:  # Redis out, say: a takeover would send a new message, as without it
            log.warning("a started message of an answer was not recorded: %s", type(e).__name__)
