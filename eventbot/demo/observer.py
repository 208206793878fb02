"""Watching the event log from outside, as an operator would: events by type, and responses.

Reads every stream of the namespace with XRANGE from where it last stopped (no
consumer group, so it takes nothing from the services).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from redis.asyncio import Redis

from eventbot.keys import FAMILIES, Keys
from events import (
    EventCodec,
    EventDecodeError,
    MessageReceived,
    ResponseCancelled,
    ResponseCompleted,
    ResponseFailed,
    ResponseStarted,
)


@dataclass
class ResponseSeen:
    message_ids: tuple[int, ...]
    chat_id: int
    outcome: str | None = None  # completed, cancelled, failed


@dataclass
class Observer:
    redis: Redis
    keys: Keys
    codec: EventCodec
    by_type: Counter[str] = field(default_factory=Counter)
    # (chat_id, message_id) -> ms timestamp of its message.received entry (Redis's clock)
    received_at_ms: dict[tuple[int, int], int] = field(default_factory=dict)
    received_count: Counter[tuple[int, int]] = field(default_factory=Counter)
    responses: dict[str, ResponseSeen] = field(default_factory=dict)
    undecodable: int = 0
    _cursor: dict[str, str] = field(default_factory=dict)
    _started: float = field(default_factory=time.monotonic)

    @property
    def total(self) -> int:
        return sum(self.by_type.values())

    def rate(self) -> float:
        return self.total / max(1e-6, time.monotonic() - self._started)

    async def poll(self) -> None:
        for family in FAMILIES:
            for stream in self.keys.streams(family):
                await self._read(stream)

    async def _read(self, stream: str) -> None:
        while True:
            start = self._cursor.get(stream)
            entries = await self.redis.xrange(stream, min=f"({start}" if start else "-", count=1000)
            if not entries:
                return
            for raw_id, fields in entries:
                self._see(raw_id.decode(), fields)
            self._cursor[stream] = entries[-1][0].decode()

    def _see(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        try:
            event = self.codec.decode(fields[b"t"].decode(), int(fields[b"v"]), fields[b"d"])
        except (EventDecodeError, KeyError, ValueError):
            self.undecodable += 1
            return
        self.by_type[event.type_name()] += 1
        match event:
            case MessageReceived(chat_id=chat, message_id=mid):
                self.received_count[(chat, mid)] += 1
                self.received_at_ms.setdefault((chat, mid), int(entry_id.split("-")[0]))
            case ResponseStarted(response_id=rid, message_ids=mids, chat_id=chat):
                self.responses.setdefault(str(rid), ResponseSeen(mids, chat))
            case ResponseCompleted(response_id=rid) | ResponseCancelled(response_id=rid) | ResponseFailed(response_id=rid):
                seen = self.responses.get(str(rid))
                if seen is not None:
                    seen.outcome = event.type_name().split(".")[1]

    def answered(self, chat_id: int, message_id: int) -> str | None:
        """The outcome of the response that covered this message, once it ended."""
        for seen in self.responses.values():
            if seen.chat_id == chat_id and message_id in seen.message_ids and seen.outcome:
                return seen.outcome
        return None

    def terminal_outcomes(self, chat_id: int, message_id: int) -> list[str]:
        return [
            s.outcome for s in self.responses.values()
            if s.chat_id == chat_id and message_id in s.message_ids and s.outcome
        ]
