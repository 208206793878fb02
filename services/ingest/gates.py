"""What stands between a message and an answer: a per-user rate limit and the balance.

Both read Redis only (the ledger head, a sliding-window set), never Postgres. A
message that doesn't pass is still recorded, with its disposition, and the user
is told once.
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import datetime
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from eventbot.errors import StoreUnavailable
from eventbot.keys import Keys
from eventbot.redisclient import STORE_DOWN
from events import user_key
from events.conversation import Disposition
from services.ingest.coalesce import Coalescer

WINDOW_MS = 60_000
Check = tuple[int, int, int]  # user id, update id, message time (ms)


class Verdict(NamedTuple):
    disposition: Disposition
    tell: bool  # the user should be told why (once, not on every message)


# Both gates in one script call: the rate window and the ledger head share the user's slot,
# and the checks of all users of one partition that arrive together go in one call.
# KEYS    per check: the user's rate window (sorted set of update ids scored by message
#         time, ms), the user's ledger head (hash; see eventbot/lua/ledger_append.lua)
# ARGV    now (ms), window (ms), then per check: update id, its time (ms)
# Returns per check: added, count in window, balance, held.
GATE_LUA = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS, 2 do
  local a = i + 2
  local added = redis.call('ZADD', KEYS[i], 'NX', ARGV[a + 1], ARGV[a])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, now - window)
  local count = redis.call('ZCARD', KEYS[i])
  redis.call('PEXPIRE', KEYS[i], window + 1000)
  local head = redis.call('HMGET', KEYS[i + 1], 'balance', 'held')
  out[#out + 1] = added
  out[#out + 1] = count
  out[#out + 1] = head[1] or '0'
  out[#out + 1] = head[2] or '0'
end
return out
"""


class Gates:
    """At most ``per_minute`` messages per user in any 60 s, and a balance above zero.

    The rate window holds update ids, so a redelivered update is not counted twice;
    the first message over the limit is told, the rest of the burst is recorded
    silently. The balance is the ledger head's (the hash ``Ledger.head`` reads; its
    field names are the ledger script's), read with the window in one script, so
    the gate costs one round trip.
    """

    def __init__(self, redis: Redis, keys: Keys, *, per_minute: int, hint_every_s: int = 600) -> None:
        self.redis = redis
        self.keys = keys
        self.per_minute = per_minute
        self.hint_every_s = hint_every_s
        self._script = redis.register_script(GATE_LUA)
        # Concurrent handlers' checks go out as one pipeline (see coalesce.py).
        self._checks: Coalescer[Check, tuple[Any, ...]] = Coalescer(self._run_checks)

    def _key(self, kind: str, user_id: int) -> str:
        # The user's partition tag: same slot as the ledger head, so one script may read both.
        return f"{self.keys.namespace}:{kind}:{{{self.keys.partition_of(user_key(user_id))}}}:{user_id}"

    async def admit(self, user_id: int, update_id: int, at: datetime) -> Verdict:
        """``answer``, or why not. The rate limit comes first: it protects the ledger too."""
        [(added, count, balance, held)] = await self._checks.submit([(user_id, update_id, int(at.timestamp() * 1000))])
        if count > self.per_minute:
            return Verdict("rate_limited", bool(added) and count == self.per_minute + 1)
        if int(balance) - int(held) <= 0:
            return Verdict("no_balance", await self._first_hint(user_id))
        return Verdict("answer", False)

    async def _run_checks(self, checks: list[Check]) -> list[tuple[Any, ...]]:
        """One script call per partition, all pipelined; results in the order of ``checks``."""
        by_partition: dict[int, list[int]] = defaultdict(list)
        for i, (user_id, _, _) in enumerate(checks):
            by_partition[self.keys.partition_of(user_key(user_id))].append(i)
        now = int(time.time() * 1000)
        calls: list[tuple[list[str], list[Any]]] = []
        for partition, positions in by_partition.items():
            keys: list[str] = []
            args: list[Any] = [now, WINDOW_MS]
            for i in positions:
                user_id, update_id, at_ms = checks[i]
                keys += [self._key("ratelimit", user_id), self.keys.ledger_head(partition, user_id)]
                args += [update_id, at_ms]
            calls.append((keys, args))
        try:
            replies = await self._call_all(calls)
        except STORE_DOWN as e:
            raise StoreUnavailable(f"gate check failed: {type(e).__name__}") from e
        results: list[tuple[Any, ...]] = [()] * len(checks)
        for positions, reply in zip(by_partition.values(), replies):
            for n, i in enumerate(positions):
                results[i] = tuple(reply[4 * n : 4 * n + 4])
        return results

    async def _call_all(self, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        if len(calls) == 1:
            keys, args = calls[0]
            return [await self._script(keys=keys, args=args)]  # reloads itself on NOSCRIPT
        results = await self._pipelined(calls)
        if any(isinstance(r, NoScriptError) for r in results):
            # Redis restarted or flushed its scripts; a NOSCRIPT call did nothing, so rerun them all.
            await self.redis.script_load(GATE_LUA)
            results = await self._pipelined(calls)
        for r in results:
            if isinstance(r, Exception):
                raise r
        return results

    async def _pipelined(self, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for keys, args in calls:
            # Not pipe.evalsha: redis-py's cluster pipeline refuses it by name; the raw command is routed by its KEYS.
            pipe.execute_command("EVALSHA", self._script.sha, len(keys), *keys, *args)
        return await pipe.execute(raise_on_error=False)

    async def _first_hint(self, user_id: int) -> bool:
        # One top-up hint per user per period, however many messages hit the gate.
        try:
            return bool(await self.redis.set(self._key("balancehint", user_id), 1, nx=True, ex=self.hint_every_s))
        except STORE_DOWN as e:
            raise StoreUnavailable(f"balance hint failed: {type(e).__name__}") from e
