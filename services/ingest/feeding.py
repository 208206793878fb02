"""Feeding updates to the dispatcher, in order per conversation, and telling what failed how.

Polling and the webhook share this: an update whose events could not be appended
(Redis unreachable) raises :class:`UpdateNotRecorded`, so the caller does not
confirm it to Telegram; an update that fails for any other reason (a bug, a
malformed object) is logged and counted as handled, so one poison update cannot
stop the bot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence

from aiogram import Bot, Dispatcher
from aiogram.types import Update

from eventbot.errors import LedgerConflict, StoreUnavailable, TransientError
from eventbot.redisclient import UNAVAILABLE
from services.ingest.metrics import IngestMetrics
from services.ingest.rejected import RejectedUpdates

log = logging.getLogger("eventbot.ingest")

# A cluster failing over or moving slots is an outage too, not a poison update (see redisclient.UNAVAILABLE).
RETRYABLE = (TransientError, LedgerConflict, *UNAVAILABLE)


class UpdateNotRecorded(TransientError):
    """At least one update's events were not appended; don't confirm it, try again later."""


def conversation_key(update: Update) -> str:
    """Updates with the same key are handled in order; different keys may run at once."""
    message = update.message or update.edited_message
    if message is not None:
        return f"chat:{message.chat.id}"
    if update.callback_query is not None:
        return f"user:{update.callback_query.from_user.id}"
    if update.pre_checkout_query is not None:
        return f"user:{update.pre_checkout_query.from_user.id}"
    return f"update:{update.update_id}"


class PerConversation:
    """One update at a time per conversation: the webhook's concurrent requests keep a chat's order.

    Telegram may have several webhook requests in flight; two messages of one chat
    must still be appended in the order they were sent.
    """

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]  # nobody else waits: don't keep a lock per chat forever
            else:
                self._locks[key] = (lock, users - 1)


async def feed_one(dp: Dispatcher, bot: Bot, update: Update) -> None:
    metrics: IngestMetrics | None = dp.workflow_data.get("ingest_metrics")
    try:
        await dp.feed_update(bot, update)
    except RETRYABLE as e:
        if metrics:
            metrics.updates.labels("not_recorded").inc()
        raise UpdateNotRecorded(f"update {update.update_id}: {type(e).__name__}") from e
    except Exception as e:  # noqa: BLE001 - poison update: kept aside (not its content in the log), move on
        frames = "".join(traceback.format_tb(e.__traceback__))
        log.error("update %d could not be handled, kept aside: %s\n%s", update.update_id, type(e).__name__, frames)
        rejected: RejectedUpdates | None = dp.workflow_data.get("rejected")
        if rejected is not None:
            try:
                await rejected.keep(update, e)
            except StoreUnavailable as down:
                raise UpdateNotRecorded(f"update {update.update_id}: {down}") from down
        if metrics:
            metrics.updates.labels("rejected").inc()
        return
    if metrics:
        metrics.updates.labels("recorded").inc()


async def feed_batch(dp: Dispatcher, bot: Bot, updates: Sequence[Update]) -> None:
    """Feed every update; raise UpdateNotRecorded (after the others finished) if any was not recorded."""
    groups: dict[str, list[Update]] = defaultdict(list)
    for update in updates:
        groups[conversation_key(update)].append(update)

    async def in_order(group: list[Update]) -> None:
        for update in group:
            await feed_one(dp, bot, update)  # a failure stops the rest of its conversation

    if len(groups) == 1:
        await in_order(next(iter(groups.values())))
        return
    results = await asyncio.gather(*(in_order(g) for g in groups.values()), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
