"""Token deltas of an answer, appended to ``tokens:{p}`` without slowing the answer down.

Appends run in the background, one at a time per answer. With ``batch=True``
whatever deltas arrived while the previous append was in flight go out as one
``token.streamed`` event: at a normal pace that is one event per delta, under
load it is a small batch, so the stream never falls behind the model and the
event count stays bounded. ``batch=False`` writes one event per delta (still
pipelined together); bench/agent.py measures both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from uuid import UUID

from eventbot.appender import Appender
from eventbot.errors import StoreUnavailable
from eventbot.ids import derived_id
from events import TokenStreamed
from services.agent.pacing import next_turn

log = logging.getLogger("eventbot.agent.tokens")


class TokenSink:
    def __init__(
        self, appender: Appender, response_id: UUID, partition_key: str, attempt: int, at: datetime, *, batch: bool = True,
        correlation_id: str | None = None, pace: Callable[[], Awaitable[None]] = next_turn,
    ) -> None:
        self.appender = appender
        self.pace = pace  # awaited before each append: the events are background work (see pacing.py)
        self.response_id = response_id
        self.partition_key = partition_key
        self.attempt = attempt
        self.at = at
        self.batch = batch
        self.correlation_id = correlation_id
        self.events = 0
        self._pending: list[str] = []
        self._next_index = 0
        self._flusher: asyncio.Task[None] | None = None

    def add(self, delta: str) -> None:
        self._pending.append(delta)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def close(self) -> None:
        """Wait until every delta added so far is appended (or given up on)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    async def _flush(self) -> None:
        while self._pending:
            await self.pace()
            deltas, self._pending = self._pending, []
            groups = ["".join(deltas)] if self.batch else deltas
            events = []
            for text in groups:
                index = self._next_index
                self._next_index += 1
                events.append(TokenStreamed(
                    event_id=derived_id(f"tokens:{self.response_id}:{self.attempt}:{index}", self.at),
                    occurred_at=datetime.now(timezone.utc), partition_key=self.partition_key,
                    correlation_id=self.correlation_id, causation_id=self.response_id,
                    response_id=self.response_id, index=index, delta=text,
                ))
            try:
                await self.appender.append_many(events)
                self.events += len(events)
            except StoreUnavailable as e:
                # Token events are a live view, not the record (response.completed holds the text):
                # losing some while Redis blinks must not break the answer.
                log.warning("token events dropped: %s", type(e).__name__)
