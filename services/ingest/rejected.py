"""Updates that no handler could turn into events, kept aside instead of dropped.

A poison update (a bug, a shape nobody expected) must not stop the bot, and must
not be lost either: its raw JSON goes to a capped stream an operator can read
(``<ns>:ingest:rejected``), with the error's type. Only then is it confirmed to
Telegram; if even that write fails, the update is left with Telegram.
"""

from __future__ import annotations

from aiogram.types import Update
from redis.asyncio import Redis

from eventbot.errors import StoreUnavailable
from eventbot.keys import Keys
from eventbot.redisclient import STORE_DOWN

KEEP = 10_000


class RejectedUpdates:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.stream = keys.rejected_updates()

    async def keep(self, update: Update, error: BaseException) -> None:
        try:
            await self.redis.xadd(
                self.stream,
                {"update_id": update.update_id, "error": type(error).__name__,
                 "update": update.model_dump_json(exclude_none=True)},
                maxlen=KEEP, approximate=True,
            )
        except STORE_DOWN as e:
            raise StoreUnavailable(f"rejected update {update.update_id} not kept: {type(e).__name__}") from e

    async def latest(self, count: int = 5) -> list[tuple[int, str]]:
        """The last ``count`` kept aside, newest first: (update id, error type)."""
        entries = await self.redis.xrevrange(self.stream, count=count)
        return [(int(fields[b"update_id"]), fields[b"error"].decode()) for _, fields in entries]
