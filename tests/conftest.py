from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from psycopg import sql

from eventbot.appender import Appender
from eventbot.connections import redis_client
from eventbot.keys import Keys
from eventbot.localdefaults import with_database
from eventbot.ledger import Ledger
from eventbot.metrics import ConsumerMetrics
from eventbot.redisclient import RedisClient
from events import EventCodec, default_codec
from tests import harness


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with harness.redis_url(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A three-master Redis Cluster for the whole run (``redis+cluster://`` URL)."""
    with harness.redis_cluster_url(tmp_path_factory.mktemp("redis-cluster")) as url:
        yield url


@pytest.fixture(scope="session")
def postgres_server_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with harness.postgres_dsn(tmp_path_factory.mktemp("pg")) as dsn:
        yield dsn


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis(redis_server_url: str, namespace: str) -> AsyncIterator[RedisClient]:
    client = redis_client(redis_server_url)
    yield client
    # Remove only what this test created: keys under its own namespace.
    async for key in client.scan_iter(match=f"{namespace}:*", count=1000):
        await client.delete(key)
    await client.aclose()


@pytest.fixture
def database_url(postgres_server_dsn: str) -> Iterator[str]:
    """A database of this test's own, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield with_database(postgres_server_dsn, name)
    with psycopg.connect(postgres_server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def keys(namespace: str) -> Keys:
    return Keys(namespace, partitions=4)


@pytest.fixture
def codec() -> EventCodec:
    return default_codec()


@pytest.fixture
def appender(redis: RedisClient, keys: Keys, codec: EventCodec) -> Appender:
    return Appender(redis, keys, codec)


@pytest.fixture
def ledger(redis: RedisClient, keys: Keys, codec: EventCodec) -> Ledger:
    return Ledger(redis, keys, codec)


@pytest.fixture
def consumer_metrics() -> ConsumerMetrics:
    return ConsumerMetrics(CollectorRegistry())
