"""One send limiter per chat: Telegram's flood control, honoured before it bites.

Telegram allows about one message a second per chat and answers more with 429
and a ``retry_after``. Everything the agent sends to a chat goes through that
chat's limiter: sends are serialised, draft updates are spaced by the draft
interval and skipped while the chat is cooling down (the next update carries
the newer text anyway), and essential sends (the final message) wait out every
``retry_after`` until they get through. A text identical to the last one sent
to the same target is never sent again (Telegram would answer "message is not
modified", and it would count against the limit for nothing). An essential send
repeated with the same text (an answer retried in this process after Redis failed
under it) gets back what the first one returned: the message already in the chat,
not a second copy of it.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import TypeVar

from aiogram.exceptions import TelegramRetryAfter

T = TypeVar("T")

Clock = Callable[[], float]


class Skipped(Exception):
    """A draft update was not sent (cooling down, or its text is unchanged)."""


class ChatLimiter:
    def __init__(self, *, max_retry_wait_s: float = 600.0, clock: Clock = time.monotonic) -> None:
        self._lock = asyncio.Lock()
        self._clock = clock
        self.blocked_until = 0.0
        self.max_retry_wait_s = max_retry_wait_s
        # target -> (last text sent to it, what that send returned)
        self._last_sent: OrderedDict[Hashable, tuple[str, object]] = OrderedDict()
        self.retry_afters = 0

    def cooling_down(self) -> float:
        """Seconds until Telegram accepts sends to this chat again (0 if it does now)."""
        return max(0.0, self.blocked_until - self._clock())

    def unchanged(self, target: Hashable, text: str) -> bool:
        last = self._last_sent.get(target)
        return last is not None and last[0] == text

    async def draft(self, target: Hashable, text: str, send: Callable[[], Awaitable[T]]) -> T:
        """Send an update that a later one may replace; raises :class:`Skipped` if not sent."""
        if self.unchanged(target, text) or self.cooling_down():
            raise Skipped
        async with self._lock:
            if self.unchanged(target, text) or self.cooling_down():
                raise Skipped
            try:
                result = await send()
            except TelegramRetryAfter as e:
                self._cool(e.retry_after)
                raise Skipped from e
            self._remember(target, text, result)
            return result

    async def essential(self, target: Hashable, text: str, send: Callable[[], Awaitable[T]]) -> T | None:
        """Send until it gets through, waiting out each ``retry_after``.

        If this exact text already went to ``target``, nothing is sent and the
        earlier send's result is returned.
        """
        waited = 0.0
        async with self._lock:
            while True:
                if self.unchanged(target, text):
                    return self._last_sent[target][1]  # type: ignore[return-value]
                pause = self.cooling_down()
                if pause:
                    if waited + pause > self.max_retry_wait_s:
                        raise TimeoutError(f"flood control kept the chat closed for {waited + pause:.0f}s")
                    await asyncio.sleep(pause)
                    waited += pause
                try:
                    result = await send()
                except TelegramRetryAfter as e:
                    self._cool(e.retry_after)
                    continue
                self._remember(target, text, result)
                return result

    async def action(self, send: Callable[[], Awaitable[T]]) -> T | None:
        """A chat action (typing): best effort, never while cooling down, never waits for the lock."""
        if self.cooling_down() or self._lock.locked():
            return None
        try:
            return await send()
        except TelegramRetryAfter as e:
            self._cool(e.retry_after)
            return None

    def forget(self, target: Hashable) -> None:
        self._last_sent.pop(target, None)

    def _cool(self, retry_after: float) -> None:
        self.retry_afters += 1
        self.blocked_until = max(self.blocked_until, self._clock() + retry_after)

    def _remember(self, target: Hashable, text: str, result: object) -> None:
        self._last_sent[target] = (text, result)
        self._last_sent.move_to_end(target)
        while len(self._last_sent) > 64:  # targets of finished answers: old ones are never edited again
            self._last_sent.popitem(last=False)


class Limiters:
    """The per-chat limiters of one agent process, least recently used dropped past ``capacity``."""

    def __init__(self, capacity: int = 10_000, **options: object) -> None:
        self._by_chat: OrderedDict[int, ChatLimiter] = OrderedDict()
        self.capacity = capacity
        self._options = options

    def for_chat(self, chat_id: int) -> ChatLimiter:
        limiter = self._by_chat.get(chat_id)
        if limiter is None:
            limiter = self._by_chat[chat_id] = ChatLimiter(**self._options)  # type: ignore[arg-type]
            while len(self._by_chat) > self.capacity:
                oldest, old = next(iter(self._by_chat.items()))
                if old.cooling_down() or old._lock.locked():
                    break  # never forget a chat that is cooling down or mid-send
                self._by_chat.popitem(last=False)
        self._by_chat.move_to_end(chat_id)
        return limiter
