"""What users do in Telegram: messages, files, commands, threads, settings."""

from __future__ import annotations

from typing import ClassVar, Literal
from uuid import UUID

import msgspec

from events.base import Event, Family

ChatType = Literal["private", "group", "supergroup", "channel"]
FileKind = Literal["photo", "document", "voice", "audio", "video", "video_note", "animation", "sticker"]
# What ingest decided about a message; only "answer" is handed to the agent.
Disposition = Literal["answer", "not_addressed", "no_balance", "rate_limited", "too_large"]


class Attachment(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    kind: FileKind
    file_id: str
    file_unique_id: str
    mime_type: str | None = None
    size: int | None = None
    name: str | None = None


class ConvEvent(Event, frozen=True, kw_only=True):
    family: ClassVar[Family] = "conv"
    chat_id: int
    topic_id: int | None = None


class UserSeen(ConvEvent, frozen=True, kw_only=True, tag="user.seen"):
    user_id: int
    username: str | None = None
    first_name: str = ""
    last_name: str | None = None
    language_code: str | None = None
    is_premium: bool = False


class UserProfileChanged(ConvEvent, frozen=True, kw_only=True, tag="user.profile_changed"):
    user_id: int
    username: str | None = None
    first_name: str = ""
    last_name: str | None = None
    language_code: str | None = None


class MessageReceived(ConvEvent, frozen=True, kw_only=True, tag="message.received"):
    update_id: int
    message_id: int
    user_id: int
    chat_type: ChatType
    text: str | None = None
    caption: str | None = None
    reply_to_message_id: int | None = None
    attachments: tuple[Attachment, ...] = ()
    disposition: Disposition = "answer"


class MessageEdited(ConvEvent, frozen=True, kw_only=True, tag="message.edited"):
    update_id: int
    message_id: int
    user_id: int
    text: str | None = None
    caption: str | None = None


class FileUploaded(ConvEvent, frozen=True, kw_only=True, tag="file.uploaded"):
    message_id: int
    user_id: int
    file: Attachment


class FileRefused(ConvEvent, frozen=True, kw_only=True, tag="file.refused"):
    """A file was not accepted (over the size limit); the user was told why."""

    message_id: int
    user_id: int
    file: Attachment
    reason: Literal["too_large", "unsupported"]
    limit_bytes: int


class CommandIssued(ConvEvent, frozen=True, kw_only=True, tag="command.issued"):
    update_id: int
    message_id: int
    user_id: int
    command: str
    args: str = ""


class ThreadCreated(ConvEvent, frozen=True, kw_only=True, tag="thread.created"):
    """Starts a new thread in a chat (and topic); later messages belong to it."""

    thread_id: UUID
    user_id: int
    title: str = ""


class ThreadRenamed(ConvEvent, frozen=True, kw_only=True, tag="thread.renamed"):
    thread_id: UUID
    title: str


class ModelChanged(ConvEvent, frozen=True, kw_only=True, tag="model.changed"):
    user_id: int
    model: str


class PromptChanged(ConvEvent, frozen=True, kw_only=True, tag="prompt.changed"):
    """A custom system prompt was set; ``prompt`` None clears it."""

    user_id: int
    prompt: str | None
