"""What the agent does with a message: one response per answered turn."""

from __future__ import annotations

from typing import ClassVar, Literal
from uuid import UUID

import msgspec

from events.base import Event, Family
from events.conversation import ConvEvent


class Usage(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Token counts as the model reported them (cumulative, final)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


class ResponseStarted(ConvEvent, frozen=True, kw_only=True, tag="response.started"):
    response_id: UUID
    user_id: int
    thread_id: UUID | None
    message_ids: tuple[int, ...]
    model: str
    max_tokens: int
    attempt: int = 1


class ResponseShown(ConvEvent, frozen=True, kw_only=True, tag="response.shown"):
    """A Telegram message of a response's streamed text was started (outside private chats).

    A group's answer streams in a real message that is edited as it grows and
    becomes the final text. An agent taking the response over edits that same
    message instead of sending a second one next to a stale partial answer.
    """

    response_id: UUID
    user_id: int
    index: int  # the chunk of the answer (past 4096 characters it goes on in a new message)
    telegram_message_id: int


class ResponseCompleted(ConvEvent, frozen=True, kw_only=True, tag="response.completed"):
    """v2: usage became a structure with cache tokens (v1 had two flat counts)."""

    version: ClassVar[int] = 2
    response_id: UUID
    user_id: int
    text: str
    stop_reason: str | None
    usage: Usage
    ttft_ms: int | None
    duration_ms: int
    cost: int = 0
    # The model the cost was priced for, so a takeover can settle from this event alone.
    model: str = ""
    telegram_message_ids: tuple[int, ...] = ()


class ResponseFailed(ConvEvent, frozen=True, kw_only=True, tag="response.failed"):
    response_id: UUID
    user_id: int
    cause: str
    retryable: bool
    partial_text: str = ""
    usage: Usage = Usage()
    cost: int = 0
    # The model the cost was priced for, so a takeover can settle from this event alone.
    model: str = ""


class ResponseCancelled(ConvEvent, frozen=True, kw_only=True, tag="response.cancelled"):
    response_id: UUID
    user_id: int
    reason: Literal["stop", "superseded", "shutdown"]
    partial_text: str = ""
    usage: Usage = Usage()
    cost: int = 0
    # The model the cost was priced for, so a takeover can settle from this event alone.
    model: str = ""


class TokenStreamed(Event, frozen=True, kw_only=True, tag="token.streamed"):
    """One delta (or a small batch of deltas) of an answer being streamed."""

    family: ClassVar[Family] = "tokens"
    response_id: UUID
    index: int
    delta: str
