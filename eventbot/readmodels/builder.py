"""Folding a partition's entries into a read-model generation, exactly once.

One batch is two round trips: read (the pointer, the partition's applied
position, the entry before the batch, the keys it touches) and write (one
script that checks the position is still the one read, writes the keys and
moves the position; plus the order-free profile writes). The read is built for
the generations the pointer named last time; if it names others now (a replay
began or switched), the batch is read again for them. When the applied
position is behind the entry before the batch (a new or lost generation, a
switch), the gap is filled from the log first, through the same path.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from eventbot.errors import StoreUnavailable, TransientError
from eventbot.keys import Keys
from eventbot.readmodels import codec
from eventbot.readmodels.fold import KeyRef, Limits, ProfileWrite, apply, key_refs, profile_writes
from eventbot.readmodels.keys import ReadModelKeys
from eventbot.readmodels.log import Entry, EventLog
from eventbot.readmodels.positions import Position
from eventbot.readmodels.scripts import ReadModelScript
from eventbot.redisclient import STORE_DOWN


class PositionMoved(TransientError):
    """Another writer moved the generation's position since it was read."""


class ReadModelBuilder:
    def __init__(self, redis: Redis, keys: Keys, limits: Limits, log: EventLog) -> None:
        self.redis = redis
        self.keys = keys
        self.rm = ReadModelKeys(keys)
        self.limits = limits
        self.log = log
        self._apply = ReadModelScript("apply")
        self._profile = ReadModelScript("profile")
        self._generations: tuple[int, int | None] | None = None  # (live, next) as last read

    async def live_generation(self) -> tuple[int, int | None]:
        """(live, next) generations; creates generation 1 on a fresh (or flushed) Redis."""
        raw = await self.redis.hmget(self.rm.pointer, "live", "next")
        if raw[0] is None:
            await self.redis.hsetnx(self.rm.pointer, "live", 1)
            raw = await self.redis.hmget(self.rm.pointer, "live", "next")
        generations = _generations(raw)
        assert generations is not None
        return generations

    async def apply(self, stream: str, entries: Sequence[Entry], *, gen: int | None = None) -> int:
        """Apply ``entries`` (consecutive, in stream order) to ``gen`` (default: the live one).

        Returns how many were new to the generation.
        """
        return await self._retrying(stream, entries, gen, check_gap=True)

    async def _retrying(self, stream: str, entries: Sequence[Entry], gen: int | None, *, check_gap: bool) -> int:
        try:
            for _ in range(50):
                try:
                    return await self._apply_once(stream, entries, gen, check_gap)
                except PositionMoved:
                    continue
            raise PositionMoved(f"read-model position of {stream} keeps moving")
        except STORE_DOWN as e:
            raise StoreUnavailable(f"read model: {type(e).__name__}") from e

    async def _apply_once(self, stream: str, entries: Sequence[Entry], gen: int | None, check_gap: bool) -> int:
        if not entries:
            return 0
        generations = self._generations if gen is None else (gen, None)
        if generations is None:
            generations = self._generations = await self.live_generation()  # creates generation 1 on a fresh Redis
        live, nxt = generations
        target = gen if gen is not None else live
        profile_gens = [target] if gen is not None else [g for g in (live, nxt) if g is not None]
        partition = int(stream.rsplit("{", 1)[1].rstrip("}"))
        refs = list(dict.fromkeys(r for _, e in entries for r in key_refs(e)))
        pos_key = self.rm.position(target, partition)
        pipe = self.redis.pipeline(transaction=False)
        if gen is None:
            pipe.hmget(self.rm.pointer, "live", "next")
        pipe.hget(pos_key, stream)
        if check_gap:
            pipe.xrevrange(stream, f"({entries[0][0]}", "-", count=1)
        for ref in refs:
            pipe.get(self._key(target, ref))
        replies = await pipe.execute()
        if gen is None:
            pointer, replies = replies[0], replies[1:]
            if _generations(pointer) != (live, nxt):
                self._generations = None  # read afresh, and the batch read for those generations
                raise PositionMoved("the generation pointer moved")
        applied_raw, before, values = replies[0], replies[1] if check_gap else None, replies[1 + check_gap:]
        applied = Position.parse(applied_raw.decode()) if applied_raw else None
        if check_gap:
            first = Position.parse(entries[0][0])
            previous = Position.parse(before[0][0].decode()) if before else None
            # Nothing applied yet (a new, lost or flushed generation), or behind the stream: the
            # log holds what came before this batch (archived in Postgres, or still in the stream).
            if applied is None or (previous is not None and applied < previous):
                await self._fill(stream, applied, first.previous(), target)
                return await self._apply_once(stream, entries, gen, check_gap=False)
        todo = [(eid, e) for eid, e in entries if applied is None or Position.parse(eid) > applied]
        if not todo:
            return 0
        states: dict[KeyRef, object] = {ref: codec.decode(ref, raw) for ref, raw in zip(refs, values)}
        dirty: dict[KeyRef, None] = {}
        profiles: list[ProfileWrite] = []
        for _, event in todo:
            for ref in key_refs(event):
                states[ref] = apply(ref, states[ref], event, self.limits)
                dirty[ref] = None
            profiles += profile_writes(event)
        pipe = self.redis.pipeline(transaction=False)
        for g in profile_gens:
            self._queue_profiles(pipe, g, profiles)
        keys = [pos_key, *(self._key(target, r) for r in dirty)]
        args = [stream, str(applied) if applied else "", todo[-1][0],
                *(b"" if states[r] is None else codec.encode(states[r]) for r in dirty)]
        # Not pipe.evalsha: redis-py's cluster pipeline refuses it by name; the raw command is routed by its KEYS.
        pipe.execute_command("EVALSHA", self._apply.sha, len(keys), *keys, *args)
        results = await self._execute(pipe)
        if results[-1] not in (b"ok", "ok"):
            raise PositionMoved(f"{stream}: position is {results[-1]!r}")
        return len(todo)

    async def _execute(self, pipe) -> list:  # type: ignore[no-untyped-def]
        results = await pipe.execute(raise_on_error=False)
        if any(isinstance(r, NoScriptError) for r in results):
            # After SCRIPT FLUSH or a restart: a NOSCRIPT reply did nothing, so load and run again.
            await self.redis.script_load(self._apply.source)
            await self.redis.script_load(self._profile.source)
            raise PositionMoved("scripts reloaded")
        for r in results:
            if isinstance(r, Exception):
                raise r
        return results

    def _queue_profiles(self, pipe, gen: int, writes: list[ProfileWrite]) -> None:  # type: ignore[no-untyped-def]
        by_slot: dict[int, dict[int, list[ProfileWrite]]] = defaultdict(lambda: defaultdict(list))
        for w in writes:
            by_slot[self.keys.partition_of(str(w.user_id))][w.user_id].append(w)
        for users in by_slot.values():
            keys, args = [], []
            for user_id, ws in users.items():
                keys.append(self.rm.user_profile(gen, user_id))
                args.append(len(ws))
                for w in ws:
                    args += (w.group, w.version, codec.encode(w.value))
            pipe.execute_command("EVALSHA", self._profile.sha, len(keys), *keys, *args)

    async def _fill(self, stream: str, applied: Position | None, upto: Position, gen: int) -> None:
        """Apply what the generation misses before ``upto`` from the log, chunk by chunk."""
        async for chunk in self.log.stream(stream, applied, upto):
            # Contiguous by construction: no gap check, or it would recurse.
            await self._retrying(stream, chunk, gen, check_gap=False)

    def _key(self, gen: int, ref: KeyRef) -> str:
        kind = ref[0]
        if kind == "ledger":
            return self.rm.user_ledger(gen, ref[1])
        if kind == "chat":
            return self.rm.chat(gen, ref[1])
        return self.rm.response(gen, ref[1], ref[2])


def _generations(raw: Sequence[bytes | None]) -> tuple[int, int | None] | None:
    """(live, next) from the pointer's fields; None when there is no pointer (a flushed Redis)."""
    if raw[0] is None:
        return None
    return int(raw[0]), (int(raw[1]) if raw[1] is not None else None)
