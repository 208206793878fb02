"""Shows one answer in Telegram while it streams, then as its final message(s).

The first text goes out as soon as it exists (that is the user's time to first
token); later updates are coalesced to one per draft interval. Private chats
get ``sendMessageDraft`` (an animated, ephemeral preview) and the final text as
real messages; other chats get a message that is edited as the answer grows.
Past 4096 characters the answer continues in a new message, and the finished
part is finalised at once. A typing action runs until the first text is shown.
An agent taking an answer over goes on in the messages its dead agent started
(``continue_in``), so a group never keeps a stale half answer beside a copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import msgspec
from aiogram import Bot
from aiogram.exceptions import TelegramBadRequest
from aiogram.types import Message, ReplyParameters

from eventbot.tasks import cancel_and_wait
from services.agent.formatting import is_entity_error, markdown_to_html
from services.agent.limiter import ChatLimiter, Skipped
from services.agent.pacing import next_turn
from services.agent.splitting import TELEGRAM_LIMIT, split_text

log = logging.getLogger("eventbot.agent.presenter")


class Target(msgspec.Struct, frozen=True, kw_only=True):
    chat_id: int
    topic_id: int | None = None
    private: bool
    reply_to: int | None = None
    draft_id: int = 1  # non-zero; per answer, so a restarted answer starts a fresh draft


class Presenter:
    def __init__(
        self,
        bot: Bot,
        limiter: ChatLimiter,
        target: Target,
        *,
        interval_s: float,
        typing_interval_s: float = 4.5,
        typing_grace_s: float = 0.25,
        limit: int = TELEGRAM_LIMIT,
        clock: Callable[[], float] = time.perf_counter,
        pace: Callable[[], Awaitable[None]] = next_turn,
        on_first_shown: Callable[[], None] = lambda: None,
        on_message_started: Callable[[int, int], None] = lambda index, message_id: None,
    ) -> None:
        self.bot = bot
        # Awaited before each update after the first: those are background work (see pacing.py).
        self.pace = pace
        self.on_first_shown = on_first_shown
        # Outside private chats: (chunk index, message id) of each message this answer starts.
        self.on_message_started = on_message_started
        self.limiter = limiter
        self.target = target
        self.interval_s = interval_s
        self.typing_interval_s = typing_interval_s
        self.typing_grace_s = typing_grace_s
        self.limit = limit
        self.clock = clock
        self.first_sent_at: float | None = None
        self.message_ids: list[int] = []  # one per chunk finalised or (outside private chats) started
        self._finalised = 0  # chunks sent in their final form
        self._text = ""
        self._changed = asyncio.Event()
        self._next_at = 0.0
        self._pump: asyncio.Task[None] | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._typing: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------

    def start_typing(self) -> None:
        if self._typing is None:
            self._typing = asyncio.create_task(self._typing_loop())

    def continue_in(self, message_ids: Sequence[int]) -> None:
        """A takeover: the messages a dead agent started for this answer are edited, not sent again.

        Only outside private chats (a private chat's drafts are gone with their agent).
        Called before the first update.
        """
        if not self.target.private:
            self.message_ids = list(message_ids)

    def update(self, text: str) -> None:
        """The answer so far; shown at once if nothing was shown yet, else at the next interval."""
        self._text = text
        if self._pump is None:
            self._stop_typing()
            # The first text is the user's time to first token: flush it now, not a pump cycle later.
            self._flushing = asyncio.create_task(self._flush())
            self._pump = asyncio.create_task(self._pump_loop(self._flushing))
        else:
            self._changed.set()

    async def finish(self, text: str) -> tuple[int, ...]:
        """Send the final text as real message(s); returns their Telegram ids, in order."""
        await self._stop_pump()
        self._stop_typing()
        chunks = split_text(text, self.limit) if text.strip() else []
        for i, chunk in enumerate(chunks):
            await self._finalise(i, chunk)
        if not self.target.private:
            # A takeover's answer can come out shorter than what its dead agent had started.
            await self._delete(self.message_ids[len(chunks) :])
            del self.message_ids[len(chunks) :]
        return tuple(self.message_ids[: len(chunks)])

    async def discard(self) -> None:
        """The answer was superseded: remove what was shown of it (outside private chats)."""
        await self._stop_pump()
        self._stop_typing()
        if not self.target.private:
            await self._delete(self.message_ids[self._finalised :])
        self.message_ids = self.message_ids[: self._finalised]

    async def close(self) -> None:
        await self._stop_pump()
        self._stop_typing()

    # -- internals -----------------------------------------------------------

    async def _pump_loop(self, first: asyncio.Task[None]) -> None:
        flushing = first
        while True:
            try:
                await asyncio.shield(flushing)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - an update is best effort; finish() reports real failures
                log.warning("draft update to chat failed: %s", type(e).__name__)
                self._next_at = self.clock() + self.interval_s
            await self._changed.wait()
            self._changed.clear()
            pause = max(self._next_at - self.clock(), self.limiter.cooling_down())
            if pause > 0:
                await asyncio.sleep(pause)  # more text may arrive meanwhile: it goes out together
            await self.pace()
            # Its own task, so stopping the pump never cuts a send in half (a message
            # sent but not recorded would be sent again by finish()).
            flushing = self._flushing = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        chunks = split_text(self._text, self.limit)
        for i in range(self._finalised, len(chunks) - 1):
            await self._finalise(i, chunks[i])  # a full chunk never changes again
        current = len(chunks) - 1
        if not chunks[current].strip():
            return
        try:
            await self._draft(current, chunks[current])
        except Skipped:
            if self.limiter.cooling_down():
                self._changed.set()  # flood control: the pump retries once the chat reopens
            return
        self._shown()
        self._next_at = self.clock() + self.interval_s

    async def _draft(self, index: int, chunk: str) -> None:
        t = self.target
        if t.private:
            await self.limiter.draft(
                ("draft", t.draft_id + index), chunk,
                lambda: self._formatted(chunk, lambda text, mode: self.bot.send_message_draft(
                    t.chat_id, t.draft_id + index, message_thread_id=t.topic_id, text=text, parse_mode=mode)),
            )
        elif index < len(self.message_ids):
            message_id = self.message_ids[index]
            if not await self.limiter.draft(message_id, chunk, lambda: self._edit(message_id, chunk)):
                self.message_ids.remove(message_id)  # deleted in the chat: the next update starts a new one
                raise Skipped
        else:
            sent = await self.limiter.draft(("new", index), chunk, lambda: self._send_new(index, chunk))
            self.message_ids.append(sent.message_id)
            self.limiter.forget(("new", index))
            self.on_message_started(index, sent.message_id)

    async def _finalise(self, index: int, chunk: str) -> None:
        t = self.target
        if index < self._finalised:
            return
        if not t.private and index < len(self.message_ids):
            message_id = self.message_ids[index]
            if await self.limiter.essential(message_id, chunk, lambda: self._edit(message_id, chunk)):
                self._finalised = index + 1
                return
            del self.message_ids[index]  # deleted in the chat (a dead agent's, say): the text goes out anew
        sent = await self.limiter.essential(("final", t.draft_id, index), chunk, lambda: self._send_new(index, chunk))
        assert sent is not None  # a fresh target has no previous text
        self._shown()
        self.message_ids[index:index] = [sent.message_id]
        if not t.private:
            self.on_message_started(index, sent.message_id)
        self._finalised = index + 1

    def _shown(self) -> None:
        if self.first_sent_at is None:
            self.first_sent_at = self.clock()
            self.on_first_shown()

    async def _send_new(self, index: int, chunk: str) -> Message:
        t = self.target
        reply = (
            ReplyParameters(message_id=t.reply_to, allow_sending_without_reply=True)
            if index == 0 and t.reply_to is not None and not t.private
            else None
        )
        return await self._formatted(chunk, lambda text, mode: self.bot.send_message(
            t.chat_id, text, message_thread_id=t.topic_id, parse_mode=mode, reply_parameters=reply))

    async def _edit(self, message_id: int, chunk: str) -> bool:
        """Edit a message of this answer to ``chunk``; False if it is gone (deleted in the chat).

        One that shows ``chunk`` already (a takeover's, whose final edit had landed) is done.
        """
        t = self.target
        try:
            await self._formatted(chunk, lambda text, mode: self.bot.edit_message_text(
                text=text, chat_id=t.chat_id, message_id=message_id, parse_mode=mode))
        except TelegramBadRequest as e:
            if "message to edit not found" in e.message:
                return False
            if "message is not modified" not in e.message:
                raise
        return True

    async def _delete(self, message_ids: Sequence[int]) -> None:
        for message_id in message_ids:
            with contextlib.suppress(TelegramBadRequest):  # deleted by the chat already
                await self.bot.delete_message(self.target.chat_id, message_id)

    async def _formatted(self, chunk: str, call: Callable[[str, str | None], Awaitable[object]]):  # type: ignore[no-untyped-def]
        """Send as HTML; if Telegram rejects the markup, send the same text plain."""
        try:
            return await call(markdown_to_html(chunk), "HTML")
        except TelegramBadRequest as e:
            if not is_entity_error(e.message):
                raise
            return await call(chunk, None)

    async def _typing_loop(self) -> None:
        t = self.target
        # When the first words come sooner than this, "typing…" would only flash: don't send it.
        await asyncio.sleep(self.typing_grace_s)
        while True:
            with contextlib.suppress(TelegramBadRequest):
                await self.limiter.action(lambda: self.bot.send_chat_action(t.chat_id, "typing", message_thread_id=t.topic_id))
            await asyncio.sleep(self.typing_interval_s)

    async def _stop_pump(self) -> None:
        if self._pump is not None:
            await cancel_and_wait(self._pump)
            self._pump = None
        if self._flushing is not None:
            flushing, self._flushing = self._flushing, None
            with contextlib.suppress(Exception):  # a failed draft update doesn't matter any more
                await flushing

    def _stop_typing(self) -> None:
        if self._typing is not None:
            self._typing.cancel()
            self._typing = None
