"""Calling Claude: one streamed answer, retried only while nothing has been shown.

429, 529/overloaded, 5xx and dropped connections before the first text delta
are retried with capped exponential backoff (honouring ``retry-after`` when the
API sends one), a bounded number of times. After the first delta an error ends
the answer: what was produced is kept in :class:`Progress` for the caller to
show, record and charge. Progress is updated in place so that a caller who
cancels the stream still knows exactly what was produced.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import anthropic
import msgspec

from events import Usage
from services.agent.pacing import next_turn
from services.agent.sse import StreamError, StreamUsage, stream_events

log = logging.getLogger("eventbot.agent.model")

# Roughly what the tokenizer gives for English; used only when a stream ends
# before the API reported the output count (cancel, error mid-stream).
CHARS_PER_OUTPUT_TOKEN = 4
# Parsing between two yields to the event loop. Events that arrived together (a
# fast model, a slow loop) would otherwise be parsed without suspending: one answer's
# burst would hold up every other conversation's hot path and first send.
SLICE_S = 0.0005
THINKING_BLOCKS = ("thinking", "redacted_thinking")


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    attempts: int = 4  # calls in all, the first included
    base_s: float = 0.5
    cap_s: float = 8.0


class Progress:
    """What one call to Claude has produced so far."""

    def __init__(self) -> None:
        self.text = ""
        self.deltas = 0
        # Thinking before the text (current models think by default): never shown to the
        # user, but produced and billed, so a call cut off or stopped while thinking is
        # charged too. Its text may be summarised or omitted (``display``), so the tokens
        # estimated from it are a lower bound; the input is known either way.
        self.thinking = False
        self.thinking_chars = 0
        self.attempts = 0
        self.first_token_at: float | None = None
        self.stop_reason: str | None = None
        self.message_id: str | None = None
        self._input = Usage()
        self._output_tokens: int | None = None

    def reset_attempt(self) -> None:
        """A failed attempt that showed the user nothing is retried; its usage is not the call's."""
        self._input = Usage()
        self._output_tokens = None
        self.thinking = False
        self.thinking_chars = 0

    @property
    def produced(self) -> bool:
        """Whether the model produced anything (text or thinking): from then on the call is charged."""
        return bool(self.deltas or self.thinking)

    @property
    def charged_usage(self) -> Usage:
        """What the call is charged for: its usage once it produced anything, else nothing."""
        return self.usage if self.produced else Usage()

    @property
    def usage(self) -> Usage:
        """Final usage if the API reported it, else input as reported and output estimated from the text."""
        output = self._output_tokens
        if output is None:
            produced = len(self.text) + self.thinking_chars
            output = max(self.deltas, math.ceil(produced / CHARS_PER_OUTPUT_TOKEN)) if produced else 0
        return msgspec.structs.replace(self._input, output_tokens=output)


class ModelError(Exception):
    """The call failed; ``retryable``: asking again later may well work."""

    def __init__(self, cause: str, retryable: bool) -> None:
        super().__init__(cause)
        self.cause = cause
        self.retryable = retryable


def classify(error: BaseException) -> ModelError:
    """A short, secret-free cause and whether the failure is transient."""
    if isinstance(error, anthropic.APIStatusError):
        body = error.body if isinstance(error.body, dict) else {}
        kind = (body.get("error") or {}).get("type") if isinstance(body.get("error"), dict) else None
        return _by_status(error.status_code, kind)
    if isinstance(error, StreamError):
        return _by_status(200, error.kind)  # the stream had begun: its status was 200
    if isinstance(error, (anthropic.APIConnectionError, anthropic.APITimeoutError)):
        return ModelError("connection", True)
    if isinstance(error, (OSError, asyncio.TimeoutError)) or type(error).__module__.startswith(("httpx", "httpcore")):
        return ModelError("connection", True)  # the SDK lets a cut mid-body through as the transport's error
    return ModelError(type(error).__name__, False)


def _by_status(status: int, kind: str | None) -> ModelError:
    if status == 429 or kind == "rate_limit_error":
        return ModelError("rate_limited", True)
    if status == 529 or kind == "overloaded_error":
        return ModelError("overloaded", True)
    if status >= 500 or kind == "api_error":
        return ModelError(f"server_error_{status}", True)
    return ModelError(kind or f"http_{status}", False)


