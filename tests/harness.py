"""Where the test servers come from: env, else a Docker engine, else local binaries.

REDIS_URL / DATABASE_URL (and REDIS_CLUSTER_URL for the cluster tests) win when set. Otherwise testcontainers is used if a
Docker engine answers, and failing that redis-server / postgres are started from
this machine's binaries in a temp dir. Each test then gets its own key namespace
and its own database on those servers.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from eventbot.localservices import LocalPostgres, LocalRedis, LocalRedisCluster


def docker_answers() -> bool:
    """True when a Docker engine answers (testcontainers can then start servers)."""
    import socket

    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return _docker_ping()
    # Asking the socket directly leaves nothing open when no engine listens.
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(1)
        try:
            s.connect(host.removeprefix("unix://"))
        except OSError:
            return False
    return _docker_ping()


def _docker_ping() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=2)
    except Exception:  # noqa: BLE001 - any failure means "no engine here"
        return False
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001
        return False
    finally:
        client.close()


@contextlib.contextmanager
def redis_url(tmp: Path) -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
    elif docker_answers():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7.2") as c:
            yield f"redis://{c.get_container_host_ip()}:{c.get_exposed_port(6379)}/0"
    else:
        server = LocalRedis(tmp / "redis")
        try:
            yield server.start()
        finally:
            server.stop()


@contextlib.contextmanager
def redis_cluster_url(tmp: Path) -> Iterator[str]:
    """REDIS_CLUSTER_URL (``redis+cluster://host:port,...``) when set, else three masters from local binaries."""
    if os.environ.get("REDIS_CLUSTER_URL"):
        yield os.environ["REDIS_CLUSTER_URL"]
        return
    cluster = LocalRedisCluster(tmp / "redis-cluster", masters=3)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@contextlib.contextmanager
def postgres_dsn(tmp: Path) -> Iterator[str]:
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
    elif docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as c:
            yield c.get_connection_url()
    else:
        server = LocalPostgres(tmp / "postgres")
        try:
            yield server.start()
        finally:
            server.stop()
