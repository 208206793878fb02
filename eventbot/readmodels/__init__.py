"""Redis read models: how events fold into them, how they are built, and the hot path's reader."""

from __future__ import annotations

from redis.asyncio import Redis

from eventbot.keys import Keys
from eventbot.readmodels.builder import ReadModelBuilder
from eventbot.readmodels.fold import Limits
from eventbot.readmodels.log import ArchiveLog, EventLog, StreamLog
from eventbot.readmodels.reader import RedisReadModels
from eventbot.settings import Settings
from events import EventCodec


# Turns a chat's read model keeps beyond the ones a request sends. A read made after the
# message being answered (a retry, a takeover) may already hold it and a few later turns;
# without room for them the request's oldest turns would differ from the first attempt's.
HISTORY_SLACK = 8


def limits_for(settings: Settings) -> Limits:
    return Limits(history_turns=settings.history_turns + HISTORY_SLACK, recent_ops=settings.recent_ops)


def reader_for(redis: Redis, settings: Settings, codec: EventCodec) -> RedisReadModels:
    """The hot path's reader: Redis only; a lost read model is folded from the streams, never from Postgres."""
    keys = Keys(settings.namespace, settings.partitions)
    return RedisReadModels(redis, keys, limits_for(settings), StreamLog(redis, keys, codec), codec)


__all__ = [
    "ArchiveLog", "EventLog", "Limits", "ReadModelBuilder", "RedisReadModels", "StreamLog", "limits_for", "reader_for",
]
