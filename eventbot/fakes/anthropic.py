"""A fake Anthropic Messages API: ``POST /v1/messages`` over loopback, streamed as real SSE.

The real ``anthropic`` client talks to it through ``base_url``. It answers with
deterministic text derived from the request, reports usage the way the API does
(cumulative, with prompt-cache reads and writes), and can be told to fail: an
HTTP 429 or 529 before the stream, an ``error`` event or a dropped connection
mid-stream. Every request and every delta is recorded with a
``time.perf_counter()`` timestamp so tests and benchmarks can measure against it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from eventbot.fakes.anthropic_models import CATALOGUE, CatalogueEntry, add_model_routes
from eventbot.tasks import wait_until
from services.agent.warmup import sse_event

__all__ = ["FakeAnthropic", "Fault", "RecordedRequest", "RecordedDelta", "answer_text", "count_tokens"]

# Roughly what the real tokenizer gives for English text; only needs to be stable.
CHARS_PER_TOKEN = 4

_WORDS = (
    "event streams keep every step of the answer so a replay can rebuild it "
    "partitions order the log per chat while consumers fold it into read models "
    "the ledger counts money in integers and chains each entry to the one before "
    "a hold reserves the most a request can cost and the charge settles it"
).split()

FaultKind = Literal["http_429", "http_529", "error_event", "drop"]


@dataclass(frozen=True)
class Fault:
    """One scripted failure, used by the next request that reaches it.

    ``http_*`` fail before the stream starts; ``error_event`` and ``drop`` after
    ``after_deltas`` text deltas were sent.
    """

    kind: FaultKind
    after_deltas: int = 0
    retry_after_s: int | None = None


@dataclass(frozen=True)
class RecordedRequest:
    index: int
    received_at: float
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))

    def texts(self) -> list[str]:
        """Every text of the request's messages, in order (for assertions on context)."""
        out: list[str] = []
        for m in self.messages:
            content = m.get("content")
            if isinstance(content, str):
                out.append(content)
            else:
                out += [b.get("text", "") for b in content if b.get("type") == "text"]
        return out


@dataclass(frozen=True)
class RecordedDelta:
    request_index: int
    index: int
    text: str
    produced_at: float


DeltaHook = Callable[[int, int], Awaitable[None]]


