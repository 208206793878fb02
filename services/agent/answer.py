"""One answer, end to end: context, hold, Claude, Telegram, events, settlement.

The order of effects is what makes a takeover safe. The terminal response event
is appended right after the final message reaches Telegram and before the
ledger is settled; every event id is derived from the response id. An agent
that finds a response's terminal event (in the read model or, should that lag,
in the log itself) knows the user has the answer and only settles, which is
idempotent. An agent that finds none regenerates under the same response id:
the hold is found and reused, and the one charge is made once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import Literal
from uuid import UUID

import anthropic
import msgspec
from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramNetworkError
from redis.asyncio import Redis

from eventbot.appender import Appender
from eventbot.errors import StoreUnavailable, TransientError
from eventbot.ids import derived_id
from eventbot.keys import Keys
from eventbot.readmodels.positions import Position
from eventbot.views import ReadModels
from events import (
    EventCodec,
    MessageReceived,
    ResponseCancelled,
    ResponseCompleted,
    ResponseFailed,
    ResponseStarted,
)
from services.agent.billing import Billing, Hold, stored_event
from services.agent.config import AgentConfig
from services.agent.files import FileSource
from services.agent.holds import InsufficientBalance, plan_hold
from services.agent.limiter import Limiters
from services.agent.metrics import AgentMetrics
from services.agent.model import ModelError, Progress, stream_answer
from services.agent.pacing import BackgroundGate, Urgent
from services.agent.presenter import Presenter, Target
from services.agent.request import build_request
from services.agent.shown import ShownRecorder, shown_messages
from services.agent.tokens import TokenSink

log = logging.getLogger("eventbot.agent")

TOP_UP = "Your balance is too low for an answer. Top it up with /pay and ask again."
UNAVAILABLE = "Claude is not available right now. Please try again in a minute."
REFUSED = "Claude could not answer this request."
CUT_OFF = "\n\n⚠️ The answer was cut off by an error. You can ask again."
STOPPED = "\n\n⏹ Stopped."
EMPTY = "(Claude returned an empty answer.)"

CancelReason = Literal["stop", "superseded"]


class Job(msgspec.Struct, frozen=True):
    """A message handed to the agent: the event and where it sits in its stream."""

    event: MessageReceived
    stream: str
    entry_id: str
    deliveries: int = 1


class Cancel:
    """Set by /stop or a newer message; the answer stops streaming and settles what was produced."""

    def __init__(self) -> None:
        self.reason: CancelReason | None = None
        self.event = asyncio.Event()
        self._interrupted: asyncio.Task[object] | None = None

    def set(self, reason: CancelReason) -> None:
        if self.reason is None:
            self.reason = reason
            self.event.set()
            if self._interrupted is not None:
                self._interrupted.cancel()

    @contextlib.contextmanager
    def interrupting(self) -> Iterator[None]:
        """Inside, ``set()`` cancels the current task, and the cancellation ends at the block's edge.

        The answer calls the model in its own task, not in one it waits on beside this
        cancel's event: a task of its own would start a loop turn later, behind whatever
        else is ready (under a burst, the p99 of "hold -> model called"). ``set()`` is
        only called from other tasks, so the cancellation always lands at an ``await``
        inside the block. Any other cancellation (the agent stopping) goes on through:
        ``uncancel()`` tells them apart by the count of requests.
        """
        task = asyncio.current_task()
        assert task is not None and self._interrupted is None
        self._interrupted = task
        try:
            yield
        except asyncio.CancelledError:
            if self.reason is None or task.uncancel() > 0:
                raise
        finally:
            self._interrupted = None


def response_id_for(message: MessageReceived) -> UUID:
    """The response to a chat's message: the same on every agent and every attempt."""
    return derived_id(f"response:{message.partition_key}:{message.message_id}", message.occurred_at)


def terminal_ids(response_id: UUID, at: datetime) -> dict[str, UUID]:
    return {kind: derived_id(f"response.{kind}:{response_id}", at) for kind in ("completed", "failed", "cancelled")}


