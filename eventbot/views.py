"""What the hot path reads: the shapes of the Redis read models, and the reader's Protocol.

The projector's ``readmodel`` group builds these; ingest and the agent read
them through a :class:`ReadModels` implementation, never from Postgres.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Protocol
from uuid import UUID

import msgspec

from events import Attachment


class LedgerOp(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    type: str
    amount: int
    balance_after: int
    occurred_at: datetime
    reference: str = ""


class UserView(msgspec.Struct, frozen=True, kw_only=True):
    user_id: int
    username: str | None = None
    first_name: str = ""
    last_name: str | None = None
    language_code: str | None = None
    model: str | None = None
    prompt: str | None = None
    balance: int = 0
    held: int = 0
    recent_ops: tuple[LedgerOp, ...] = ()


class ThreadView(msgspec.Struct, frozen=True, kw_only=True):
    thread_id: UUID
    chat_id: int
    topic_id: int | None = None
    title: str = ""


class Turn(msgspec.Struct, frozen=True, kw_only=True):
    role: Literal["user", "assistant"]
    text: str
    attachments: tuple[Attachment, ...] = ()
    message_id: int | None = None
    response_id: UUID | None = None
    occurred_at: datetime | None = None


class FileView(msgspec.Struct, frozen=True, kw_only=True):
    message_id: int
    user_id: int
    file: Attachment


ResponseState = Literal["started", "completed", "failed", "cancelled"]


class ResponseView(msgspec.Struct, frozen=True, kw_only=True):
    """Enough for an agent taking over a generation to know what was already done."""

    response_id: UUID
    state: ResponseState
    chat_id: int
    topic_id: int | None = None
    user_id: int
    text: str = ""
    telegram_message_ids: tuple[int, ...] = ()
    cost: int = 0


class Context(msgspec.Struct, frozen=True, kw_only=True):
    user: UserView
    thread: ThreadView | None
    history: tuple[Turn, ...]
    files: tuple[FileView, ...]


class ReadModels(Protocol):
    async def user(self, user_id: int) -> UserView | None: ...

    async def context(self, chat_id: int, topic_id: int | None, user_id: int) -> Context:
        """User, current thread, its recent history and files: one Redis round trip."""
        ...

    async def context_after(self, entry_id: str, chat_id: int, topic_id: int | None, user_id: int, timeout: float) -> Context | None:
        """:meth:`context` as of ``entry_id``: everything of the chat's stream through it, whether the
        builder has applied it yet or not (None: not reachable within ``timeout``)."""
        ...

    async def response(self, response_id: UUID, partition_key: str) -> ResponseView | None: ...

    async def wait_applied(self, stream: str, entry_id: str, timeout: float) -> bool:
        """True once the read model has applied ``stream`` up to ``entry_id``."""
        ...
