"""Sustained load: simulated users chatting through both fakes, with ingest, agent and projector running.

    .venv/bin/python -m bench.load [--rate 20] [--seconds 300] [--json FILE]
    .venv/bin/python -m bench.load --find-max [--seconds 300] [--step-seconds 45] [--start-rate 5]

The three services run as processes of their own (``python -m eventbot.cli run
<service>``), as in production, so the generator's CPU is not in their event loop.
This process hosts the fake Bot API, the fake model (zero delay unless
``--model-delay``) and the users, and its CPU is reported. Redis is a
``redis-server`` of the bench's own (AOF everysec, as compose runs it);
Postgres is DATABASE_URL or the local default, in a database of the bench's own;
both are removed afterwards. Loopback only.

Users are private chats. Messages arrive as a Poisson process at ``--rate``/s,
each from a user not waiting for an answer (so no answer is cancelled by its
user's next message). Answer-start latency is the user's send -> the first text
of the answer visible in the fake Bot API (draft, message or edit).

A rate *holds* when answer-start p99 <= ``--p99-bound`` s (default 2) and the
lag of every consumer group stays bounded: the mean lag over the last quarter of
the step is at most max(200 entries, 1.5 x the mean over the second quarter).
``--find-max`` raises the rate by x1.5 per step (each step starting from drained
groups) until one fails, and reports the highest that held.

Redis memory per 1M events: ``used_memory`` after the run minus before it,
divided by the entries appended to every stream meanwhile (``XINFO STREAM``
``entries-added``, which counts trimmed entries too); it includes everything
those events cost in Redis (read models, dedupe markers, leases), not just the
stream entries.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from psycopg import sql

from bench.report import Figure, emit
from bench.servers import postgres_dsn
from eventbot.connections import redis_client
from eventbot.fakes.anthropic import FakeAnthropic
from eventbot.fakes.telegram import FakeTelegram, TgUser
from eventbot.ids import new_event_id
from eventbot.keys import FAMILIES, Keys
from eventbot.ledger import Ledger
from eventbot.localdefaults import ensure_database
from eventbot.localservices import LocalRedis, free_port
from eventbot.redisclient import RedisClient
from eventbot.status import collect
from events import BalanceCredited, default_codec, user_key

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 8
MODEL = "claude-haiku-4-5"
GROUPS = ("agent", "readmodel", "postgres")
LAG_FLOOR = 200
TICKS = os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its reaped children) from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / TICKS


@dataclass
class Pending:
    sent_at: float
    first_visible: float | None = None


@dataclass
class Step:
    rate: float
    seconds: float
    sent: int = 0
    answered: int = 0
    skipped: int = 0  # arrivals with every user still waiting: the generator could not offer them
    latencies: list[float] = field(default_factory=list)
    lag: dict[str, list[int]] = field(default_factory=lambda: {g: [] for g in GROUPS})
    cpu: dict[str, float] = field(default_factory=dict)  # cores used per process over the step
    load: tuple[float, float] = (0.0, 0.0)  # 1-min load average at start and end
    drain_s: float = 0.0
    unanswered: int = 0  # still waiting 60 s after the step

    def p(self, q: float) -> float:
        return pct(self.latencies, q)

    def lag_bounded(self) -> bool:
        for samples in self.lag.values():
            n = len(samples)
            if n < 8:
                continue
            second = statistics.fmean(samples[n // 4 : n // 2])
            last = statistics.fmean(samples[3 * n // 4 :])
            if last > max(LAG_FLOOR, 1.5 * second):
                return False
        return True

    def holds(self, p99_bound_s: float) -> bool:
        return bool(self.latencies) and self.p(99) <= p99_bound_s and self.lag_bounded() and self.skipped == 0


class Users:
    """The simulated users and what they are waiting for, watched through the fake Bot API's methods."""

    def __init__(self, fake: FakeTelegram, count: int, first_id: int = 3_000_000) -> None:
        self.fake = fake
        self.users = [TgUser(first_id + i, first_name=f"L{i}") for i in range(count)]
        self.idle = list(self.users)
        random.Random(count).shuffle(self.idle)
        self.waiting: dict[int, Pending] = {}
        self.by_id = {u.id: u for u in self.users}
        self.step: Step | None = None
        self.answered_total = 0
        self._wrap()

    def _wrap(self) -> None:
        fake = self.fake
        for name, final in (("_send_message_draft", False), ("_edit_message_text", False), ("_send_message", True)):
            original = getattr(fake, name)

            async def watched(p: dict[str, Any], original: Any = original, final: bool = final) -> Any:
                result = await original(p)  # raises on a refused call: then nothing became visible
                self._seen(int(p.get("chat_id", 0)), final)
                return result

            setattr(fake, name, watched)

    def _seen(self, chat_id: int, final: bool) -> None:
        pending = self.waiting.get(chat_id)
        if pending is None:
            return
        now = time.perf_counter()
        if pending.first_visible is None:
            pending.first_visible = now
        if final:
            del self.waiting[chat_id]
            self.idle.append(self.by_id[chat_id])
            self.answered_total += 1
            if self.step is not None and pending.sent_at >= self._step_started:
                self.step.answered += 1
                self.step.latencies.append(pending.first_visible - pending.sent_at)

    def start_step(self, step: Step) -> None:
        self.step = step
        self._step_started = time.perf_counter()

    def send(self, n: int) -> bool:
        if not self.idle:
            return False
        user = self.idle.pop(0)  # the longest idle: a user just answered doesn't write again at once
        self.waiting[user.id] = Pending(time.perf_counter())
        self.fake.send_text(user, f"message {n}: how do event streams keep a ledger honest?")
        return True


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="eventbot-load-"))
        self.redis_server = LocalRedis(self.tmp / "redis")
        self.namespace = f"bench-load-{uuid.uuid4().hex[:8]}"
        self.database = f"bench_load_{uuid.uuid4().hex[:8]}"
        self.keys = Keys(self.namespace, PARTITIONS)
        self.telegram = FakeTelegram()
        self.claude = FakeAnthropic(answer_chars=args.answer_chars, delta_chars=40, delta_delay_s=args.model_delay)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.redis: RedisClient | None = None

    def env(self, service: str, database_url: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTBOT_", "TELEGRAM_", "ANTHROPIC_"))}
        env.pop("DATABASE_URL", None)
        env.update(
            REDIS_URL=self.redis_server.url, EVENTBOT_NAMESPACE=self.namespace, EVENTBOT_PARTITIONS=str(PARTITIONS),
            TELEGRAM_BOT_TOKEN=self.telegram.token, TELEGRAM_API_URL=self.telegram.base_url,
            ANTHROPIC_API_KEY="bench-load-key", ANTHROPIC_BASE_URL=self.claude.base_url,
            EVENTBOT_MODELS=MODEL, EVENTBOT_DEFAULT_MODEL=MODEL, EVENTBOT_MERGE_WINDOW_MS="0",
            EVENTBOT_LOG_LEVEL="WARNING", METRICS_PORT=str(free_port()),
        )
        if service in ("projector", "migrate"):
            env["DATABASE_URL"] = database_url
        return env

    async def start(self) -> str:
        self.redis_server.start()
        self.redis = redis_client(self.redis_server.url, max_connections=16)
        database_url = ensure_database(postgres_dsn(), self.database, fresh=True)
        await self.telegram.start()
        await self.claude.start()
        subprocess.run([sys.executable, "-m", "eventbot.cli", "migrate"], cwd=ROOT, check=True,
                       env=self.env("migrate", database_url), stdout=subprocess.DEVNULL)
        for service in ("projector", "agent", "ingest"):
            self.processes[service] = subprocess.Popen(
                [sys.executable, "-m", "eventbot.cli", "run", service], cwd=ROOT, env=self.env(service, database_url),
            )
        return database_url

    async def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        await self.claude.stop()
        await self.telegram.stop()
        if self.redis is not None:
            await self.redis.aclose()
        self.redis_server.stop()
        try:
            with __import__("psycopg").connect(postgres_dsn(), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.database)))
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"service {name} exited with {proc.returncode}")

    async def credit(self, users: Users) -> None:
        assert self.redis is not None
        ledger = Ledger(self.redis, self.keys, default_codec())

        async def one(user: TgUser) -> None:
            event = BalanceCredited(event_id=new_event_id(), occurred_at=datetime.now(timezone.utc),
                                    partition_key=user_key(user.id), user_id=user.id, amount=10**9,
                                    source="admin", reference="bench-load")
            await ledger.transact(user.id, lambda head: [event])

        for i in range(0, len(users.users), 100):
            await asyncio.gather(*(one(u) for u in users.users[i : i + 100]))

    async def lags(self) -> dict[str, int]:
        assert self.redis is not None
        totals = (await collect(self.redis, self.keys)).totals()
        return {g: totals.get(g, {}).get("lag", 0) + totals.get(g, {}).get("pending", 0) for g in GROUPS}

    async def entries_added(self) -> dict[str, int]:
        assert self.redis is not None
        out = {f: 0 for f in FAMILIES}
        for family in FAMILIES:
            for stream in self.keys.streams(family):
                try:
                    info = await self.redis.xinfo_stream(stream)
                except Exception:  # noqa: BLE001 - a stream not created yet
                    continue
                out[family] += int(info.get("entries-added", info.get(b"entries-added", 0)))
        return out

    async def stream_lengths(self, family: str) -> int:
        assert self.redis is not None
        return sum([await self.redis.xlen(s) for s in self.keys.streams(family)])

    async def used_memory(self) -> int:
        assert self.redis is not None
        return int((await self.redis.info("memory"))["used_memory"])

    async def drained(self, timeout: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if not any((await self.lags()).values()):
                return time.monotonic() - started
            await asyncio.sleep(0.25)
        return float("inf")

    async def run_step(self, users: Users, rate: float, seconds: float) -> Step:
        step = Step(rate, seconds)
        pids = {"generator": os.getpid(), **{n: p.pid for n, p in self.processes.items()},
                "redis": self.redis_server.process.pid if self.redis_server.process else 0}
        cpu0 = {n: cpu_seconds(p) for n, p in pids.items()}
        step.load = (os.getloadavg()[0], 0.0)
        users.start_step(step)
        rng = random.Random(self.args.seed + int(rate * 1000))
        started = time.perf_counter()
        sampler = asyncio.create_task(self._sample(step))
        next_at = started
        n = 0
        while True:
            next_at += rng.expovariate(rate)
            if next_at - started > seconds:
                break
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            n += 1
            if users.send(n):
                step.sent += 1
            else:
                step.skipped += 1
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        wall = time.perf_counter() - started
        step.cpu = {name: (cpu_seconds(pid) - cpu0[name]) / wall for name, pid in pids.items()}
        step.load = (step.load[0], os.getloadavg()[0])
        # What was sent in the step is still answered; those answers count towards it.
        deadline = time.monotonic() + 60
        while users.waiting and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        step.unanswered = len(users.waiting)
        step.drain_s = await self.drained(60)
        self.check_alive()
        return step

    async def _sample(self, step: Step) -> None:
        while True:
            for group, lag in (await self.lags()).items():
                step.lag[group].append(lag)
            self.check_alive()
            await asyncio.sleep(1.0)

    async def warm_up(self, users: Users) -> None:
        """A few answers end to end, so imports, connections and caches are warm before measuring."""
        for i in range(5):
            users.send(-i)
        deadline = time.monotonic() + 120
        while users.waiting:
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError("no answer during warm-up: are the services up?")
            await asyncio.sleep(0.1)


def describe(step: Step, bound: float) -> str:
    cpu = ", ".join(f"{k} {v:.2f}" for k, v in step.cpu.items())
    lag = ", ".join(f"{g} {max(v, default=0)}" for g, v in step.lag.items())
    return (f"rate {step.rate:g}/s for {step.seconds:.0f}s: sent {step.sent} ({step.sent / step.seconds:.1f}/s), "
            f"answered {step.answered}, unanswered {step.unanswered}, skipped {step.skipped}; answer start p50 {step.p(50) * 1000:.0f} ms, "
            f"p99 {step.p(99) * 1000:.0f} ms; max lag {lag}; drained in {step.drain_s:.1f}s; "
            f"cores: {cpu}; load avg {step.load[0]:.2f}->{step.load[1]:.2f}; "
            f"{'HOLDS' if step.holds(bound) else 'does not hold'}")


async def main(args: argparse.Namespace) -> None:
    logging.getLogger("aiogram").setLevel(logging.WARNING)
    print(f"# seed {args.seed}; command: {' '.join([Path(sys.executable).name, '-m', 'bench.load', *sys.argv[1:]])}",
          flush=True)
    load = Load(args)
    try:
        await load.start()
        top_rate = args.start_rate * 1.5 ** 8 if args.find_max else args.rate
        users = Users(load.telegram, max(50, int(top_rate * 60 / 10)))  # each user <= ~10 messages/min (gate: 20)
        await load.credit(users)
        await load.warm_up(users)
        await load.drained(60)
        memory0, added0 = await load.used_memory(), await load.entries_added()
        steps: list[Step] = []
        if args.find_max:
            rate, left = args.start_rate, args.seconds
            while left >= args.step_seconds:
                step = await load.run_step(users, rate, args.step_seconds)
                steps.append(step)
                print(describe(step, args.p99_bound), flush=True)
                left -= args.step_seconds
                if not step.holds(args.p99_bound):
                    break
                rate = round(rate * 1.5, 1)
        else:
            step = await load.run_step(users, args.rate, args.seconds)
            steps.append(step)
            print(describe(step, args.p99_bound), flush=True)
        await load.drained(60)
        memory1, added1 = await load.used_memory(), await load.entries_added()
        tokens_len = await load.stream_lengths("tokens")
    finally:
        await load.stop()

    appended = {f: added1[f] - added0[f] for f in added0}
    events = sum(appended.values())
    per_million = (memory1 - memory0) / max(1, events) * 1e6 / 2**20
    trimmed = added1["tokens"] - tokens_len
    print(f"# appended during the measured run: {appended} ({events:,} entries); used_memory "
          f"{memory0 / 2**20:.1f} -> {memory1 / 2**20:.1f} MiB; tokens streams "
          f"{'trimmed by ' + format(trimmed, ',') + ' entries' if trimmed > 0 else 'not trimmed'} "
          f"(EVENTBOT_TOKENS_MAXLEN 100000/partition, max age 1 h)")
    held = [s for s in steps if s.holds(args.p99_bound)]
    main_step = held[-1] if (args.find_max and held) else steps[-1]
    label = "highest rate that held" if args.find_max else f"at {args.rate:g}/s offered"
    figures = [
        Figure(f"load offered messages/s ({label})", main_step.sent / main_step.seconds, "msg/s"),
        Figure(f"load answered messages/s ({label})", main_step.answered / main_step.seconds, "msg/s"),
        Figure("load answer-start latency p50", main_step.p(50) * 1000, "ms"),
        Figure("load answer-start latency p99", main_step.p(99) * 1000, "ms", target=args.p99_bound * 1000,
               target_kind="max"),
        *(Figure(f"load max lag, group {g}", max(main_step.lag[g], default=0), "entries") for g in GROUPS),
        Figure("load Redis memory per 1M events", per_million, "MiB"),
        Figure("load generator + fakes CPU", main_step.cpu.get("generator", 0.0), "cores"),
        *(Figure(f"load {n} CPU", main_step.cpu.get(n, 0.0), "cores") for n in ("ingest", "agent", "projector", "redis")),
    ]
    if args.find_max:
        figures.append(Figure("load highest rate that held", held[-1].rate if held else 0.0, "msg/s"))
    emit(figures, args.json_path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=20.0, help="messages/s offered (default 20)")
    parser.add_argument("--seconds", type=float, default=300.0, help="length of the run (default 300)")
    parser.add_argument("--find-max", action="store_true", help="step the rate up x1.5 until it no longer holds")
    parser.add_argument("--start-rate", type=float, default=5.0)
    parser.add_argument("--step-seconds", type=float, default=45.0)
    parser.add_argument("--p99-bound", type=float, default=2.0, help="answer-start p99 bound in seconds (default 2)")
    parser.add_argument("--model-delay", type=float, default=0.0, help="fake model delay per delta, seconds")
    parser.add_argument("--answer-chars", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", dest="json_path")
    parsed = parser.parse_args()
    if parsed.seed is None:
        parsed.seed = random.SystemRandom().randrange(2**31)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a stopped run still stops its services and Redis
    asyncio.run(main(parsed))
