"""Per chat (and topic): one generation at a time, merging, superseding, /stop.

The consumer hands every entry over at once (``mode="concurrent"``) and acks it
when its handler returns, so a message's handler simply waits until an answer
that included it has ended (and names the other messages that answer included,
to be acked in the same XACK). Messages that arrive within the merge window are
answered together, except that messages redelivered to a takeover are answered
before and apart from fresh ones. A message arriving while an answer streams
either cancels it and restarts with both (``cancel``; a takeover's answer is let
finish, and a redelivered message never cancels) or waits for it (``queue``). ``/stop``
cancels the answer in progress, and messages still waiting are answered as
stopped: never asked of the model, but ended with their terminal event and
their hold (one an agent that died placed before a takeover) released, so no
message is acked without an answer and no hold is left behind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from eventbot.readmodels.positions import Position
from services.agent.answer import Cancel, Job

log = logging.getLogger("eventbot.agent.sessions")

Answer = Callable[[Sequence[Job], Cancel], Awaitable[bool]]


class _Waiting:
    def __init__(self, job: Job) -> None:
        self.job = job
        # Resolved with the entry ids (of this job's stream) answered together with it.
        self.done: asyncio.Future[tuple[str, ...]] = asyncio.get_running_loop().create_future()


class ChatSession:
    def __init__(self, answer: Answer, *, merge_window_s: float, on_new_message: str) -> None:
        self._answer = answer
        self.merge_window_s = merge_window_s
        self.on_new_message = on_new_message
        self._waiting: list[_Waiting] = []
        self._stopped: list[_Waiting] = []  # /stop came before their answer began
        self._arrived = asyncio.Event()
        self._last_arrival = 0.0
        self._current: tuple[list[_Waiting], Cancel] | None = None
        self._runner: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        return self._runner is None or self._runner.done()

    async def message(self, job: Job) -> tuple[str, ...]:
        """Returns once an answer including this message has ended (raises if answering it failed).

        Returns the entry ids of every message that answer included (this one among them),
        so that they can be acked together: acked one by one, a crash between two acks would
        leave one redelivered alone and answered again.
        """
        held = [w for w in self._in_hand() if (w.job.stream, w.job.entry_id) == (job.stream, job.entry_id)]
        if held:
            waiting = held[0]  # redelivered (a retry of the consumer) while still in hand: wait for the same answer
        else:
            waiting = _Waiting(job)
            self._waiting.append(waiting)
            self._last_arrival = time.monotonic()
            self._arrived.set()
            # Only a fresh message supersedes. A redelivered one (its ack lost to a Redis
            # outage or a kill) is answered alone, after this answer: superseding for it
            # would end this answer as cancelled and, its response having ended, never
            # answer it again.
            if (self._current is not None and self.on_new_message == "cancel" and not _redelivered(waiting)
                    and not _takeover(self._current[0])):
                self._current[1].set("superseded")
        if self.idle:
            self._runner = asyncio.create_task(self._run())
        return await asyncio.shield(waiting.done)

    def stop(self, user_id: int | None = None, at: tuple[str, str] | None = None) -> None:
        """Cancel what ``user_id`` asked for (None: everything); in a group, others' answers go on.

        ``at``: the /stop's (stream, entry id). It stops only messages before it: a /stop
        redelivered (its ack lost to an outage) must not stop the user's next question.
        """
        def mine(w: _Waiting) -> bool:
            return (user_id is None or w.job.event.user_id == user_id) and (at is None or _before(w.job, at))

        if self._current is not None and any(mine(w) for w in self._current[0]):
            self._current[1].set("stop")
        for w in [w for w in self._waiting if mine(w)]:
            self._waiting.remove(w)
            self._stopped.append(w)
        if self._stopped and self.idle:
            self._runner = asyncio.create_task(self._run())

    def _in_hand(self) -> list[_Waiting]:
        return self._waiting + self._stopped + (self._current[0] if self._current else [])

    async def _run(self) -> None:
        while self._waiting or self._stopped:
            cancel = Cancel()
            if self._stopped:
                batch, self._stopped = self._stopped, []
                cancel.set("stop")
            else:
                await self._merge_window()
                batch, self._waiting = _takeovers_first(self._waiting)
                if not batch:
                    continue
            self._current = (batch, cancel)
            try:
                superseded = await self._answer([w.job for w in batch], cancel)
            except asyncio.CancelledError:
                for w in batch:
                    _resolve(w, asyncio.CancelledError())
                raise
            except Exception as e:  # noqa: BLE001 - the consumer retries (or dead-letters) the entries
                log.warning("answer failed: %s", type(e).__name__)
                for w in batch:
                    _resolve(w, e)
                continue
            finally:
                self._current = None
            if superseded:
                self._waiting = batch + self._waiting  # answered again, together with what superseded it
            else:
                for w in batch:
                    _resolve(w, together=tuple(x.job.entry_id for x in batch if x.job.stream == w.job.stream))

    async def _merge_window(self) -> None:
        """Wait until no message arrived for the merge window (at most five windows in all)."""
        if self.merge_window_s <= 0:
            return
        deadline = time.monotonic() + 5 * self.merge_window_s
        while True:
            quiet_until = min(deadline, self._last_arrival + self.merge_window_s)
            pause = quiet_until - time.monotonic()
            if pause <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), pause)
            except asyncio.TimeoutError:
                return


def _before(job: Job, at: tuple[str, str]) -> bool:
    """``job``'s message came before the entry ``at`` (one chat's entries share a stream; other streams can't be ordered, so count as before)."""
    stream, entry_id = at
    return job.stream != stream or Position.parse(job.entry_id) < Position.parse(entry_id)