async def stream_answer(
    client: anthropic.AsyncAnthropic,
    params: dict[str, Any],
    progress: Progress,
    on_delta: Callable[[str], None],
    *,
    retry: RetryPolicy,
    on_retry: Callable[[str], None] = lambda cause: None,
    clock: Callable[[], float] = time.perf_counter,
    pace: Callable[[], Awaitable[None]] = next_turn,
    on_open: Callable[[], None] = lambda: None,
) -> None:
    """Stream one answer into ``progress``, calling ``on_delta`` per text delta; raises :class:`ModelError`.

    ``pace`` is awaited after every ``SLICE_S`` of parsing: the agent passes its
    :class:`~services.agent.pacing.BackgroundGate`, so a burst of stream events waits
    behind other conversations' urgent work instead of before it. ``on_open`` is
    called when the model has accepted the request (the stream's headers arrived).
    """
    while True:
        progress.attempts += 1
        try:
            async with _open(client, params) as stream:
                on_open()
                slice_began = time.perf_counter()
                async for event in stream_events(stream.response):
                    if time.perf_counter() - slice_began >= SLICE_S:
                        # Up to its first text an answer is urgent work itself: it only yields a turn.
                        await (pace() if progress.deltas else next_turn())
                        slice_began = time.perf_counter()
                    kind, delta = event.type, event.delta
                    if kind == "message_start" and event.message is not None:
                        progress.message_id = event.message.id
                        u = event.message.usage
                        progress._input = Usage(
                            input_tokens=u.input_tokens or 0,
                            cache_read_tokens=u.cache_read_input_tokens or 0,
                            cache_write_tokens=u.cache_creation_input_tokens or 0,
                        )
                    elif kind == "content_block_delta" and delta is not None and delta.type == "text_delta":
                        first = progress.first_token_at is None
                        if first:
                            progress.first_token_at = clock()
                        progress.text += delta.text
                        progress.deltas += 1
                        on_delta(delta.text)
                        if first:
                            # Let the presenter send the first text now: buffered deltas would
                            # otherwise be parsed without a yield, and the user waits for them.
                            await asyncio.sleep(0)
                    elif kind == "content_block_start" and event.content_block is not None and event.content_block.type in THINKING_BLOCKS:
                        progress.thinking = True
                    elif kind == "content_block_delta" and delta is not None and delta.type == "thinking_delta":
                        progress.thinking_chars += len(delta.thinking)
                    elif kind == "message_delta":
                        if event.usage is not None:
                            _final_usage(progress, event.usage)
                        progress.stop_reason = delta.stop_reason if delta is not None else None
            return
        except anthropic.APIStatusError as e:
            failure, pause = classify(e), _retry_after(e)
        except StreamError as e:
            failure, pause = classify(e), None
        except (anthropic.APIConnectionError, OSError, asyncio.TimeoutError) as e:
            failure, pause = classify(e), None
        except Exception as e:  # noqa: BLE001 - transport errors of the SDK's HTTP stack
            failure = classify(e)
            if failure.cause != "connection":
                raise failure from e
            pause = None
        if progress.deltas or not failure.retryable or progress.attempts >= retry.attempts:
            raise failure
        on_retry(failure.cause)
        # Before the pause: a /stop during it ends a call that is charged for its last attempt only.
        progress.reset_attempt()
        backoff = min(retry.cap_s, retry.base_s * 2 ** (progress.attempts - 1)) * (0.5 + random.random() / 2)
        await asyncio.sleep(min(retry.cap_s, pause) if pause is not None else backoff)


def _open(client: anthropic.AsyncAnthropic, params: dict[str, Any]) -> Any:
    """The SDK's stream manager; its warnings (a deprecated model) go to the log, not into the answer.

    ``stream()`` warns synchronously, so catching here can't interleave with other tasks.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manager = client.messages.stream(**params)
    for w in caught:
        _log_warning_once(str(params.get("model")), w.category.__name__, str(w.message).splitlines()[0])
    return manager


@functools.lru_cache(maxsize=64)
def _log_warning_once(model: str, category: str, message: str) -> None:
    log.warning("Anthropic SDK %s for model %s: %s", category, model, message)


def _final_usage(progress: Progress, u: StreamUsage) -> None:
    # message_delta usage is cumulative; input counts appear there on newer API versions only.
    progress._output_tokens = u.output_tokens
    if u.input_tokens is not None:
        progress._input = Usage(
            input_tokens=u.input_tokens,
            cache_read_tokens=u.cache_read_input_tokens or 0,
            cache_write_tokens=u.cache_creation_input_tokens or 0,
        )


def _retry_after(e: anthropic.APIStatusError) -> float | None:
    try:
        value = e.response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (ValueError, AttributeError):
        return None
