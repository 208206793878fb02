"""The event envelope shared by every event type."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal
from uuid import UUID

import msgspec

Family = Literal["conv", "ledger", "tokens"]


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", gc=False):
    """Base of every event: the envelope.

    ``family`` picks the stream family, ``partition_key`` the partition within it
    (a chat key for ``conv``/``tokens``, a user id for ``ledger``). ``version`` is
    bumped when a type's shape changes; older versions are upcast on read.
    """

    family: ClassVar[Family]
    version: ClassVar[int] = 1

    event_id: UUID
    occurred_at: datetime
    partition_key: str
    correlation_id: str | None = None
    causation_id: UUID | None = None

    @classmethod
    def type_name(cls) -> str:
        return cls.__struct_config__.tag  # type: ignore[return-value]


def chat_key(chat_id: int, topic_id: int | None = None) -> str:
    """Partition key of a conversation: the chat, and the forum topic if any."""
    return f"{chat_id}" if topic_id is None else f"{chat_id}:{topic_id}"


def user_key(user_id: int) -> str:
    """Partition key of a user's ledger."""
    return str(user_id)
