"""Partition leases: at most one consumer of a group reads a given stream at a time.

Redis consumer groups hand entries to whoever asks, so two consumers could apply
one partition's entries out of order. A lease (SET NX PX, renewed while alive)
makes each partition single-reader per group; consumers split the partitions
fairly among the live members, and a dead member's leases expire to the others.
"""

from __future__ import annotations

import math
import random
import time

from eventbot.redisclient import RedisClient
from eventbot.scripts import LuaScript


class PartitionLeases:
    def __init__(
        self, redis: RedisClient, namespace: str, group: str, consumer: str, streams: list[str], ttl_ms: int
    ) -> None:
        self.redis = redis
        self.group = group
        self.consumer = consumer
        self.streams = streams
        self.ttl_ms = ttl_ms
        self.members_key = f"{namespace}:members:{group}"
        self.held: set[str] = set()
        # Holding fewer than the fair share after the last rebalance: another member is
        # about to give some up, and the sooner they are taken the shorter their stall.
        self.below_share = False
        self._renew = LuaScript("lease_renew")
        self._release = LuaScript("lease_release")

    def lease_key(self, stream: str) -> str:
        # Keeps the stream's hash tag, so lease and stream share a slot.
        return f"{stream}:lease:{self.group}"

    async def live_members(self) -> int:
        # One key (no hash tag, so any slot): the pipeline is one node's round trip on a cluster too.
        now = int(time.time() * 1000)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(self.members_key, {self.consumer: now + self.ttl_ms})
        pipe.zremrangebyscore(self.members_key, "-inf", now)
        pipe.zcard(self.members_key)
        pipe.pexpire(self.members_key, self.ttl_ms * 10)
        return max(1, (await pipe.execute())[2])

    async def rebalance(self, releasable: set[str]) -> tuple[set[str], set[str], set[str]]:
        """Renew, then take or give up leases toward a fair share.

        Returns (acquired, lost, to_release): ``lost`` were taken away (expired),
        ``to_release`` are over the fair share and should be released by the
        caller once their loop stopped. Only ``releasable`` ones are offered.
        """
        share = math.ceil(len(self.streams) / await self.live_members())
        lost = set()
        for stream in list(self.held):
            if not await self._renew(self.redis, [self.lease_key(stream)], [self.consumer, self.ttl_ms]):
                self.held.discard(stream)
                lost.add(stream)
        acquired = set()
        free = [s for s in self.streams if s not in self.held]
        random.shuffle(free)  # so consumers starting together don't all race for the same ones
        for stream in free:
            if len(self.held) >= share:
                break
            if await self.redis.set(self.lease_key(stream), self.consumer, nx=True, px=self.ttl_ms):
                self.held.add(stream)
                acquired.add(stream)
        self.below_share = len(self.held) < share
        excess = len(self.held) - share
        to_release = set(sorted(self.held & releasable)[: max(0, excess)])
        return acquired, lost, to_release

    async def release(self, stream: str) -> None:
        self.held.discard(stream)
        await self._release(self.redis, [self.lease_key(stream)], [self.consumer])

    async def leave(self) -> None:
        for stream in list(self.held):
            await self.release(stream)
        await self.redis.zrem(self.members_key, self.consumer)