@dataclass
class FakeAnthropic:
    """In-process fake server. ``await start()`` then point the client at :attr:`base_url`."""

    answer_chars: int = 200
    delta_chars: int = 24
    delta_delay_s: float = 0.0
    stop_reason: str = "end_turn"
    # Like the current models' adaptive thinking: a thinking block of this many characters
    # streams before the text (block 0, the text block 1), at the deltas' pace; its tokens
    # are billed as output and count against max_tokens. 0: text only. Not shown: like
    # ``display: "omitted"`` (the newest models' default), the block carries no thinking
    # text, only its signature, though it takes as long and is billed the same.
    thinking_chars: int = 0
    thinking_shown: bool = True
    # GET /v1/models; a request naming a retired model fails like the real API's.
    catalogue: dict[str, CatalogueEntry] = field(default_factory=lambda: dict(CATALOGUE))
    # Called before delta ``index`` of request ``request_index`` is sent: lets a
    # test hold the model until it has seen what the bot did with earlier deltas.
    before_delta: DeltaHook | None = None
    host: str = "127.0.0.1"
    port: int = 0

    requests: list[RecordedRequest] = field(default_factory=list)
    deltas: list[RecordedDelta] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    responses_started: int = 0

    def __post_init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._cache: set[str] = set()
        self._changed = asyncio.Condition()
        self.base_url = ""

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/messages", self._messages)
        add_model_routes(app, self.catalogue)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self.port)
        await self._site.start()
        server = self._site._server
        assert server is not None and server.sockets  # type: ignore[union-attr]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://{self.host}:{self.port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeAnthropic:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- knobs and observations -------------------------------------------------

    def fail_next(self, *faults: Fault) -> None:
        """Queue faults; each is consumed by one request, in order."""
        self.faults.extend(faults)

    async def wait_requests(self, n: int, timeout: float = 10.0) -> list[RecordedRequest]:
        await wait_until(self._changed, lambda: len(self.requests) >= n, timeout)
        return self.requests[:n]

    def deltas_of(self, request_index: int) -> list[RecordedDelta]:
        return [d for d in self.deltas if d.request_index == request_index]

    # -- the endpoint -----------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        received_at = time.perf_counter()
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "invalid_request_error", "body is not JSON")
        headers = {k.lower(): v for k, v in request.headers.items() if k.lower() not in ("x-api-key", "authorization")}
        index = len(self.requests)
        self.requests.append(RecordedRequest(index, received_at, body, headers))
        async with self._changed:
            self._changed.notify_all()

        if not (request.headers.get("x-api-key") or request.headers.get("authorization")):
            return _error(401, "authentication_error", "x-api-key header is required")
        problem = _validate(body)
        if problem:
            return _error(400, "invalid_request_error", problem)
        listed = self.catalogue.get(body["model"])
        if listed is not None and listed.lifecycle == "retired":
            return _error(404, "not_found_error", f"model: {body['model']}")
        fault = self.faults.pop(0) if self.faults else None
        if fault and fault.kind == "http_429":
            return _error(429, "rate_limit_error", "Number of requests has exceeded your rate limit", fault.retry_after_s)
        if fault and fault.kind == "http_529":
            return _error(529, "overloaded_error", "Overloaded", fault.retry_after_s)

        text = answer_text(body, self.answer_chars)
        # Like the real model, thinking and answer together end where max_tokens runs out.
        thinking = ("Considering the question. " * (1 + self.thinking_chars // 26))[: self.thinking_chars]
        thinking = thinking[: body["max_tokens"] * CHARS_PER_TOKEN]
        stop_reason = self.stop_reason
        budget = body["max_tokens"] - count_tokens(thinking)
        if count_tokens(text) > budget:
            text, stop_reason = text[: budget * CHARS_PER_TOKEN], "max_tokens"
        usage = self._usage(body)
        if not body.get("stream"):
            return web.json_response(self._message(body, index, text, usage, final=True, stop_reason=stop_reason, thinking=thinking))
        return await self._stream(request, body, index, text, thinking, usage, fault, stop_reason)

    async def _stream(
        self, request: web.Request, body: dict[str, Any], index: int, text: str, thinking: str, usage: dict[str, int],
        fault: Fault | None, stop_reason: str,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        resp.headers["request-id"] = f"req_fake_{index}"
        await resp.prepare(request)
        self.responses_started += 1
        try:
            return await self._write_answer(request, resp, body, index, text, thinking, usage, fault, stop_reason)
        except ConnectionResetError:
            # The client went away mid-answer (a /stop, a killed agent): not the server's error.
            return resp

    async def _write_answer(
        self, request: web.Request, resp: web.StreamResponse, body: dict[str, Any], index: int, text: str, thinking: str,
        usage: dict[str, int], fault: Fault | None, stop_reason: str,
    ) -> web.StreamResponse:
        async def send(data: dict[str, Any]) -> None:
            await resp.write(sse_event(data))

        start_usage = dict(usage, output_tokens=1)
        await send({"type": "message_start", "message": self._message(body, index, "", start_usage)})
        block = 0
        if thinking:
            await send({"type": "content_block_start", "index": 0,
                                               "content_block": {"type": "thinking", "thinking": "", "signature": ""}})
            for i in range(0, len(thinking), self.delta_chars):
                if self.delta_delay_s:
                    await asyncio.sleep(self.delta_delay_s)
                if self.thinking_shown:
                    await send({"type": "content_block_delta", "index": 0,
                                                       "delta": {"type": "thinking_delta", "thinking": thinking[i : i + self.delta_chars]}})
            await send({"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "signature_delta", "signature": f"sig_fake_{index}"}})
            await send({"type": "content_block_stop", "index": 0})
            block = 1
        await send({"type": "content_block_start", "index": block, "content_block": {"type": "text", "text": ""}})
        await send({"type": "ping"})
        chunks = [text[i : i + self.delta_chars] for i in range(0, len(text), self.delta_chars)]
        for n, chunk in enumerate(chunks):
            if fault is not None and fault.after_deltas == n:
                if fault.kind == "drop":
                    # Cut the TCP connection without finishing the chunked body.
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
                if fault.kind == "error_event":
                    await send({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
                    return resp
            if self.before_delta is not None:
                await self.before_delta(index, n)
            if self.delta_delay_s:
                await asyncio.sleep(self.delta_delay_s)
            await send({"type": "content_block_delta", "index": block, "delta": {"type": "text_delta", "text": chunk}})
            self.deltas.append(RecordedDelta(index, n, chunk, time.perf_counter()))
        await send({"type": "content_block_stop", "index": block})
        final_usage = dict(usage, output_tokens=count_tokens(thinking) + count_tokens(text))
        await send({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None}, "usage": final_usage})
        await send({"type": "message_stop"})
        await resp.write_eof()
        return resp

    def _message(
        self, body: dict[str, Any], index: int, text: str, usage: dict[str, int], final: bool = False,
        stop_reason: str | None = None, thinking: str = "",
    ) -> dict[str, Any]:
        thought = ([{"type": "thinking", "thinking": thinking if self.thinking_shown else "", "signature": f"sig_fake_{index}"}]
                   if thinking else [])
        return {
            "id": f"msg_fake_{index:06d}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": [*thought, {"type": "text", "text": text}] if final else [],
            "stop_reason": (stop_reason or self.stop_reason) if final else None,
            "stop_sequence": None,
            "usage": dict(usage, output_tokens=count_tokens(thinking) + count_tokens(text)) if final else usage,
        }

    def _usage(self, body: dict[str, Any]) -> dict[str, int]:
        """Input usage the way the API splits it: cached prefix read or written, the rest uncached."""
        total = count_tokens(_canonical(body.get("system"), body.get("messages")))
        prefix = _cached_prefix(body)
        cached = min(count_tokens(_canonical(*prefix)) if prefix else 0, total)
        read = write = 0
        if cached:
            key = hashlib.sha256(_canonical(body.get("model"), *prefix).encode()).hexdigest()
            if key in self._cache:
                read = cached
            else:
                write = cached
                self._cache.add(key)
        return {
            "input_tokens": total - cached,
            "output_tokens": 0,
            "cache_creation_input_tokens": write,
            "cache_read_input_tokens": read,
        }


def count_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def answer_text(body: dict[str, Any], chars: int) -> str:
    """Deterministic answer: names the last user text, then sentences seeded by the whole request.

    Paragraphs and sentences let a splitter find boundaries in long answers.
    """
    last = ""
    for m in reversed(body.get("messages", [])):
        if m.get("role") == "user":
            c = m.get("content")
            last = c if isinstance(c, str) else " ".join(b.get("text", "") for b in c if b.get("type") == "text")
            break
    seed = int.from_bytes(hashlib.sha256(_canonical(body.get("system"), body.get("messages")).encode()).digest()[:8], "big")
    out = [f"You said: {' '.join(last.split())[:60]}."]
    size = len(out[0])
    n = 0
    while size < chars:
        words = []
        for _ in range(8 + n % 5):
            seed = (seed * 6364136223846793005 + 1442695040888963407) % 2**64  # an LCG: stable everywhere
            words.append(_WORDS[(seed >> 33) % len(_WORDS)])
        sentence = " ".join(words).capitalize() + "."
        sep = "\n\n" if n % 4 == 3 else " "
        out.append(sep + sentence)
        size += len(sep) + len(sentence)
        n += 1
    return "".join(out)[: max(chars, 1)].rstrip() or "."


def _canonical(*parts: Any) -> str:
    return json.dumps(parts, sort_keys=True, separators=(",", ":"))


def _cached_prefix(body: dict[str, Any]) -> tuple[Any, ...]:
    """System and messages up to and including the last block marked ``cache_control``."""
    system = body.get("system")
    marked: tuple[Any, ...] = ()
    if isinstance(system, list) and any("cache_control" in b for b in system):
        marked = (system,)
    for i, m in enumerate(body.get("messages", [])):
        content = m.get("content")
        if isinstance(content, list) and any(isinstance(b, dict) and "cache_control" in b for b in content):
            marked = (system, body["messages"][: i + 1])
    return marked


def _validate(body: dict[str, Any]) -> str | None:
    """The checks of the real API that a bot bug would trip."""
    if not isinstance(body.get("model"), str):
        return "model: field required"
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        return "max_tokens: must be a positive integer"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    expected = "user"
    for i, m in enumerate(messages):
        if m.get("role") != expected:
            return f"messages.{i}.role: roles must alternate between user and assistant, starting with user"
        content = m.get("content")
        if not content or (isinstance(content, list) and not all(isinstance(b, dict) and b.get("type") for b in content)):
            return f"messages.{i}.content: must be a non-empty string or list of blocks"
        expected = "assistant" if expected == "user" else "user"
    if sum(1 for b in _blocks(body) if "cache_control" in b) > 4:
        return "A maximum of 4 blocks with cache_control may be provided"
    return None


def _blocks(body: dict[str, Any]) -> list[dict[str, Any]]:
    out = [b for b in body.get("system") or [] if isinstance(b, dict)] if isinstance(body.get("system"), list) else []
    for m in body.get("messages", []):
        if isinstance(m.get("content"), list):
            out += [b for b in m["content"] if isinstance(b, dict)]
    return out


def _error(status: int, kind: str, message: str, retry_after_s: int | None = None) -> web.Response:
    headers = {"retry-after": str(retry_after_s)} if retry_after_s is not None else {}
    # The real API says whether to retry; the agent decides on its own, the header is informative.
    headers["x-should-retry"] = "true" if status in (429, 529) else "false"
    return web.json_response({"type": "error", "error": {"type": kind, "message": message}}, status=status, headers=headers)
