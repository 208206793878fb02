"""Reading Claude's server-sent events: what the agent reads, what it passes over, how an error ends it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.agent.model import classify
from services.agent.sse import StreamError, StreamEvent, stream_events


class Body:
    """A response body as httpx hands it over: already split into lines, without their line ends."""

    def __init__(self, text: str) -> None:
        self.lines = text.split("\n")

    async def aiter_lines(self) -> AsyncIterator[str]:
        for line in self.lines:
            yield line


async def read(text: str) -> list[StreamEvent]:
    return [e async for e in stream_events(Body(text))]


async def test_the_events_the_agent_reads_are_decoded_with_their_fields() -> None:
    events = await read(
        "event: message_start\n"
        'data: {"type":"message_start","message":{"id":"msg_1","model":"m","content":[],'
        '"usage":{"input_tokens":12,"output_tokens":1,"cache_read_input_tokens":5,"cache_creation_input_tokens":null}}}\n'
        "\n"
        "event: content_block_start\n"
        'data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}\n'
        "\n"
        "event: content_block_delta\n"
        'data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Hi"}}\n'
        "\n"
        "event: message_delta\n"
        'data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":7}}\n'
        "\n"
    )
    start, block, delta, end = events
    assert start.message is not None and start.message.id == "msg_1"
    assert (start.message.usage.input_tokens, start.message.usage.cache_read_input_tokens) == (12, 5)
    assert start.message.usage.cache_creation_input_tokens is None
    assert block.content_block is not None and block.content_block.type == "thinking"
    assert delta.delta is not None and (delta.delta.type, delta.delta.text) == ("text_delta", "Hi")
    assert end.delta is not None and end.delta.stop_reason == "end_turn"
    assert end.usage is not None and (end.usage.output_tokens, end.usage.input_tokens) == (7, None)


async def test_pings_unnamed_events_and_unknown_types_and_fields_are_passed_over_not_errors() -> None:
    events = await read(
        ": a comment line\n"
        "event: ping\n"
        'data: {"type": "ping"}\n'
        "\n"
        'data: {"type":"content_block_delta","delta":{"type":"text_delta","text":"unnamed"}}\n'
        "\n"
        "event: content_block_delta\n"
        'data: {"type":"content_block_delta","index":0,"delta":{"type":"citations_delta","citation":{"x":1}}}\n'
        "\n"
        "event: some_future_event\n"
        'data: {"type":"some_future_event","novel":[1,2]}\n'
        "\n"
    )
    assert [(e.type, e.delta.type if e.delta else None) for e in events] == [
        ("content_block_delta", "citations_delta"), ("some_future_event", None),
    ]


async def test_data_split_over_lines_is_joined_and_a_last_event_without_a_blank_line_is_read() -> None:
    events = await read(
        "event: content_block_delta\n"
        'data: {"type":"content_block_delta",\n'
        'data:"delta":{"type":"text_delta","text":"a\\nb"}}\n'
        "\n"
        "event: message_stop\n"
        'data: {"type":"message_stop"}'
    )
    assert [e.type for e in events] == ["content_block_delta", "message_stop"]
    assert events[0].delta is not None and events[0].delta.text == "a\nb"


@pytest.mark.parametrize(("data", "cause", "retryable"), [
    ('{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}', "overloaded", True),
    ('{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}', "rate_limited", True),
    ('{"type":"error","error":{"type":"api_error","message":"oops"}}', "server_error_200", True),
    ('{"type":"error","error":{"type":"invalid_request_error","message":"no"}}', "invalid_request_error", False),
    ("not json", "server_error_200", True),
])
async def test_an_error_event_ends_the_stream_classified_as_the_sdk_would(data: str, cause: str, retryable: bool) -> None:
    seen: list[str] = []
    with pytest.raises(StreamError) as info:
        async for event in stream_events(Body(
            'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"type":"text_delta","text":"x"}}\n\n'
            f"event: error\ndata: {data}\n\n"
            'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"type":"text_delta","text":"y"}}\n\n'
        )):
            seen.append(event.delta.text if event.delta else "")
    assert seen == ["x"]  # nothing after the error is read
    failure = classify(info.value)
    assert (failure.cause, failure.retryable) == (cause, retryable)
