"""The hot path's reader of the read models (implements :class:`eventbot.views.ReadModels`).

Every read is one pipelined round trip that also fetches the generation pointer;
the generation is cached and a read is repeated only when the pointer moved.
A Redis that lost its read models (no pointer, or no applied position for the
key's partition) answers from the log for that one key instead of "unknown".
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from uuid import UUID

from redis.asyncio import Redis

from eventbot.errors import StoreUnavailable
from eventbot.keys import Keys
from eventbot.readmodels import codec
from eventbot.readmodels.fold import ChatState, LedgerState, Limits, fold, profile_writes
from eventbot.readmodels.keys import ReadModelKeys
from eventbot.readmodels.log import EventLog
from eventbot.readmodels.positions import Position
from eventbot.redisclient import STORE_DOWN
from eventbot.views import Context, ResponseView, UserView
from events import chat_key, user_key

_PROFILE_GROUPS = ("names", "model", "prompt")


class RedisReadModels:
    def __init__(self, redis: Redis, keys: Keys, limits: Limits, log: EventLog | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.rm = ReadModelKeys(keys)
        self.limits = limits
        self.log = log
        self._gen = 1

    async def user(self, user_id: int) -> UserView | None:
        replies = await self._read(lambda g, pipe: self._queue_user(g, pipe, user_id))
        return await self._user(user_id, *replies)

    async def context(self, chat_id: int, topic_id: int | None, user_id: int) -> Context:
        """User, current thread, its recent history and files: one Redis round trip."""
        return await self._context(chat_id, topic_id, user_id, await self._read_context(chat_id, topic_id, user_id))

    async def context_after(self, entry_id: str, chat_id: int, topic_id: int | None, user_id: int, timeout: float) -> Context | None:
        """The context once the chat's stream is applied through ``entry_id``; None if not within ``timeout``.

        The position is read with the context itself, so when the builder is
        already there (the usual case) this is one round trip, barrier included.
        """
        wanted = Position.parse(entry_id)
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            replies = await self._read_context(chat_id, topic_id, user_id)
            applied = replies[-1]
            if applied is not None and Position.parse(applied.decode()) >= wanted:
                return await self._context(chat_id, topic_id, user_id, replies)
            if time.monotonic() >= deadline:
                return None
            # The builder is a batch away: poll briefly.
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.02)

    async def _read_context(self, chat_id: int, topic_id: int | None, user_id: int) -> list[Any]:
        pk = chat_key(chat_id, topic_id)
        p = self.keys.partition_of(pk)

        def queue(g: int, pipe: Any) -> None:
            self._queue_user(g, pipe, user_id)
            pipe.get(self.rm.chat(g, pk))
            pipe.hget(self.rm.position(g, p), self.keys.stream("conv", p))

        return await self._read(queue)

    async def _context(self, chat_id: int, topic_id: int | None, user_id: int, replies: list[Any]) -> Context:
        pk = chat_key(chat_id, topic_id)
        ledger_raw, profile_raw, user_applied, chat_raw, chat_applied = replies
        user = await self._user(user_id, ledger_raw, profile_raw, user_applied) or UserView(user_id=user_id)
        chat: ChatState | None = codec.decode(("chat",), chat_raw)
        if chat is None and chat_applied is None and self.log is not None:
            chat = await self._cold(("chat", pk), self.keys.stream("conv", self.keys.partition_of(pk)), pk)
        chat = chat or ChatState()
        return Context(user=user, thread=chat.thread, history=chat.history, files=chat.files)

    async def response(self, response_id: UUID, partition_key: str) -> ResponseView | None:
        p = self.keys.partition_of(partition_key)
        stream = self.keys.stream("conv", p)

        def queue(g: int, pipe: Any) -> None:
            pipe.get(self.rm.response(g, partition_key, response_id))
            pipe.hget(self.rm.position(g, p), stream)

        raw, applied = await self._read(queue)
        view = codec.decode(("response",), raw)
        if view is None and applied is None and self.log is not None:
            view = await self._cold(("response", partition_key, response_id), stream, partition_key)
        return view

    async def wait_applied(self, stream: str, entry_id: str, timeout: float) -> bool:
        """True once the read model has applied ``stream`` up to ``entry_id``."""
        wanted = Position.parse(entry_id)
        p = int(stream.rsplit("{", 1)[1].rstrip("}"))
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            (applied,) = await self._read(lambda g, pipe: pipe.hget(self.rm.position(g, p), stream))
            if applied is not None and Position.parse(applied.decode()) >= wanted:
                return True
            if time.monotonic() >= deadline:
                return False
            # Normally already there; when not, the builder is a batch away: poll briefly.
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.02)

    # --- internals ---

    async def _read(self, queue: Any) -> list[Any]:
        try:
            for _ in range(3):
                g = self._gen
                pipe = self.redis.pipeline(transaction=False)
                pipe.hget(self.rm.pointer, "live")
                queue(g, pipe)
                live, *replies = await pipe.execute()
                if live is None or int(live) == g:
                    return replies
                self._gen = int(live)  # a rebuild switched generations: read again there
            return replies
        except STORE_DOWN as e:
            raise StoreUnavailable(f"read model read failed: {type(e).__name__}") from e

    def _queue_user(self, g: int, pipe: Any, user_id: int) -> None:
        p = self.keys.partition_of(user_key(user_id))
        pipe.get(self.rm.user_ledger(g, user_id))
        pipe.hgetall(self.rm.user_profile(g, user_id))
        pipe.hget(self.rm.position(g, p), self.keys.stream("ledger", p))

    async def _user(self, user_id: int, ledger_raw: bytes | None, profile: dict, applied: bytes | None) -> UserView | None:
        ledger: LedgerState | None = codec.decode(("ledger",), ledger_raw)
        if ledger is None and not profile and applied is None and self.log is not None:
            stream = self.keys.stream("ledger", self.keys.partition_of(user_key(user_id)))
            ledger = await self._cold(("ledger", user_id), stream, user_key(user_id))
            profile = await self._cold_profile(user_id)
        if ledger is None and not profile:
            return None
        fields: dict[str, Any] = {"user_id": user_id}
        names = _group(profile, "names")
        if names:
            fields.update({k: v for k, v in names.items() if k in {"username", "first_name", "last_name", "language_code"}})
            fields["first_name"] = fields.get("first_name") or ""
        fields["model"] = _group(profile, "model")
        fields["prompt"] = _group(profile, "prompt")
        if ledger is not None:
            fields.update(balance=ledger.balance, held=ledger.held, recent_ops=ledger.ops)
        return UserView(**fields)

    async def _cold(self, ref: tuple, stream: str, partition_key: str) -> Any:
        """The key's state folded from the log: Redis lost this partition's read model."""
        assert self.log is not None
        entries = await self.log.partition_key(stream, partition_key, None)
        return fold([e for _, e in entries], ref, self.limits)

    async def _cold_profile(self, user_id: int) -> dict:
        assert self.log is not None
        out: dict[bytes, bytes] = {}
        for event in await self.log.profile(user_id):
            for w in profile_writes(event):
                out[w.group.encode()] = codec.encode(w.value)
        return out


def _group(profile: dict, group: str) -> Any:
    raw = profile.get(group.encode())
    return None if raw is None else codec.decode_any(raw)


__all__ = ["RedisReadModels"]
