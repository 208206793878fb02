"""Redis's own health as this service sees it: memory used, clients, persistence."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Gauge
from redis.asyncio import Redis


class RedisProbe:
    def __init__(self, redis: Redis, registry: CollectorRegistry) -> None:
        self.redis = redis
        self.memory = Gauge("eventbot_redis_memory_used_bytes", "Redis used_memory", registry=registry)
        self.clients = Gauge("eventbot_redis_connected_clients", "Redis connected_clients", registry=registry)
        self.up = Gauge("eventbot_redis_up", "1 when Redis answered the last probe", registry=registry)
        self.ok = False

    async def probe(self) -> bool:
        try:
            info = await asyncio.wait_for(self.redis.info(), 3)
        except Exception:  # noqa: BLE001 - any failure means "not answering"
            self.up.set(0)
            self.ok = False
            return False
        self.memory.set(int(info.get("used_memory", 0)))
        self.clients.set(int(info.get("connected_clients", 0)))
        self.up.set(1)
        self.ok = True
        return True

    async def run(self, interval_s: float = 5.0) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(interval_s)
