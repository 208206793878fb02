"""The hot path's reader of the read models (implements :class:`eventbot.views.ReadModels`).

Every read is one pipelined round trip that also fetches the generation pointer;
the generation is cached and a read is repeated only when the pointer moved.
A Redis that lost its read models (no pointer, or no applied position for the
key's partition) answers from the log for that one key instead of "unknown".

Reading a context "after" an entry does not wait for the builder: the same
round trip returns the chat's state with the exact position it was applied to,
and the stream's few entries between that position and the entry. They are
folded here with the builder's own functions, so the result is what the builder
will write, a batch sooner. Only a gap longer than :data:`TAIL_MAX` entries (a
builder that is down or far behind) is waited out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from uuid import UUID

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from eventbot.errors import StoreUnavailable
from eventbot.keys import Keys
from eventbot.readmodels import codec
from eventbot.readmodels.fold import ChatState, LedgerState, Limits, apply, fold, key_refs, profile_writes
from eventbot.readmodels.keys import ReadModelKeys
from eventbot.readmodels.log import Entry, EventLog, decode_entries
from eventbot.readmodels.positions import Position
from eventbot.readmodels.scripts import ReadModelScript
from eventbot.redisclient import STORE_DOWN
from eventbot.views import Context, ResponseView, UserView
from events import EventCodec, chat_key, default_codec, user_key

logger = logging.getLogger("eventbot.readmodels.reader")  # not `log`: self.log is the event log

_PROFILE_GROUPS = ("names", "model", "prompt")
# Unapplied entries a context read folds itself: the builder is normally a batch or two
# behind (a few entries); a longer gap means it is down or far behind, and is waited out.
TAIL_MAX = 32


class RedisReadModels:
    def __init__(
        self, redis: Redis, keys: Keys, limits: Limits, log: EventLog | None = None, codec: EventCodec | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.rm = ReadModelKeys(keys)
        self.limits = limits
        self.log = log
        self.codec = codec or default_codec()
        self._gen = 1
        self._snapshot = ReadModelScript("context")

    async def user(self, user_id: int) -> UserView | None:
        replies = await self._read(lambda g, pipe: self._queue_user(g, pipe, user_id))
        return await self._user(user_id, *replies)

    async def context(self, chat_id: int, topic_id: int | None, user_id: int) -> Context:
        """User, current thread, its recent history and files: one Redis round trip."""
        return await self._context(chat_id, topic_id, user_id, await self._read_context(chat_id, topic_id, user_id))

    async def context_after(self, entry_id: str, chat_id: int, topic_id: int | None, user_id: int, timeout: float) -> Context | None:
        """The context with the chat's stream applied through ``entry_id``; None if not within ``timeout``.

        One round trip: the chat's state comes with the position it was applied to
        and the entries after it up to ``entry_id``, which are folded in here.
        Only when there are more of those than :data:`TAIL_MAX`, or no position
        at all (a new generation still filling), is the builder waited for.
        """
        pk = chat_key(chat_id, topic_id)
        p = self.keys.partition_of(pk)
        stream = self.keys.stream("conv", p)
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            def queue(g: int, pipe: Any) -> None:
                self._queue_user(g, pipe, user_id)
                pipe.execute_command("EVALSHA", self._snapshot.sha, 3, self.rm.position(g, p), self.rm.chat(g, pk), stream,
                                     entry_id, TAIL_MAX + 1)

            ledger_raw, profile, user_applied, (applied, chat_raw, raw_tail) = await self._read(queue, self._snapshot)
            if applied is not None and len(raw_tail) <= TAIL_MAX:
                chat: ChatState | None = codec.decode(("chat",), chat_raw)
                tail = decode_entries(self.codec, [(eid, _fields(flat)) for eid, flat in raw_tail])
                caught_up = self._caught_up(stream, pk, user_id, chat, profile, tail)
                if caught_up is not None:
                    chat, profile = caught_up
                    user = await self._user(user_id, ledger_raw, profile, user_applied) or UserView(user_id=user_id)
                    chat = chat or ChatState()
                    return Context(user=user, thread=chat.thread, history=chat.history, files=chat.files)
            if time.monotonic() >= deadline:
                return None
            # The builder is far behind, or filling a new generation: poll briefly.
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.02)

    def _caught_up(
        self, stream: str, pk: str, user_id: int, chat: ChatState | None, profile: dict, tail: list[Entry],
    ) -> tuple[ChatState | None, dict] | None:
        """The chat's state and the user's profile with ``tail`` folded in, as the builder will fold it.

        None if an entry does not fold: the builder fails on it too, and dead-letters it and
        moves on; the caller waits for that rather than fail the answer on it.
        """
        if not tail:
            return chat, profile
        ref = ("chat", pk)
        profile = dict(profile)
        try:
            for _, event in tail:
                if ref in key_refs(event):
                    chat = apply(ref, chat, event, self.limits)  # type: ignore[assignment]
                for w in profile_writes(event):
                    current = profile.get(f"{w.group}@".encode())
                    if w.user_id == user_id and (current is None or current.decode() <= w.version):
                        profile[w.group.encode()] = codec.encode(w.value)
                        profile[f"{w.group}@".encode()] = w.version.encode()
        except Exception as e:  # noqa: BLE001 - a poison entry is the builder's to dead-letter
            logger.warning("an unapplied entry of %s does not fold (%s): waiting for the read-model builder", stream, type(e).__name__)
            return None
        return chat, profile

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

    async def _read(self, queue: Any, script: ReadModelScript | None = None) -> list[Any]:
        try:
            for attempt in range(3):
                g = self._gen
                pipe = self.redis.pipeline(transaction=False)
                pipe.hget(self.rm.pointer, "live")
                queue(g, pipe)
                live, *replies = await pipe.execute(raise_on_error=False)
                if script is not None and attempt < 2 and any(isinstance(r, NoScriptError) for r in replies):
                    # After SCRIPT FLUSH or a restart: load it and read again (a read is safe to repeat).
                    await self.redis.script_load(script.source)
                    continue
                for r in (live, *replies):
                    if isinstance(r, Exception):
                        raise r
                if live is None or int(live) == g or attempt == 2:
                    return replies
                self._gen = int(live)  # a rebuild switched generations: read again there
            raise AssertionError("unreachable")
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


def _fields(flat: list[bytes]) -> dict[bytes, bytes]:
    """A stream entry's fields as XRANGE sends them from a script: a flat list of names and values."""
    return dict(zip(flat[::2], flat[1::2]))


def _group(profile: dict, group: str) -> Any:
    raw = profile.get(group.encode())
    return None if raw is None else codec.decode_any(raw)


__all__ = ["RedisReadModels"]
