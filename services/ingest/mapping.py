"""Telegram objects -> eventbot events: pure functions, no I/O.

Event ids are derived from the outside world's ids (the bot, the ``update_id``, the
payment charge id) and the message's own timestamp, so a redelivered update maps
to byte-identical events and the idempotent append stores it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import get_args
from uuid import UUID

from aiogram.types import Message, Update, User

from eventbot.ids import derived_id
from events import (
    Attachment,
    CommandIssued,
    FileRefused,
    FileUploaded,
    MessageEdited,
    MessageReceived,
    UserSeen,
    chat_key,
)
from events.conversation import ChatType, Disposition

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CHAT_TYPES = frozenset(get_args(ChatType))


class UnexpectedUpdate(ValueError):
    """An update of a shape the events can't hold: kept aside rather than appended unreadable."""


@dataclass(frozen=True)
class Origin:
    """The update a batch of events comes from; names their ids and correlation."""

    bot_id: int
    update_id: int
    at: datetime  # when it happened per Telegram: the same on every redelivery

    @classmethod
    def of(cls, bot_id: int, update: Update) -> Origin:
        return cls(bot_id, update.update_id, _when(update))

    @property
    def correlation_id(self) -> str:
        return f"tg:{self.bot_id}:{self.update_id}"

    def event_id(self, kind: str) -> UUID:
        return derived_id(f"{self.correlation_id}:{kind}", self.at)


def _when(update: Update) -> datetime:
    if update.message is not None:
        return update.message.date
    edited = update.edited_message
    if edited is not None:
        # aiogram gives edit_date as a unix time, date as a datetime.
        return datetime.fromtimestamp(edited.edit_date, UTC) if edited.edit_date else edited.date
    cq = update.callback_query
    if cq is not None and cq.message is not None and isinstance(cq.message.date, datetime):
        # A button press carries no time of its own; the message it sits on is stable.
        return cq.message.date
    return _EPOCH


def topic_of(message: Message) -> int | None:
    """The forum topic a message belongs to (``message_thread_id`` means a topic only then)."""
    return message.message_thread_id if message.is_topic_message else None


def conv_key(message: Message) -> str:
    return chat_key(message.chat.id, topic_of(message))


def attachments_of(message: Message) -> list[Attachment]:
    """The files a message carries, with Telegram's metadata (the bytes stay with Telegram)."""
    out: list[Attachment] = []
    if message.photo:
        biggest = message.photo[-1]  # sizes come smallest first
        out.append(Attachment(kind="photo", file_id=biggest.file_id, file_unique_id=biggest.file_unique_id,
                              mime_type="image/jpeg", size=biggest.file_size))
    # A GIF arrives as both ``animation`` and ``document``: one file, so the animation wins.
    for kind in ("animation", "document", "voice", "audio", "video", "video_note", "sticker"):
        media = getattr(message, kind)
        if media is None or (kind == "document" and message.animation is not None):
            continue
        out.append(Attachment(
            kind=kind, file_id=media.file_id, file_unique_id=media.file_unique_id,
            mime_type=getattr(media, "mime_type", None) or ("image/webp" if kind == "sticker" else None),
            size=media.file_size, name=getattr(media, "file_name", None),
        ))
    return out


def is_addressed(message: Message, me: User) -> bool:
    """In a private chat always; in a group when the bot is mentioned or replied to.

    Commands are matched before this (aiogram's ``Command`` filter checks ``/cmd@bot``).
    """
    if message.chat.type == "private":
        return True
    reply = message.reply_to_message
    if reply is not None and reply.from_user is not None and reply.from_user.id == me.id:
        return True
    text = message.text or message.caption or ""
    entities = message.entities or message.caption_entities or []
    handle = f"@{me.username}".lower() if me.username else None
    for entity in entities:
        if entity.type == "text_mention" and entity.user is not None and entity.user.id == me.id:
            return True
        if entity.type == "mention" and handle is not None and entity.extract_from(text).lower() == handle:
            return True
    return False


def user_seen(origin: Origin, message: Message) -> UserSeen:
    user = message.from_user
    assert user is not None
    return UserSeen(
        event_id=origin.event_id("user.seen"), occurred_at=origin.at, partition_key=conv_key(message),
        correlation_id=origin.correlation_id, chat_id=message.chat.id, topic_id=topic_of(message),
        user_id=user.id, username=user.username, first_name=user.first_name, last_name=user.last_name,
        language_code=user.language_code, is_premium=bool(user.is_premium),
    )


def message_received(
    origin: Origin, message: Message, disposition: Disposition, attachments: list[Attachment]
) -> MessageReceived:
    assert message.from_user is not None
    if message.chat.type not in _CHAT_TYPES:
        # msgspec checks the Literal on decode only: appended, it would be dead-lettered by every consumer.
        raise UnexpectedUpdate(f"chat type {message.chat.type!r}")
    reply = message.reply_to_message
    return MessageReceived(
        event_id=origin.event_id("message.received"), occurred_at=origin.at, partition_key=conv_key(message),
        correlation_id=origin.correlation_id, chat_id=message.chat.id, topic_id=topic_of(message),
        update_id=origin.update_id, message_id=message.message_id, user_id=message.from_user.id,
        chat_type=message.chat.type,  # type: ignore[arg-type]
        text=message.text, caption=message.caption, reply_to_message_id=reply.message_id if reply else None,
        attachments=tuple(attachments), disposition=disposition,
    )


def file_uploaded(origin: Origin, message: Message, index: int, file: Attachment) -> FileUploaded:
    assert message.from_user is not None
    return FileUploaded(
        event_id=origin.event_id(f"file.uploaded:{index}"), occurred_at=origin.at, partition_key=conv_key(message),
        correlation_id=origin.correlation_id, chat_id=message.chat.id, topic_id=topic_of(message),
        message_id=message.message_id, user_id=message.from_user.id, file=file,
    )


def file_refused(origin: Origin, message: Message, index: int, file: Attachment, limit_bytes: int) -> FileRefused:
    assert message.from_user is not None
    return FileRefused(
        event_id=origin.event_id(f"file.refused:{index}"), occurred_at=origin.at, partition_key=conv_key(message),
        correlation_id=origin.correlation_id, chat_id=message.chat.id, topic_id=topic_of(message),
        message_id=message.message_id, user_id=message.from_user.id, file=file, reason="too_large",
        limit_bytes=limit_bytes,
    )


def message_edited(origin: Origin, message: Message) -> MessageEdited:
    assert message.from_user is not None
    return MessageEdited(
        event_id=origin.event_id("message.edited"), occurred_at=origin.at, partition_key=conv_key(message),
        correlation_id=origin.correlation_id, chat_id=message.chat.id, topic_id=topic_of(message),
        update_id=origin.update_id, message_id=message.message_id, user_id=message.from_user.id,
        text=message.text, caption=message.caption,
    )


def command_issued(origin: Origin, message: Message, command: str, args: str) -> CommandIssued:
    assert message.from_user is not None
    return CommandIssued(
        event_id=origin.event_id("command.issued"), occurred_at=origin.at, partition_key=conv_key(message),
        correlation_id=origin.correlation_id, chat_id=message.chat.id, topic_id=topic_of(message),
        update_id=origin.update_id, message_id=message.message_id, user_id=message.from_user.id,
        command=command, args=args,
    )
