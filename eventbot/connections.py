"""Building the clients a process needs from its settings, once, in ``main``."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from eventbot.appender import AppendMetrics, Appender
from eventbot.keys import Keys
from eventbot.ledger import Ledger
from eventbot.redisclient import QueueingRedisCluster, RedisClient, is_cluster_url, parse_cluster_url
from eventbot.settings import Settings
from events import EventCodec

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


# Longer than the longest XREADGROUP BLOCK settings allow (60 s), so a blocked read is
# never cut short, yet bounded, so a cluster node that vanished is noticed and rerouted.
CLUSTER_SOCKET_TIMEOUT_S = 75.0


def redis_client(url: str, *, max_connections: int = 64) -> RedisClient:
    """An asyncio Redis client that reconnects on its own after a restart.

    The pool blocks (briefly) when all connections are busy instead of failing,
    so a burst of concurrent appends queues rather than erroring.
    ``redis+cluster://host:port[,host:port...]`` (``rediss+cluster://`` for TLS)
    gives a Redis Cluster client instead, with the same queueing and retries;
    see :mod:`eventbot.redisclient`.
    """
    if is_cluster_url(url):
        return _cluster_client(url, max_connections)
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=10,
        health_check_interval=10,
        socket_keepalive=True,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return Redis.from_pool(pool)


def _cluster_client(url: str, max_connections: int) -> QueueingRedisCluster:
    plain, nodes = parse_cluster_url(url)
    options: dict = dict(
        health_check_interval=10,
        socket_keepalive=True,
        socket_timeout=CLUSTER_SOCKET_TIMEOUT_S,
        # redis-py re-reads the slot map and retries a command after a connection error,
        # a failover (CLUSTERDOWN) or an unserved slot; past that the caller's backoff takes over.
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
    )
    options.update(parse_url(plain))  # credentials, TLS and the URL's own options win
    options.pop("host", None)
    options.pop("port", None)
    if options.pop("connection_class", None) is not None:  # rediss: redis-py's cluster takes a flag
        options["ssl"] = True
    return QueueingRedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        max_concurrency=max_connections,
        wait_s=10,
        **options,
    )


def keys_for(settings: Settings) -> Keys:
    return Keys(settings.namespace, settings.partitions)


def appender_for(redis: RedisClient, settings: Settings, codec: EventCodec, metrics: AppendMetrics | None = None) -> Appender:
    return Appender(
        redis, keys_for(settings), codec,
        dedupe_window_s=settings.dedupe_window_s, tokens_maxlen=settings.tokens_maxlen, metrics=metrics,
    )


def ledger_for(redis: RedisClient, settings: Settings, codec: EventCodec, metrics: AppendMetrics | None = None) -> Ledger:
    return Ledger(redis, keys_for(settings), codec, dedupe_window_s=settings.dedupe_window_s, metrics=metrics)
