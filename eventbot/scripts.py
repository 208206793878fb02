"""Lua scripts run by EVALSHA, reloaded on NOSCRIPT (after SCRIPT FLUSH or a restart).

redis-py's own Script in a pipeline sends SCRIPT EXISTS before every execute;
this helper only pays for a load when the server actually forgot the script.
On a Redis Cluster each primary keeps its own script cache: SCRIPT LOAD through
the cluster client goes to every primary, so one reload serves all of them, and
a pipeline of calls across slots runs per node with errors kept per call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError

from eventbot.redisclient import RedisClient

Call = tuple[Sequence[str], Sequence[Any]]


class LuaScript:
    def __init__(self, name: str) -> None:
        self.source = resources.files("eventbot").joinpath(f"lua/{name}.lua").read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    async def __call__(self, redis: RedisClient, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await redis.script_load(self.source)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)

    async def many(self, redis: RedisClient, calls: Sequence[Call]) -> list[Any]:
        """Run several calls in one pipelined round trip; results in call order."""
        if len(calls) == 1:
            return [await self(redis, *calls[0])]
        results = await self._pipelined(redis, calls)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            # A NOSCRIPT reply means that call did nothing, so running it again is safe.
            await redis.script_load(self.source)
            retried = await self._pipelined(redis, [calls[i] for i in missing])
            for i, r in zip(missing, retried):
                results[i] = r
        for r in results:
            if isinstance(r, Exception):
                raise r
        return results

    async def _pipelined(self, redis: RedisClient, calls: Sequence[Call]) -> list[Any]:
        pipe = redis.pipeline(transaction=False)
        for keys, args in calls:
            # What pipe.evalsha sends; redis-py's cluster pipeline blocks that method
            # by name but routes the raw command by its KEYS like any other.
            pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        return await pipe.execute(raise_on_error=False)
