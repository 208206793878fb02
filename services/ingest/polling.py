"""Long polling that confirms an update only after its events are appended.

Telegram forgets updates below the ``offset`` of the next ``getUpdates``. So the
offset moves past a batch only once every update in it was recorded; while Redis
is unreachable the batch is retried (with backoff) and never confirmed, and the
updates stay with Telegram. aiogram's own ``start_polling`` advances the offset
before its handler tasks finish, which is why this loop exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from aiogram import Bot, Dispatcher
from aiogram.exceptions import TelegramAPIError, TelegramRetryAfter, TelegramUnauthorizedError
from aiogram.methods import GetUpdates
from aiogram.types import Update

from services.ingest.feeding import UpdateNotRecorded, feed_batch

log = logging.getLogger("eventbot.ingest.polling")


class Poller:
    def __init__(
        self, bot: Bot, dp: Dispatcher, *, timeout_s: int = 25, limit: int = 100,
        allowed_updates: Sequence[str] | None = None, backoff_s: tuple[float, float] = (0.1, 5.0),
        shutdown_grace_s: float = 10.0,
    ) -> None:
        self.bot = bot
        self.dp = dp
        self.timeout_s = timeout_s
        self.limit = limit
        self.allowed_updates = list(allowed_updates) if allowed_updates is not None else None
        self.backoff_s = backoff_s
        self.shutdown_grace_s = shutdown_grace_s
        self.offset: int | None = None  # next update_id to ask for; everything below is recorded
        self._confirmed: int | None = None  # the offset Telegram was last sent

    async def fetch(self, timeout_s: int | None = None) -> list[Update]:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        method = GetUpdates(offset=self.offset, limit=self.limit, timeout=timeout, allowed_updates=self.allowed_updates)
        updates = await self.bot(method, request_timeout=timeout + 10)
        self._confirmed = self.offset
        return updates

    async def process(self, updates: Sequence[Update]) -> None:
        """Record a batch, then move the offset past it (confirmed by the next fetch)."""
        if not updates:
            return
        work = asyncio.ensure_future(feed_batch(self.dp, self.bot, updates))
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            # Stopping: let the batch finish (briefly) so it isn't half-recorded and redelivered.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(work, self.shutdown_grace_s)
            if work.done() and not work.cancelled() and work.exception() is None:
                self.offset = updates[-1].update_id + 1
            raise
        self.offset = updates[-1].update_id + 1

    async def poll_once(self, timeout_s: int | None = None) -> int:
        """One getUpdates (confirming what was recorded) and its batch; the number of updates."""
        updates = await self.fetch(timeout_s)
        await self.process(updates)
        return len(updates)

    async def run(self) -> None:
        """Poll until cancelled; on cancellation confirm what was recorded and return."""
        low, high = self.backoff_s
        delay = low
        batch: list[Update] | None = None
        try:
            while True:
                try:
                    if batch is None:
                        batch = await self.fetch()
                    await self.process(batch)
                    batch, delay = None, low
                except UpdateNotRecorded as e:
                    # Keep the batch and don't fetch: fetching would confirm nothing new anyway.
                    log.warning("updates not recorded, retrying in %.1fs: %s", delay, e)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, high)
                except TelegramRetryAfter as e:
                    await asyncio.sleep(e.retry_after)
                except TelegramUnauthorizedError:
                    raise
                except TelegramAPIError as e:
                    # Type only: aiogram's messages can quote the request.
                    log.warning("getUpdates failed (%s), retrying in %.1fs", type(e).__name__, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, high)
        except asyncio.CancelledError:
            await self._confirm_on_exit()
            raise

    async def _confirm_on_exit(self) -> None:
        if self.offset is None or self.offset == self._confirmed:
            return
        # timeout=0 returns at once; what it returns is not confirmed, so nothing is lost.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(self.bot(GetUpdates(offset=self.offset, limit=1, timeout=0), request_timeout=5), 5)
