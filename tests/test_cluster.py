"""What only a Redis Cluster can get wrong: choosing it, per-node script caches, bursts, restarts, outages."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from eventbot.appender import Appender
from eventbot.connections import redis_client
from eventbot.consumer import Consumer, ConsumerConfig
from eventbot.errors import StoreUnavailable
from eventbot.keys import Keys
from eventbot.ledger import Ledger
from eventbot.localservices import LocalRedisCluster, free_port
from eventbot.metrics import ConsumerMetrics
from eventbot.redisclient import RedisClient, cluster_url
from eventbot.settings import Settings, SettingsError
from events import EventCodec
from tests.factories import credit, message

pytestmark = pytest.mark.cluster


@pytest.fixture
def redis_server_url(redis_cluster_url: str) -> str:
    return redis_cluster_url


async def test_the_url_scheme_chooses_the_client(redis_cluster_url: str) -> None:
    cluster, plain = redis_client(redis_cluster_url), redis_client("redis://127.0.0.1:6379/0")
    try:
        assert isinstance(cluster, RedisCluster) and isinstance(plain, Redis)
        assert await cluster.ping()
    finally:
        await cluster.aclose()
        await plain.aclose()
    assert Settings.from_env({"REDIS_URL": redis_cluster_url}).redis_url == redis_cluster_url
    with pytest.raises(SettingsError, match="REDIS_URL"):
        Settings.from_env({"REDIS_URL": "redis+cluster://127.0.0.1:7000,127.0.0.1"})


async def loaded(redis: RedisCluster, sha: str, node: ClusterNode) -> bool:
    return bool((await redis.execute_command("SCRIPT EXISTS", sha, target_nodes=node))[0])


async def test_scripts_flushed_on_every_primary_are_reloaded_where_needed(
    redis: RedisClient, appender: Appender, ledger: Ledger, keys: Keys
) -> None:
    assert isinstance(redis, RedisCluster)
    events = [message(chat, "x") for chat in range(1, 41)]
    first = await appender.append_many(events)
    await ledger.transact(1, lambda h: [credit(1, 5)])
    sha = appender._script.sha
    primaries = redis.get_primaries()
    assert all([await loaded(redis, sha, node) for node in primaries])

    await redis.script_flush()
    assert not any([await loaded(redis, sha, node) for node in primaries])
    # One pipelined batch across all three nodes, each answering NOSCRIPT: reloaded, retried, stored once.
    again = await appender.append_many(events + [message(99, "new")])
    assert [r.duplicate for r in again] == [True] * len(events) + [False]
    assert [(r.stream, r.entry_id) for r in again[:-1]] == [(r.stream, r.entry_id) for r in first]
    assert all([await loaded(redis, sha, node) for node in primaries])
    assert sum([await redis.xlen(s) for s in keys.streams("conv")]) == len(events) + 1
    await ledger.transact(1, lambda h: [credit(1, 6)])
    assert (await ledger.head(1)).balance == 11


async def test_a_burst_wider_than_the_pool_queues_instead_of_failing(
    redis_cluster_url: str, namespace: str, keys: Keys, codec: EventCodec
) -> None:
    # redis-py's cluster nodes fail at once when their pool is full; ours must wait their turn.
    client = redis_client(redis_cluster_url, max_connections=4)
    try:
        appender, ledger = Appender(client, keys, codec), Ledger(client, keys, codec)
        appends = [appender.append(message(chat, "burst")) for chat in range(300)]
        credits = [ledger.transact(user, lambda h, u=user: [credit(u, 1)]) for user in range(20) for _ in range(5)]
        await asyncio.gather(*appends, *credits)
        assert all([(await ledger.head(user)).balance == 5 for user in range(20)])
        assert max(len(node._connections) for node in client.get_nodes()) <= 8
    finally:
        async for key in client.scan_iter(match=f"{namespace}:*", count=1000):
            await client.delete(key)
        await client.aclose()


async def test_an_unreachable_cluster_is_a_transient_outage(keys: Keys, codec: EventCodec) -> None:
    client = redis_client(cluster_url([("127.0.0.1", free_port()), ("127.0.0.1", free_port())]))
    try:
        with pytest.raises(StoreUnavailable):
            await Appender(client, keys, codec).append(message(1))
        with pytest.raises(StoreUnavailable):
            await Ledger(client, keys, codec).head(1)

        async def handler(batch) -> None:  # type: ignore[no-untyped-def]
            raise AssertionError("nothing to handle")

        consumer = Consumer(
            client, keys, codec, handler, keys.streams("conv"),
            ConsumerConfig(group="g", consumer="c", backoff_base_s=0.01, backoff_cap_s=0.05),
            ConsumerMetrics(CollectorRegistry()),
        )
        task = asyncio.create_task(consumer.run())
        await asyncio.sleep(0.5)
        assert not task.done(), "the consumer must wait for the cluster, not crash"
        consumer.stop()
        await asyncio.wait_for(task, 10)
    finally:
        await client.aclose()


async def test_a_restarted_cluster_keeps_events_and_dedupe_and_clients_reconnect(
    tmp_path, keys: Keys, codec: EventCodec
) -> None:
    cluster = LocalRedisCluster(tmp_path / "cluster", appendfsync="always")
    url = cluster.start()
    client = redis_client(url)
    try:
        appender = Appender(client, keys, codec)
        events = [message(chat, "kept") for chat in range(1, 21)]
        first = await appender.append_many(events)
        cluster.stop()
        cluster.start()  # same dirs and ports: AOF and nodes.conf bring back data and slots
        deadline = asyncio.get_running_loop().time() + 20
        while True:  # the same client, as a running service would keep it
            with contextlib.suppress(StoreUnavailable):
                again = await appender.append_many(events)
                break
            assert asyncio.get_running_loop().time() < deadline, "the client never reconnected"
            await asyncio.sleep(0.2)
        assert all(r.duplicate for r in again)
        assert [(r.stream, r.entry_id) for r in again] == [(r.stream, r.entry_id) for r in first]
        assert sum([await client.xlen(s) for s in keys.streams("conv")]) == len(events)
    finally:
        await client.aclose()
        cluster.stop()
