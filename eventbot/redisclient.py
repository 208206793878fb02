"""The Redis client the core talks to: a plain Redis or a Redis Cluster.

Every key of one partition carries the hash tag ``{p}``, so each script, MULTI
and command the core sends touches one slot, and the same calls run on both
clients. A cluster is chosen by the URL scheme ``redis+cluster://`` (TLS:
``rediss+cluster://``), with one or more comma-separated startup nodes:
``redis+cluster://user:pass@10.0.0.1:7000,10.0.0.2:7000``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from contextvars import ContextVar
from typing import Any, TypeAlias, Union

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import ClusterError, MaxConnectionsError, RedisClusterException, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

RedisClient: TypeAlias = Union[Redis, RedisCluster]

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")

# Redis did not answer, or the cluster cannot serve the slot right now (down,
# failing over, slots moving): worth retrying, unlike a wrong command.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError, RedisTimeoutError, ClusterError, TryAgainError, SlotNotCoveredError,
)
# What a call to the store may raise when the store, not the call, is at fault: the
# above, or the socket itself failing. Every caller that turns an outage into
# StoreUnavailable catches this one tuple, so a cluster error is never taken for a bug.
STORE_DOWN: tuple[type[BaseException], ...] = (*UNAVAILABLE, OSError)


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0] in CLUSTER_SCHEMES


def cluster_url(nodes: Iterable[tuple[str, int]], *, tls: bool = False) -> str:
    scheme = CLUSTER_SCHEMES[1] if tls else CLUSTER_SCHEMES[0]
    return f"{scheme}://" + ",".join(f"{host}:{port}" for host, port in nodes)


def parse_cluster_url(url: str) -> tuple[str, list[tuple[str, int]]]:
    """``redis+cluster://u:p@h1:1,h2:2/0?x=y`` -> (``redis://u:p@h1:1/0?x=y``, [(h1, 1), (h2, 2)]).

    The first is a plain URL redis-py parses for credentials, TLS and options;
    the second lists every startup node, so a client can start while one is down.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"not a Redis Cluster URL (scheme {' or '.join(CLUSTER_SCHEMES)})")
    netloc, slash, tail = rest.partition("/")
    netloc, query_sep, query = netloc.partition("?")  # "h:1?x=y" without a path
    userinfo, at, hosts = netloc.rpartition("@")
    items = [item.strip() for item in hosts.split(",")]
    nodes = []
    for item in items:
        host, colon, port = item.rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ValueError(f"Redis Cluster node {item!r} must be host:port")
        nodes.append((host.strip("[]"), int(port)))
    plain = f"{scheme.removesuffix('+cluster')}://{userinfo}{at}{items[0]}{slash}{tail}{query_sep}{query}"
    return plain, nodes


# Set while a task holds a turn, so a command that redis-py issues from inside a
# pipeline (a MOVED redirect re-sent alone) does not wait for a second turn.
_holding_turn: ContextVar[bool] = ContextVar("eventbot_redis_turn", default=False)


class QueueingRedisCluster(RedisCluster):
    """A RedisCluster whose callers queue for a connection instead of failing.

    redis-py's cluster nodes raise MaxConnectionsError as soon as a node's pool
    is full, where the plain client's BlockingConnectionPool waits: a burst of
    concurrent appends would fail instead of queueing. Here at most
    ``max_concurrency`` commands or pipelines run at once (each holds at most one
    connection per node), and a caller waits up to ``wait_s`` for its turn.
    """

    def __init__(self, *args: Any, max_concurrency: int, wait_s: float, **kwargs: Any) -> None:
        # Headroom over the gate: a connection marked for reconnect is released in the background.
        super().__init__(*args, max_connections=2 * max_concurrency, **kwargs)
        self._turns = asyncio.Semaphore(max_concurrency)
        self._wait_s = wait_s

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        if _holding_turn.get():
            yield
            return
        if self._turns.locked():
            try:
                await asyncio.wait_for(self._turns.acquire(), self._wait_s)
            except asyncio.TimeoutError:
                raise MaxConnectionsError(f"no Redis Cluster connection free within {self._wait_s:g}s") from None
        else:
            await self._turns.acquire()  # free: returns without yielding
        token = _holding_turn.set(True)
        try:
            yield
        finally:
            _holding_turn.reset(token)
            self._turns.release()

    async def initialize(self, *args: Any, **kwargs: Any) -> RedisCluster:
        try:
            return await super().initialize(*args, **kwargs)
        except RedisClusterException as e:
            # No startup node answered: redis-py says so with a non-Redis exception;
            # callers retry a connection error (and fail fast on a real misconfiguration).
            if isinstance(e.__cause__, (RedisConnectionError, RedisTimeoutError, OSError)):
                raise RedisConnectionError(f"Redis Cluster unreachable: {e.__cause__}") from e
            raise

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.turn():
            if self._initialize:
                # redis-py routes a command by its key only once the slot map is known;
                # one sent while another task is still loading it goes to an arbitrary
                # node and comes back MOVED, and every few MOVED redis-py drops all
                # connections, in-flight ones included. So wait for the map first.
                await self.initialize()
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return _QueueingPipeline(self, transaction)


class _QueueingPipeline(ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        async with self.cluster_client.turn():  # type: ignore[attr-defined]
            return await super().execute(raise_on_error, allow_redirections)


def is_cluster(redis: RedisClient) -> bool:
    return isinstance(redis, RedisCluster)
