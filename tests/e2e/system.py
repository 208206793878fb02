"""The whole bot for a fault test: fakes in this process, each service a real process that can be SIGKILLed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from eventbot.connections import redis_client
from eventbot.deadletters import DeadLetters
from eventbot.demo.observer import Observer
from eventbot.fakes.anthropic import FakeAnthropic
from eventbot.fakes.telegram import FakeTelegram
from eventbot.keys import FAMILIES, Keys
from eventbot.ledger import Ledger
from eventbot.localservices import free_port, port_answers
from eventbot.redisclient import RedisClient
from eventbot.status import collect
from eventbot.tasks import cancel_and_wait
from events import default_codec
from services.ingest.rejected import RejectedUpdates
from services.projector.trimmer import REQUIRED_GROUPS

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("ingest", "agent", "projector")
GROUPS = ("readmodel", "postgres", "agent")
ADMIN_ID = 900_000_001
MODEL = "claude-haiku-4-5"


@dataclass
class ServiceProcess:
    """One ``eventbot run <name>`` process; its output goes to a log file kept for a failing test."""

    name: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    metrics_port: int = 0

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, f"{self.name} is running"
        self.starts += 1
        self.metrics_port = free_port()
        with open(self.log_path, "ab") as log:
            log.write(f"\n----- start {self.starts} -----\n".encode())
            self.process = subprocess.Popen(
                [sys.executable, "-m", "eventbot.cli", "run", self.name], cwd=ROOT,
                env={**self.env, "METRICS_PORT": str(self.metrics_port)},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Until it serves /metrics (its services are started), or it died; True if it is up."""
        deadline = time.monotonic() + timeout
        while self.alive and time.monotonic() < deadline:
            if port_answers(self.metrics_port):
                return True
            time.sleep(0.05)
        return False

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, no drain: what a crashed host or an OOM kill looks like to the others."""
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.kills += 1

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (drain), SIGKILL if it does not return in time."""
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class EntryRecordingObserver(Observer):
    """The demo's observer, also remembering every conv/ledger entry it saw: a finding can then name what is missing."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.entries: dict[str, str] = {}  # "stream/entry id" -> event type

    async def _read(self, stream: str) -> None:
        if ":tokens:" in stream:
            return await super()._read(stream)
        start = self._cursor.get(stream)
        await super()._read(stream)
        for raw_id, fields in await self.redis.xrange(stream, min=f"({start}" if start else "-",
                                                        max=self._cursor.get(stream) or "+"):
            self.entries[f"{stream}/{raw_id.decode()}"] = fields.get(b"t", b"?").decode()


@dataclass
class System:
    """Fakes here, services as processes, an observer reading every stream (no consumer group)."""

    redis_url: str
    database_url: str
    namespace: str
    workdir: Path
    telegram: FakeTelegram
    claude: FakeAnthropic
    partitions: int = 4
    # The projector may reach Postgres another way than the checks do (a proxy that a test cuts).
    projector_database_url: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    # (service, time.perf_counter()) of every SIGKILL, to place a finding on the timeline.
    kill_log: list[tuple[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.keys = Keys(self.namespace, self.partitions)
        self.codec = default_codec()
        self.redis: RedisClient = redis_client(self.redis_url, max_connections=16)
        self.ledger = Ledger(self.redis, self.keys, self.codec)
        self.observer = EntryRecordingObserver(self.redis, self.keys, self.codec)
        self.changed = asyncio.Condition()
        self._watcher: asyncio.Task[None] | None = None
        self.watch_errors = 0
        # (chat id, message id) -> text of the response that answered it ("" for a cancel before any text).
        self.terminal_texts: dict[tuple[int, int], str] = {}

    def env(self, service: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("EVENTBOT_", "TELEGRAM_", "ANTHROPIC_")) and k not in ("REDIS_URL", "DATABASE_URL")}
        db = self.projector_database_url if service == "projector" and self.projector_database_url else self.database_url
        env.update(
            REDIS_URL=self.redis_url, DATABASE_URL=db, EVENTBOT_NAMESPACE=self.namespace,
            EVENTBOT_PARTITIONS=str(self.partitions), METRICS_PORT="0",
            TELEGRAM_BOT_TOKEN=self.telegram.token, TELEGRAM_API_URL=self.telegram.base_url,
            ANTHROPIC_API_KEY="test-key-for-the-fake", ANTHROPIC_BASE_URL=self.claude.base_url,
            EVENTBOT_MODELS=MODEL, EVENTBOT_DEFAULT_MODEL=MODEL, EVENTBOT_ADMIN_IDS=str(ADMIN_ID),
            EVENTBOT_CLAIM_IDLE_MS="2000", EVENTBOT_MERGE_WINDOW_MS="0", EVENTBOT_BLOCK_MS="200",
            EVENTBOT_DRAFT_INTERVAL_MS="100", EVENTBOT_RATE_LIMIT_PER_MINUTE="10000",
            EVENTBOT_LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    # -- lifecycle ----------------------------------------------------------------

    def start_services(self, names: Sequence[str] = SERVICES) -> None:
        for name in names:
            proc = self.processes.get(name) or ServiceProcess(name, self.env(name), self.workdir / f"{name}.log")
            self.processes[name] = proc
            proc.start()
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch())

    def kill(self, name: str) -> None:
        self.kill_log.append((name, time.perf_counter()))
        self.processes[name].kill()

    def restart(self, name: str) -> None:
        """SIGKILL and start again; returns once the new process serves (so the next kill hits a working one)."""
        proc = self.processes[name]
        self.kill(name)
        proc.start()
        proc.wait_ready()

    def ensure_running(self) -> None:
        """Any service that exited on its own (a crash, not a kill of ours) is counted and started again."""
        for proc in self.processes.values():
            if not proc.alive:
                proc.start()

    def exits(self) -> dict[str, int]:
        """Starts not explained by our kills: a service that stopped on its own (ideally zero)."""
        return {n: p.starts - 1 - p.kills for n, p in self.processes.items() if p.starts - 1 - p.kills}

    async def close(self) -> None:
        for proc in self.processes.values():
            proc.kill()
        if self._watcher is not None:
            await cancel_and_wait(self._watcher)
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    def logs(self) -> str:
        return "\n".join(f"===== {n} =====\n{p.tail()}" for n, p in self.processes.items())

    # -- watching -------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            try:
                await self.observer.poll()
            except Exception:  # noqa: BLE001 - Redis may be down in an infrastructure test; look again
                self.watch_errors += 1
            async with self.changed:
                self.changed.notify_all()
            await asyncio.sleep(0.05)

    async def caught_up(self, timeout_s: float = 180.0) -> None:
        """Until every group has taken and acked everything appended so far (services restarted if they died)."""
        deadline = time.monotonic() + timeout_s
        quiet = 0
        missing: list[tuple[str, str]] = []
        while True:
            self.ensure_running()
            try:
                status = await collect(self.redis, self.keys)
            except Exception:  # noqa: BLE001 - a restarting Redis
                status = None
            behind = ["redis"] if status is None else [
                (s.stream, g.group) for s in status.streams for g in s.groups
                if g.group in GROUPS and (g.pending or (s.last_entry and _id(g.last_delivered) < _id(s.last_entry)))
            ]
            if status is not None and not behind:
                groups = {(s.stream, g.group) for s in status.streams if s.family != "tokens" for g in s.groups}
                # Each family's own consumers (the agent reads conv only): a group that should
                # exist and doesn't would leave its entries unconsumed without showing as lag.
                missing = [(s.stream, grp) for s in status.streams if s.length
                           for grp in REQUIRED_GROUPS.get(s.family, ()) if (s.stream, grp) not in groups]
                # Twice in a row: an answer being settled appends after its message was acked.
                quiet = quiet + 1 if not missing else 0
                if quiet >= 3:
                    await self.observer.poll()
                    return
            else:
                quiet = 0
            if time.monotonic() > deadline:
                raise TimeoutError(f"still behind after {timeout_s:.0f}s: {behind[:4]}, groups missing: {missing[:4]}")
            await asyncio.sleep(0.5)

    async def entries_added(self) -> int:
        """Entries ever appended to the conv and ledger streams (XINFO STREAM entries-added: trimming keeps it)."""
        total = 0
        for family in FAMILIES:
            if family == "tokens":
                continue
            for stream in self.keys.streams(family):
                if await self.redis.exists(stream):
                    info = await self.redis.xinfo_stream(stream)
                    total += int(info["entries-added"])
        return total

    async def dead_letters(self) -> int:
        return sum((await DeadLetters(self.redis, self.keys).count()).values())

    async def kept_aside(self) -> list[tuple[int, str]]:
        """Updates ingest could not turn into events (a bug, or an outage taken for one)."""
        return await RejectedUpdates(self.redis, self.keys).latest(count=100)

    async def cli(self, *args: str, timeout: float = 180.0) -> tuple[int, str]:
        """``eventbot <args>`` against this system (checks read Postgres directly, never through a proxy)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "eventbot.cli", *args, cwd=ROOT, env=self.env("checks"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        return proc.returncode or 0, out.decode(errors="replace")


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