def _redelivered(w: _Waiting) -> bool:
    """Handed over again (a takeover or a retry): a dead agent may have begun its answer."""
    return w.job.deliveries > 1


def _takeover(batch: list[_Waiting]) -> bool:
    return any(map(_redelivered, batch))


def _takeovers_first(waiting: list[_Waiting]) -> tuple[list[_Waiting], list[_Waiting]]:
    """(what to answer now, what waits): redelivered messages alone before fresh ones.

    A redelivered message is one a dead agent may have answered (or begun: a hold, a
    started response) under its own response id. Merged with a fresh message it would
    be answered again under the fresh one's id, its first answer doubled or its hold
    left behind; alone, the takeover finds what was done and finishes only that.
    """
    taken = [w for w in waiting if _redelivered(w)]
    if not taken or len(taken) == len(waiting):
        return waiting, []
    return taken, [w for w in waiting if not _redelivered(w)]


def _resolve(w: _Waiting, error: BaseException | None = None, together: tuple[str, ...] = ()) -> None:
    if w.done.done():
        return
    if error is None:
        w.done.set_result(together)
    else:
        w.done.set_exception(error)
        w.done.exception()  # retrieved here: a waiter may be gone (stopped) and must not warn


class Sessions:
    """The chat sessions of one agent process; idle ones are dropped."""

    def __init__(self, answer: Answer, *, merge_window_s: float, on_new_message: str) -> None:
        self._answer = answer
        self.merge_window_s = merge_window_s
        self.on_new_message = on_new_message
        self._by_chat: dict[tuple[int, int | None], ChatSession] = {}

    def get(self, chat_id: int, topic_id: int | None) -> ChatSession:
        key = (chat_id, topic_id)
        session = self._by_chat.get(key)
        if session is None:
            if len(self._by_chat) > 1000:
                self._by_chat = {k: s for k, s in self._by_chat.items() if not s.idle}
            session = self._by_chat[key] = ChatSession(
                self._answer, merge_window_s=self.merge_window_s, on_new_message=self.on_new_message
            )
        return session

    def find(self, chat_id: int, topic_id: int | None) -> ChatSession | None:
        return self._by_chat.get((chat_id, topic_id))
