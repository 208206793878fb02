"""One streamed answer, three ways: what reading Claude's stream costs the agent.

    .venv/bin/python -m bench.stream [--calls 300] [--json FILE]

Against the fake model in a process of its own (zero delay, the bench's 400-character
answer in 20 deltas), one call at a time, the same request each time:

- ``sdk``: ``messages.stream()`` iterated as the SDK offers it (its pydantic event
  models and message snapshot), as the agent did before ``services/agent/sse.py``;
- ``agent``: ``messages.stream()`` opened, its events read by ``stream_events``, as the
  agent does now;
- ``raw``: a bare aiohttp POST whose body is read line by line: the limit.

Per call, p50 of: the time to the first text delta, and the CPU this process spent up
to it and in all (``time.thread_time``). Rounds of ``--calls`` calls of each, in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import anthropic

from bench.agent import MODEL, ModelProcess
from bench.report import Figure, emit
from services.agent.sse import stream_events

# The shape of one of the bench's requests: a cached system prompt and two earlier exchanges.
PARAMS = {
    "model": MODEL, "max_tokens": 1024,
    "system": [{"type": "text", "text": "You are a helpful assistant. " * 20, "cache_control": {"type": "ephemeral"}}],
    "messages": [{"role": "user", "content": f"question {i}"} if i % 2 == 0 else {"role": "assistant", "content": "an answer " * 30}
                 for i in range(5)],
}

Sample = tuple[float, float, float]  # seconds to the first text delta, CPU to it, CPU in all
Way = Callable[[], Awaitable[Sample]]


async def _timed(began: float, cpu: float, events: AsyncIterator[Any], is_delta: Callable[[Any], bool]) -> Sample:
    """Reads ``events`` to the end; the time and CPU to the first delta, the CPU in all."""
    first = None
    async for event in events:
        if first is None and is_delta(event):
            first = (time.perf_counter() - began, time.thread_time() - cpu)
    assert first is not None, "no text delta in the answer"
    return (*first, time.thread_time() - cpu)


def ways(client: anthropic.AsyncAnthropic, http: aiohttp.ClientSession, url: str) -> dict[str, Way]:
    def is_delta(event: Any) -> bool:
        return event.type == "content_block_delta"

    async def sdk() -> Sample:
        began, cpu = time.perf_counter(), time.thread_time()
        async with client.messages.stream(**PARAMS) as stream:
            return await _timed(began, cpu, stream.__aiter__(), is_delta)

    async def agent() -> Sample:
        began, cpu = time.perf_counter(), time.thread_time()
        async with client.messages.stream(**PARAMS) as stream:
            return await _timed(began, cpu, stream_events(stream.response), is_delta)

    async def raw() -> Sample:
        began, cpu = time.perf_counter(), time.thread_time()
        headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
        async with http.post(f"{url}/v1/messages", json={**PARAMS, "stream": True}, headers=headers) as resp:
            return await _timed(began, cpu, resp.content.__aiter__(), lambda line: line.startswith(b"event: content_block_delta"))

    return {"sdk": sdk, "agent": agent, "raw": raw}


async def main(calls: int, rounds: int, json_path: str | None) -> None:
    model = ModelProcess()
    url = await model.start()
    samples: dict[str, list[Sample]] = {}
    try:
        async with aiohttp.ClientSession() as http, anthropic.AsyncAnthropic(
            api_key="bench-key", base_url=url, max_retries=0, http_client=anthropic.DefaultAioHttpClient(),
        ) as client:
            each = ways(client, http, url)
            for way in each.values():  # warm-up: imports, validators, connections
                for _ in range(30):
                    await way()
            for _ in range(rounds):
                for name, way in each.items():
                    samples.setdefault(name, []).extend([await way() for _ in range(calls)])
    finally:
        model.stop()
    ms = 1000.0

    def p50(name: str, i: int) -> float:
        return statistics.median(s[i] for s in samples[name]) * ms

    figures = []
    for name in ("sdk", "agent"):
        figures += [
            Figure(f"stream {name}: to the first delta, p50", p50(name, 0), "ms", limit=p50("raw", 0)),
            Figure(f"stream {name}: CPU to the first delta, p50", p50(name, 1), "ms", limit=p50("raw", 1)),
            Figure(f"stream {name}: CPU per call, p50", p50(name, 2), "ms", limit=p50("raw", 2)),
        ]
    print(f"# {rounds} rounds of {calls} calls of each way, one at a time; the raw POST is the limit")
    emit(figures, json_path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.rounds, args.json_path))