class Answerer:
    def __init__(
        self,
        *,
        config: AgentConfig,
        redis: Redis,
        keys: Keys,
        codec: EventCodec,
        appender: Appender,
        read_models: ReadModels,
        billing: Billing,
        claude: anthropic.AsyncAnthropic,
        bot: Bot,
        limiters: Limiters,
        files: FileSource,
        metrics: AgentMetrics,
    ) -> None:
        self.config = config
        self.redis = redis
        self.keys = keys
        self.codec = codec
        self.appender = appender
        self.read_models = read_models
        self.billing = billing
        self.claude = claude
        self.bot = bot
        self.limiters = limiters
        self.files = files
        self.metrics = metrics
        self._started_here: OrderedDict[UUID, None] = OrderedDict()
        # Every answer's background work goes through one gate, so that none of it delays a
        # message on its way to the model or an answer's first text (see pacing.py).
        self._background = BackgroundGate()

    async def answer(self, jobs: Sequence[Job], cancel: Cancel) -> bool:
        """Answer ``jobs`` (one chat, oldest first) as one response; True if superseded (answer again, merged)."""
        if len(jobs) > 1:
            jobs = await self._not_answered_yet(jobs)
        last = jobs[-1].event
        rid = response_id_for(last)
        retry = max(j.deliveries for j in jobs) > 1 or rid in self._started_here
        self._note_started(rid)
        target = Target(
            chat_id=last.chat_id, topic_id=last.topic_id, private=last.chat_type == "private",
            reply_to=last.message_id, draft_id=rid.int % (2**31 - 1) + 1,
        )
        # Urgent on the way to the model, and again from the first delta until the user sees
        # the first text (tens of ms at most each time): other answers' background work waits.
        urgent = self._background.urgent()
        shown = ShownRecorder(self.appender, rid, last)
        presenter = Presenter(
            self.bot, self.limiters.for_chat(last.chat_id), target,
            interval_s=self.config.draft_interval_s, typing_interval_s=self.config.typing_interval_s,
            pace=self._background.turn, on_first_shown=urgent.end, on_message_started=shown.started,
        )
        presenter.start_typing()
        try:
            if retry:
                if await self._already_answered(rid, last):
                    return False
                if not target.private:
                    presenter.continue_in(await shown_messages(self.redis, self.keys, self.codec, rid, last))
            return await self._answer(jobs, rid, retry, presenter, cancel, urgent)
        finally:
            urgent.end()
            await presenter.close()
            await shown.flush()

    async def _answer(
        self, jobs: Sequence[Job], rid: UUID, retry: bool, presenter: Presenter, cancel: Cancel, urgent: Urgent,
    ) -> bool:
        last, config = jobs[-1].event, self.config
        at, cid = last.occurred_at, last.correlation_id
        # The request needs everything *before* the answered messages (they come from
        # the events themselves): waiting for the entry just before the first one is
        # exact, and usually true at once, while the builder is still applying them.
        before = str(Position.parse(jobs[0].entry_id).previous())
        context = await self.read_models.context_after(before, last.chat_id, last.topic_id, last.user_id, config.wait_applied_timeout_s)
        if context is None:
            raise TransientError("read model has not reached the message yet")
        request = await build_request(
            context, [j.event for j in jobs], models=config.models, default_model=config.default_model,
            history_turns=config.history_turns, files=self.files,
        )
        price = self.billing.prices.price(request.model)
        try:
            hold = await self.billing.hold(
                last.user_id, rid, at,
                lambda available: plan_hold(price, available, request.estimated_input_tokens, config.max_tokens),
                retry=retry, correlation_id=cid,
            )
        except InsufficientBalance:
            self.metrics.refused.labels("no_balance").inc()
            await self._deliver(presenter, TOP_UP)
            await self._record_end(self._failed(last, rid, "insufficient_balance", False, Progress(), 0, request.model))
            return False
        self._holds(+1, hold.amount)

        common = dict(partition_key=last.partition_key, correlation_id=cid, chat_id=last.chat_id, topic_id=last.topic_id)
        attempt = max(j.deliveries for j in jobs)
        started_event = ResponseStarted(
            event_id=derived_id(f"response.started:{rid}:{attempt}", at), occurred_at=_now(), causation_id=last.event_id,
            response_id=rid, user_id=last.user_id, thread_id=context.thread.thread_id if context.thread else None,
            message_ids=tuple(j.event.message_id for j in jobs), model=request.model, max_tokens=hold.max_tokens,
            attempt=attempt, **common,
        )
        sink = TokenSink(
            self.appender, rid, last.partition_key, attempt, at, batch=config.token_batching, correlation_id=cid,
            pace=self._background.turn,
        )
        progress = Progress()
        began = time.perf_counter()
        self.metrics.active.inc()
        try:
            outcome, failure = await self._stream(
                request.params(hold.max_tokens), progress, presenter, sink, cancel, started_event, urgent,
            )
        finally:
            self.metrics.active.dec()
            urgent.end()  # shown or not, what is left of the answer is background work

        # Token events first: between the final message reaching Telegram and the
        # terminal event, a crash makes a takeover send the answer again, so that
        # window must hold nothing but building and appending that one event.
        await self._background.turn()
        await sink.close()
        if outcome == "superseded":
            await presenter.discard()
        elif outcome == "completed":
            ids = await self._deliver(presenter, progress.text or EMPTY)
        elif outcome == "stop":
            await self._deliver(presenter, progress.text + STOPPED if progress.text else "")
        elif progress.deltas:
            await self._deliver(presenter, progress.text + CUT_OFF)
        else:
            assert failure is not None
            await self._deliver(presenter, UNAVAILABLE if failure.retryable else REFUSED)

        usage = progress.charged_usage
        cost = self.billing.prices.cost(request.model, usage)
        if outcome == "completed":
            ttft = presenter.first_sent_at - began if presenter.first_sent_at is not None else None
            event = ResponseCompleted(
                event_id=terminal_ids(rid, at)["completed"], occurred_at=_now(), causation_id=last.event_id,
                response_id=rid, user_id=last.user_id, text=progress.text, stop_reason=progress.stop_reason, usage=usage,
                ttft_ms=round(ttft * 1000) if ttft is not None else None, duration_ms=round((time.perf_counter() - began) * 1000),
                cost=cost, model=request.model, telegram_message_ids=ids, **common,
            )
        elif outcome in ("stop", "superseded"):
            event = ResponseCancelled(
                event_id=terminal_ids(rid, at)["cancelled"], occurred_at=_now(), causation_id=last.event_id,
                response_id=rid, user_id=last.user_id, reason=outcome, partial_text=progress.text, usage=usage,
                cost=cost, model=request.model, **common,
            )
        else:
            assert failure is not None
            event = self._failed(last, rid, failure.cause, failure.retryable, progress, cost, request.model)
        await self._record_end(event)
        await self._background.turn()
        await self._settle(last, rid, hold, request.model, usage)
        self._observe(outcome, progress, presenter, began, last, request.model, cost)
        return outcome == "superseded"

    async def _stream(
        self, params: dict, progress: Progress, presenter: Presenter, sink: TokenSink, cancel: Cancel,
        started_event: ResponseStarted, urgent: Urgent,
    ) -> tuple[str, ModelError | None]:
        def on_delta(delta: str) -> None:
            if progress.deltas == 1:
                urgent.renew()  # the wait for the model is over: urgent again until the first text is shown
            sink.add(delta)
            presenter.update(progress.text)

        if cancel.reason is not None:
            # Stopped before it began (a /stop read together with the message, or with its
            # takeover): nothing is asked of the model; the answer ends as stopped, at no cost.
            await self.appender.append(started_event)
            return cancel.reason, None
        # Recorded while the model is being called (the request goes out first):
        # nothing needs it before the first token, and the terminal event waits for it.
        started = asyncio.create_task(self.appender.append(started_event))
        outcome: tuple[str, ModelError | None] | None = None
        try:
            with cancel.interrupting():
                await stream_answer(
                    self.claude, params, progress, on_delta, retry=self.config.retry,
                    on_retry=lambda cause: self.metrics.retries.labels(cause).inc(), pace=self._background.turn,
                    on_open=urgent.lapse,  # the request is at the model: its first token is not ours to hurry
                )
                outcome = ("completed", None)
        except ModelError as e:
            log.warning("model call failed: %s (retryable=%s, attempts=%d)", e.cause, e.retryable, progress.attempts)
            outcome = ("failed", e)
        finally:
            # Even when the agent stops: the append is not left behind unawaited.
            await asyncio.wait({started})
        started.result()
        if outcome is None:  # interrupted by /stop or a newer message
            assert cancel.reason is not None
            return cancel.reason, None
        return outcome

    async def _record_end(self, event: ResponseCompleted | ResponseFailed | ResponseCancelled) -> None:
        """Append an answer's terminal event (the user may already have the answer), waiting out a Redis outage.

        Failed here, the message would be handed over again and, with no terminal event
        to find, answered a second time: a second final message in the chat (a real model
        does not repeat its text, so no limiter could tell them apart). The append is
        idempotent (the event id is derived), so it is simply tried again, with backoff.
        """
        deadline = time.monotonic() + self.config.end_record_patience_s
        pause = 0.1
        while True:
            try:
                await self.appender.append(event)
                return
            except StoreUnavailable:
                if time.monotonic() + pause > deadline:
                    raise
                if pause == 0.1:
                    log.warning("answer delivered, its end not recorded yet (Redis unavailable): retrying")
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def _deliver(self, presenter: Presenter, text: str) -> tuple[int, ...]:
        """The final message: flood control is waited out in the limiter, a network blip retried here."""
        if not text:
            return ()
        for attempt in range(1, 6):
            try:
                return await presenter.finish(text)
            except TelegramNetworkError:
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
            except TelegramAPIError as e:  # blocked by the user, chat gone: nothing to deliver to
                log.warning("final message not delivered: %s", type(e).__name__)
                return tuple(presenter.message_ids)
        log.warning("final message not delivered: Telegram unreachable")
        return tuple(presenter.message_ids)

    async def _settle(self, last: MessageReceived, rid: UUID, hold: Hold, model: str, usage) -> None:  # type: ignore[no-untyped-def]
        if usage.input_tokens or usage.output_tokens or usage.cache_read_tokens or usage.cache_write_tokens:
            await self.billing.settle(last.user_id, rid, last.occurred_at, hold, model, usage, correlation_id=last.correlation_id)
        else:
            await self.billing.release(last.user_id, rid, last.occurred_at, hold, correlation_id=last.correlation_id)
        self._holds(-1, -hold.amount)

    async def _already_answered(self, rid: UUID, last: MessageReceived) -> bool:
        """A takeover: if this response ended already, make sure it is settled and say so."""
        view = await self.read_models.response(rid, last.partition_key)
        if await self._ended(rid, last) is not None:
            return True
        return view is not None and view.state != "started"

    async def _not_answered_yet(self, jobs: Sequence[Job]) -> Sequence[Job]:
        """``jobs`` without the earlier ones whose own response ended already (each settled).

        A message answered alone and then handed over again (its ack lost to a kill, or its
        handler retried) must not be answered a second time merged with a newer one. One
        whose answer was superseded is kept (it was never answered), its hold settled.
        """
        kept = []
        for j in jobs[:-1]:
            own = response_id_for(j.event)
            if j.deliveries == 1 and own not in self._started_here:
                kept.append(j)  # never handed to an answer before: nothing to look up (no round trips)
                continue
            ended = await self._ended(own, j.event)
            if ended is None or (isinstance(ended, ResponseCancelled) and ended.reason == "superseded"):
                kept.append(j)
        return [*kept, jobs[-1]]

    async def _ended(self, rid: UUID, message: MessageReceived) -> ResponseCompleted | ResponseFailed | ResponseCancelled | None:
        """The terminal event of ``rid`` (answering ``message``) if it has one; its hold is then settled (idempotent)."""
        partition = self.keys.partition_of(message.partition_key)
        # The read model may lag behind the log: the terminal event itself is the truth.
        for event_id in terminal_ids(rid, message.occurred_at).values():
            event = await stored_event(self.redis, self.keys, self.codec, partition, "conv", event_id)
            if isinstance(event, (ResponseCompleted, ResponseFailed, ResponseCancelled)):
                hold = await self.billing.existing_hold(message.user_id, rid, message.occurred_at)
                if hold is not None and event.model:
                    await self._settle(message, rid, hold, event.model, event.usage)
                return event
        return None

    def _failed(self, last: MessageReceived, rid: UUID, cause: str, retryable: bool, progress: Progress, cost: int, model: str) -> ResponseFailed:
        return ResponseFailed(
            event_id=terminal_ids(rid, last.occurred_at)["failed"], occurred_at=_now(), causation_id=last.event_id,
            partition_key=last.partition_key, correlation_id=last.correlation_id, chat_id=last.chat_id,
            topic_id=last.topic_id, response_id=rid, user_id=last.user_id, cause=cause, retryable=retryable,
            partial_text=progress.text, usage=progress.charged_usage,
            cost=cost, model=model,
        )

    def _observe(self, outcome: str, progress: Progress, presenter: Presenter, began: float, last: MessageReceived, model: str, cost: int) -> None:
        m = self.metrics
        m.responses.labels(outcome).inc()
        m.generation.labels(outcome).observe(time.perf_counter() - began)
        if presenter.first_sent_at is not None and progress.first_token_at is not None:
            m.ttft.labels("model").observe(max(0.0, presenter.first_sent_at - progress.first_token_at))
        if presenter.first_sent_at is not None:
            wall_at_first_send = time.time() - (time.perf_counter() - presenter.first_sent_at)
            m.ttft.labels("message").observe(max(0.0, wall_at_first_send - last.occurred_at.timestamp()))
        usage = progress.usage
        for kind, n in (("input", usage.input_tokens), ("output", usage.output_tokens),
                        ("cache_read", usage.cache_read_tokens), ("cache_write", usage.cache_write_tokens)):
            if n and progress.deltas:
                m.tokens.labels(model, kind).inc(n)
        if cost:
            m.cost.labels(model).inc(cost)

    def _holds(self, count: int, amount: int) -> None:
        self.metrics.holds.inc(count)
        self.metrics.holds_amount.inc(amount)

    def _note_started(self, rid: UUID) -> None:
        self._started_here[rid] = None
        while len(self._started_here) > 10_000:
            self._started_here.popitem(last=False)


def _now() -> datetime:
    return datetime.now(timezone.utc)
