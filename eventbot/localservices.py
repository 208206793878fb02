"""Start Redis, a Redis Cluster and Postgres from the binaries on this machine, in a folder of our own.

Used by the test harness (each run its own servers, which fault tests may kill)
and by the demo when no server answers on the default ports.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ServiceUnavailable(RuntimeError):
    """No way to run this service here; the message says how to get one."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def _wait_for(check, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise ServiceUnavailable(f"{what} did not start within {timeout:.0f}s")


def _reachable_by_others(directory: Path) -> bool:
    """Whether a user other than the owner can traverse every existing parent of ``directory``."""
    for parent in directory.resolve().parents:
        if parent.exists() and not parent.stat().st_mode & 0o001:
            return False
    return True


@dataclass
class LocalRedis:
    """A redis-server of our own, with AOF, in ``directory``."""

    directory: Path
    port: int = field(default_factory=free_port)
    appendfsync: str = "everysec"
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        binary = find_binary("redis-server")
        if binary is None:
            raise ServiceUnavailable(
                "redis-server not found: install it (Debian/Ubuntu: apt-get install redis-server; "
                "macOS: brew install redis) or run `docker compose up -d redis` and set REDIS_URL"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "",
                "--maxmemory-policy", "noeviction", "--logfile", "redis.log", *self.extra_args,
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        _wait_for(lambda: port_answers(self.port) or self.process.poll() is not None, "redis-server")
        if self.process.poll() is not None:
            raise ServiceUnavailable(f"redis-server exited; see {self.directory / 'redis.log'}")
        return self.url

    def kill(self) -> None:
        """SIGKILL: what a crash or power loss looks like to the data on disk."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class LocalRedisCluster:
    """``masters`` cluster-enabled redis-servers of our own, joined into one cluster, no replicas.

    Each node is a :class:`LocalRedis` (AOF, noeviction) in ``directory/node-<i>``
    with its own ``nodes.conf``; a node stopped and started again rejoins with
    its slots. :attr:`url` is a ``redis+cluster://`` URL naming every node.
    """

    directory: Path
    masters: int = 3
    appendfsync: str = "everysec"
    node_timeout_ms: int = 5_000
    extra_args: tuple[str, ...] = ()
    nodes: list[LocalRedis] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.nodes:
            self.nodes = [
                LocalRedis(
                    self.directory / f"node-{i}", appendfsync=self.appendfsync,
                    extra_args=(
                        # The bus port is named, not port+10000: that one may be taken or past 65535.
                        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-port", str(free_port()),
                        "--cluster-node-timeout", str(self.node_timeout_ms), *self.extra_args,
                    ),
                )
                for i in range(self.masters)
            ]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", node.port) for node in self.nodes]

    @property
    def url(self) -> str:
        from eventbot.redisclient import cluster_url

        return cluster_url(self.addresses)

    def start(self, timeout: float = 30.0) -> str:
        """Start every node; on the first start join them (slots spread evenly) and wait until the cluster serves."""
        cli = find_binary("redis-cli")
        if cli is None:
            raise ServiceUnavailable(
                "redis-cli not found (it ships with redis-server): install redis-tools, or set REDIS_CLUSTER_URL"
            )
        fresh = not any((node.directory / "nodes.conf").exists() for node in self.nodes)
        try:
            for node in self.nodes:
                node.start()
            if fresh:
                created = subprocess.run(
                    [
                        cli, "--cluster", "create", *(f"{h}:{p}" for h, p in self.addresses),
                        "--cluster-replicas", "0", "--cluster-yes",
                    ],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                )
                if created.returncode != 0:
                    raise ServiceUnavailable(f"redis-cli --cluster create failed: {created.stdout[-2000:]}")
            _wait_for(self.serving, f"Redis Cluster of {self.masters} masters", timeout)
        except BaseException:
            self.stop()
            raise
        return self.url

    def serving(self) -> bool:
        """True when every node says the cluster is ok and knows every other node."""
        import redis

        for host, port in self.addresses:
            try:
                with redis.Redis(host=host, port=port, socket_timeout=1) as client:
                    info = client.execute_command("CLUSTER", "INFO")
            except redis.RedisError:
                return False
            text = info.decode() if isinstance(info, bytes) else str(info)
            fields = dict(line.split(":", 1) for line in text.split() if ":" in line)
            if fields.get("cluster_state") != "ok" or int(fields.get("cluster_known_nodes", 0)) != self.masters:
                return False
        return True

    def kill(self) -> None:
        """SIGKILL every node."""
        for node in self.nodes:
            node.kill()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@dataclass
class LocalPostgres:
    """A Postgres cluster of our own in ``directory`` (initdb on first start)."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)
    _scratch: bool = field(default=False, repr=False)  # a temp dir of our own, removed on stop

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_owner(self) -> tuple[dict, int | None, int | None]:
        # Postgres refuses to run as root; run it as the 'postgres' user then.
        if os.geteuid() != 0:
            return {}, None, None
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError as e:
            raise ServiceUnavailable("running as root and no 'postgres' user to run Postgres as") from e
        return {"user": pw.pw_uid, "group": pw.pw_gid}, pw.pw_uid, pw.pw_gid

    def start(self) -> str:
        initdb, postgres = find_binary("initdb"), find_binary("postgres")
        if initdb is None or postgres is None:
            raise ServiceUnavailable(
                "Postgres binaries not found: install them (Debian/Ubuntu: apt-get install postgresql; "
                "macOS: brew install postgresql@16) or run `docker compose up -d postgres` and set DATABASE_URL"
            )
        owner, uid, gid = self._as_owner()
        if uid is not None and not _reachable_by_others(self.directory):
            # e.g. pytest's /tmp/pytest-of-root is 0700: the 'postgres' user can't get in.
            self.directory = Path(tempfile.mkdtemp(prefix="eventbot-pg-"))
            self._scratch = True
        data = self.directory / "data"
        self.directory.mkdir(parents=True, exist_ok=True)
        if uid is not None:
            os.chown(self.directory, uid, gid)  # type: ignore[arg-type]
        if not (data / "PG_VERSION").exists():
            subprocess.run(
                [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **owner,
            )
        self.process = subprocess.Popen(
            [
                postgres, "-D", str(data), "-p", str(self.port), "-k", str(self.directory),
                "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200",
                "-c", "shared_buffers=256MB", "-c", "synchronous_commit=on",
            ],
            stdout=subprocess.DEVNULL, stderr=self._log_file(),
            start_new_session=True, **owner,
        )
        _wait_for(lambda: self._ready() or self.process.poll() is not None, "postgres")
        if self.process.poll() is not None:
            raise ServiceUnavailable(f"postgres exited; see {self.directory / 'postgres.log'}")
        return self.dsn

    def _log_file(self):  # type: ignore[no-untyped-def]
        if self._log is None or self._log.closed:
            self._log = open(self.directory / "postgres.log", "ab")  # noqa: SIM115 - closed in stop()
        return self._log

    def _ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.dsn, connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
        if self._scratch:
            shutil.rmtree(self.directory, ignore_errors=True)
