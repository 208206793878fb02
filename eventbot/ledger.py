"""The ledger write model: per-user heads in Redis and optimistic appends.

A caller reads the head, decides what to append, and appends naming the seq it
read; if another writer got there first the append raises or retries. The seq,
balance, hold total and hash chain are computed here and checked by the script
atomically with the XADD, so concurrent charges cannot lose an update.
"""

from __future__ import annotations

import asyncio
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple

import msgspec

from eventbot.appender import AppendMetrics
from eventbot.errors import LedgerConflict, StoreUnavailable
from eventbot.keys import Keys
from eventbot.redisclient import STORE_DOWN, RedisClient
from eventbot.scripts import LuaScript
from events import GENESIS_HASH, EventCodec, LedgerEvent


class LedgerHead(msgspec.Struct, frozen=True):
    seq: int = 0
    hash: str = GENESIS_HASH
    balance: int = 0
    held: int = 0

    @property
    def available(self) -> int:
        return self.balance - self.held


class LedgerAppended(NamedTuple):
    events: tuple[LedgerEvent, ...]
    head: LedgerHead
    duplicate: bool


class HeadConflict(LedgerConflict):
    def __init__(self, user_id: int, expected: int, head: LedgerHead) -> None:
        super().__init__(f"ledger of user {user_id} is at seq {head.seq}, not {expected}")
        self.head = head


Decide = Callable[[LedgerHead], Sequence[LedgerEvent] | Awaitable[Sequence[LedgerEvent]]]


def chain(events: Sequence[LedgerEvent], head: LedgerHead) -> tuple[tuple[LedgerEvent, ...], LedgerHead]:
    """Number, balance and hash the events on top of ``head``."""
    out = []
    for e in events:
        d_balance, d_held = e.effect()
        e = msgspec.structs.replace(
            e,
            seq=head.seq + 1,
            balance_after=head.balance + d_balance,
            held_after=head.held + d_held,
            prev_hash=head.hash,
            hash="",
        )
        e = msgspec.structs.replace(e, hash=e.computed_hash())
        out.append(e)
        head = LedgerHead(e.seq, e.hash, e.balance_after, e.held_after)
    return tuple(out), head


class Ledger:
    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        codec: EventCodec,
        *,
        dedupe_window_s: int = 7 * 24 * 3600,
        heads_cached: int = 100_000,
        metrics: AppendMetrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.redis = redis
        self.keys = keys
        self.codec = codec
        self.window_ms = dedupe_window_s * 1000
        self._script = LuaScript("ledger_append")
        # Last head this process saw per user. Only a hint: every append is checked
        # against the real head by the script, and a refusal is only final on a fresh read.
        self._heads: OrderedDict[int, LedgerHead] = OrderedDict()
        self._heads_max = heads_cached

    def _head_key(self, user_id: int) -> str:
        return self.keys.ledger_head(self.keys.partition_of(str(user_id)), user_id)

    async def head(self, user_id: int) -> LedgerHead:
        try:
            raw = await self.redis.hmget(self._head_key(user_id), "seq", "hash", "balance", "held")
        except STORE_DOWN as e:
            raise StoreUnavailable(f"ledger head read failed: {type(e).__name__}") from e
        return _head(raw)

    async def append(self, user_id: int, events: Sequence[LedgerEvent], expected: LedgerHead) -> LedgerAppended:
        """Append ``events`` if the head is still ``expected``; raise :class:`HeadConflict` if not."""
        if not events:
            return LedgerAppended((), expected, False)
        partition = self.keys.partition_of(str(user_id))
        chained, new_head = chain(events, expected)
        keys = [self.keys.stream("ledger", partition), self._head_key(user_id)]
        args: list[object] = [self.window_ms, expected.seq]
        for e in chained:
            if e.user_id != user_id or e.partition_key != str(user_id):
                raise ValueError(f"ledger event {e.event_id} is not keyed to user {user_id}")
            keys.append(self.keys.seen(partition, e.event_id))
            args += (e.type_name(), e.version, self.codec.encode(e), e.seq, e.hash, e.balance_after, e.held_after)
        try:
            reply = await self._script(self.redis, keys, args)
        except STORE_DOWN as e:
            raise StoreUnavailable(f"ledger append failed: {type(e).__name__}") from e
        status = reply[0].decode()
        if status == "conflict":
            raise HeadConflict(user_id, expected.seq, _head(reply[1:]))
        if self.metrics is not None:
            counter = self.metrics.duplicates if status == "dup" else self.metrics.appended
            for e in chained:
                counter.labels(e.family, e.type_name()).inc()
        return LedgerAppended(chained, new_head, status == "dup")

    async def transact(self, user_id: int, decide: Decide, *, attempts: int = 100) -> LedgerAppended:
        """Read the head, decide, append; on conflict decide again on the newer head.

        ``decide`` may raise to refuse (e.g. insufficient balance); nothing is appended then.
        """
        head = self._heads.get(user_id)
        fresh = head is None
        if head is None:
            head = await self.head(user_id)
        for attempt in range(attempts):
            try:
                events = await _decided(decide, head)
            except Exception:
                if fresh:
                    raise
                # The cached head may be stale (a credit elsewhere): refuse only on a fresh one.
                head, fresh = await self.head(user_id), True
                events = await _decided(decide, head)
            try:
                result = await self.append(user_id, events, head)
            except HeadConflict as conflict:
                head, fresh = conflict.head, True
                self._remember(user_id, head)
                # Jitter keeps many writers of one user from colliding in lockstep.
                await asyncio.sleep(random.random() * min(0.001 * 2**attempt, 0.05))
                continue
            if result.duplicate:
                self._heads.pop(user_id, None)  # stored earlier; the real head is unknown here
            else:
                self._remember(user_id, result.head)
            return result
        raise LedgerConflict(f"ledger of user {user_id}: gave up after {attempts} conflicts")

    def _remember(self, user_id: int, head: LedgerHead) -> None:
        self._heads[user_id] = head
        self._heads.move_to_end(user_id)
        if len(self._heads) > self._heads_max:
            self._heads.popitem(last=False)


async def _decided(decide: Decide, head: LedgerHead) -> Sequence[LedgerEvent]:
    decided = decide(head)
    return await decided if isinstance(decided, Awaitable) else decided


def _head(raw: Sequence[bytes | None]) -> LedgerHead:
    seq, hash_, balance, held = (v.decode() if isinstance(v, bytes) else v for v in raw)
    if not seq or seq == "0":
        return LedgerHead()
    return LedgerHead(int(seq), hash_ or GENESIS_HASH, int(balance or 0), int(held or 0))
