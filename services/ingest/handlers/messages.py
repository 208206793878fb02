"""Messages and edits: recorded with what ingest decided about them (their disposition).

Only ``answer`` is handed on to the agent; everything else is still recorded so the
conversation's history is whole and an operator can see why a message went unanswered.
"""

from __future__ import annotations

from aiogram import Bot, Router
from aiogram.exceptions import TelegramAPIError
from aiogram.types import CallbackQuery, Message

from eventbot.settings import Settings
from events import Event
from services.ingest.coalesce import Appends
from services.ingest import mapping, texts
from services.ingest.gates import Gates, Verdict
from services.ingest.handlers.common import log, say
from services.ingest.mapping import Origin
from services.ingest.seen import SeenUsers


def register(r: Router) -> None:
    r.message.register(on_message, is_plain)
    r.edited_message.register(on_edit)


def fallback_router() -> Router:
    r = Router(name="messages-fallback")
    r.message.register(on_message)
    r.callback_query.register(on_stale_button)
    return r


async def is_plain(message: Message) -> bool:
    """Neither a /command nor a payment: the common case, decided without aiogram's filters."""
    text = message.text
    return message.successful_payment is None and not (text and text.startswith("/"))


async def on_message(
    message: Message, bot: Bot, origin: Origin, appender: Appends, gates: Gates, settings: Settings,
    seen_users: SeenUsers,
) -> None:
    user = message.from_user
    if user is None or user.is_bot:
        return  # channel posts and other bots: nothing to answer or bill
    attachments = mapping.attachments_of(message)
    if not attachments and message.text is None and message.caption is None:
        return  # service messages (joins, pins, topic edits) carry no conversation
    limit = settings.max_file_bytes
    too_large = [a for a in attachments if a.size is not None and a.size > limit]
    if not mapping.is_addressed(message, await bot.me()):
        verdict = Verdict("not_addressed", False)
    elif too_large:
        verdict = Verdict("too_large", True)
    else:
        verdict = await gates.admit(user.id, origin.update_id, origin.at)
    seen = mapping.user_seen(origin, message)
    events: list[Event] = [seen] if seen_users.is_news(seen) else []
    for i, a in enumerate(attachments):
        events.append(mapping.file_refused(origin, message, i, a, limit) if a in too_large
                      else mapping.file_uploaded(origin, message, i, a))
    events.append(mapping.message_received(origin, message, verdict.disposition, attachments))
    appended = await appender.append_many(events)
    seen_users.remember(seen)
    if appended[-1].duplicate or not verdict.tell:
        return
    if verdict.disposition == "too_large":
        name = too_large[0].name or {"photo": "This photo", "voice": "This voice note"}.get(too_large[0].kind, "This file")
        await say(message, texts.too_large(name, limit))
    elif verdict.disposition == "no_balance":
        await say(message, texts.TOP_UP_HINT)
    elif verdict.disposition == "rate_limited":
        await say(message, texts.RATE_LIMITED)


async def on_stale_button(query: CallbackQuery) -> None:
    """A button no handler knows (an old keyboard, forged data): answer it, or its spinner turns until it times out."""
    try:
        await query.answer(texts.STALE_BUTTON)
    except TelegramAPIError as e:
        log.info("could not answer a stale button: %s", type(e).__name__)


async def on_edit(message: Message, origin: Origin, appender: Appends) -> None:
    if message.from_user is None or message.from_user.is_bot:
        return
    await appender.append(mapping.message_edited(origin, message))
