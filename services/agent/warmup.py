"""Paying the Anthropic SDK's first-use costs at start, before a user does.

The SDK imports modules and builds its pydantic validators lazily, on the first
streamed answer: on the bench machine about 100 ms of CPU in a few slices, during
which every other answer of the process waits (it was the agent bench's hot-path
p99: 200 conversations start at once, and all of them queued behind it). Streaming
one canned answer through the same code at start moves that cost before the first
message is taken.

The canned answer never leaves the process: the SDK's HTTP client is given a mock
transport, so no request reaches Anthropic (or anything else).
"""

from __future__ import annotations

import logging
import time

import anthropic
import httpx2
import orjson

from services.agent.model import Progress, RetryPolicy, stream_answer
from services.agent.request import CACHE

log = logging.getLogger("eventbot.agent.warmup")


def sse_event(data: dict) -> bytes:
    """One server-sent event of the Messages API stream: named by its ``type``, JSON data."""
    return b"event: %s\ndata: %s\n\n" % (data["type"].encode(), orjson.dumps(data))


def canned_answer(model: str) -> bytes:
    """The event sequence of a short streamed text answer, as the Messages API sends it."""
    usage = {"input_tokens": 12, "output_tokens": 1, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    return b"".join(map(sse_event, (
        {"type": "message_start", "message": {"id": "msg_warmup", "type": "message", "role": "assistant", "model": model,
                                              "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Ready."}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {**usage, "output_tokens": 3}},
        {"type": "message_stop"},
    )))


async def warm_up(model: str) -> Progress:
    """Stream one canned answer through ``stream_answer``; returns what it produced (for tests)."""
    body = canned_answer(model)

    def reply(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    started = time.perf_counter()
    progress = Progress()
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(reply)) as http:
        client = anthropic.AsyncAnthropic(api_key="warm-up", base_url="http://127.0.0.1:9", http_client=http, max_retries=0)
        # The shape of a real request: a cached system prompt and a turn of text.
        params = {"model": model, "max_tokens": 16,
                  "system": [{"type": "text", "text": "Warm-up.", "cache_control": CACHE}],
                  "messages": [{"role": "user", "content": [{"type": "text", "text": "Ready?"}]}]}
        await stream_answer(client, params, progress, lambda _: None, retry=RetryPolicy(attempts=1))
    log.debug("Anthropic SDK warmed up in %.1f ms", (time.perf_counter() - started) * 1000)
    return progress
