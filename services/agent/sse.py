"""Claude's streamed events, read off the response that ``messages.stream()`` opened.

The SDK builds and sends the request, and turns an HTTP error into its
exceptions; the answer's events are read here. The SDK would make each event
into pydantic models twice over (the raw event, then the message snapshot it
accumulates), which the agent does not use: it keeps its own tally
(:class:`~services.agent.model.Progress`). In the agent bench that cost about
2 ms of CPU per answer and 0.6 ms between the first delta's arrival and its
text reaching the presenter (BENCHMARKS.md). Small msgspec Structs carry what
the agent reads, and any field or event type it does not know is passed over,
as the SDK does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import msgspec


class StreamUsage(msgspec.Struct):
    """Usage as the stream reports it: in full at ``message_start``, cumulative at ``message_delta``."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


class StreamMessage(msgspec.Struct):
    id: str
    usage: StreamUsage


class ContentBlock(msgspec.Struct):
    type: str


class Delta(msgspec.Struct):
    """A content block's delta (text, thinking, ...) or the message's (its stop reason)."""

    type: str | None = None
    text: str = ""
    thinking: str = ""
    stop_reason: str | None = None


class StreamEvent(msgspec.Struct):
    """One event; the fields its ``type`` carries are set, the others left None."""

    type: str
    message: StreamMessage | None = None
    content_block: ContentBlock | None = None
    delta: Delta | None = None
    usage: StreamUsage | None = None


class ErrorDetail(msgspec.Struct):
    type: str = "api_error"


class ErrorBody(msgspec.Struct):
    error: ErrorDetail = msgspec.field(default_factory=ErrorDetail)


class StreamError(Exception):
    """The API ended the stream with an ``error`` event (``kind``: overloaded_error, api_error, ...)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class Lines(Protocol):
    def aiter_lines(self) -> AsyncIterator[str]: ...


_EVENT = msgspec.json.Decoder(StreamEvent)
_ERROR = msgspec.json.Decoder(ErrorBody)


async def stream_events(response: Lines) -> AsyncIterator[StreamEvent]:
    """The response's server-sent events, decoded; raises :class:`StreamError` at an ``error`` event.

    Like the SDK: an event without a name, or a ``ping``, carries nothing to read.
    """
    name: str | None = None
    data: list[str] = []
    async for line in response.aiter_lines():
        if line:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
            continue
        if name is not None and name != "ping" and data:
            yield _decoded(name, "\n".join(data))
        name, data = None, []
    if name is not None and name != "ping" and data:
        yield _decoded(name, "\n".join(data))  # a last event the server did not end with a blank line


def _decoded(name: str, data: str) -> StreamEvent:
    if name == "error":
        try:
            kind = _ERROR.decode(data).error.type
        except msgspec.DecodeError:
            kind = "api_error"
        raise StreamError(kind)
    return _EVENT.decode(data)
