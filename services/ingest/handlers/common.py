"""Helpers every handler uses: best-effort replies and recording a command."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiogram.exceptions import TelegramAPIError, TelegramRetryAfter
from aiogram.filters import CommandObject
from aiogram.types import CallbackQuery, Message

from events import Event
from services.ingest.coalesce import Appends
from services.ingest import mapping
from services.ingest.mapping import Origin

log = logging.getLogger("eventbot.ingest")

# A reply waits out a short flood limit once; a longer one is dropped, not the update.
MAX_REPLY_WAIT_S = 5


# aiogram runs a synchronous filter (and a magic ``F`` filter) in a worker thread, per update;
# these are coroutines so they run inline.


async def is_command(message: Message) -> bool:
    return bool(message.text and message.text.startswith("/"))


async def is_payment(message: Message) -> bool:
    return message.successful_payment is not None


def data_prefix(prefix: str) -> Callable[[CallbackQuery], Awaitable[bool]]:
    async def matches(query: CallbackQuery) -> bool:
        return (query.data or "").startswith(prefix)

    return matches


async def say(message: Message, text: str, **kwargs: Any) -> Message | None:
    """Reply in the message's chat (and topic). Never fails the update: its events are already appended."""
    for attempt in (1, 2):
        try:
            return await message.answer(text, **kwargs)
        except TelegramRetryAfter as e:
            if attempt == 2 or e.retry_after > MAX_REPLY_WAIT_S:
                log.warning("reply dropped: flood limit of %ss", e.retry_after)
                return None
            await asyncio.sleep(e.retry_after)
        except TelegramAPIError as e:
            # The type only: Telegram's description may quote the text.
            log.warning("reply failed: %s", type(e).__name__)
            return None
    return None


async def record_command(
    message: Message, origin: Origin, appender: Appends, command: CommandObject, extra: Sequence[Event] = ()
) -> bool:
    """Append user.seen, command.issued and the command's own events in one call.

    False when this update was appended before (a redelivery): the caller then
    skips its reply, which was sent the first time.
    """
    events: list[Event] = [
        mapping.user_seen(origin, message),
        mapping.command_issued(origin, message, command.command.lower(), (command.args or "").strip()),
        *extra,
    ]
    results = await appender.append_many(events)
    return not results[1].duplicate
