"""Agent hot path: 200 concurrent conversations through a real agent process and both fakes.

    .venv/bin/python -m bench.agent [--conversations 200] [--turns 3] [--think 4] [--agents 1] [--pin] [--private-redis] [--json FILE]
    .venv/bin/python -m bench.agent --tokens     # token events: one per delta vs batched

The agent and the read-model projector run as processes of their own, as in
production (the agent without DATABASE_URL), and so does the fake model; this
process hosts the fake Bot API and the users. Both fakes answer at zero delay. Merge window off. Each
user reads an answer and writes the next message after a think time (default
4 s, x0.5-1.5): latency is measured on a loaded but not saturated agent (with
zero think time every figure is just queueing behind 200 users). Figures:

(a) hot-path overhead: ``message.received`` appended -> the request arrives at the fake model;
(b) TTFT overhead: the fake model's first delta -> the fake Bot API's first send of that answer;
(c) Redis round trips per answered message: before the model is called, and in all
    (counted in the agent process per answer: every command or pipeline sent);
(d) Postgres connections and queries opened by the agent (must be 0).

For the slowest 1 % of (a), when one agent process runs: the share of each window its
event loop waited for I/O and the share it spent on CPU (``bench/looptime.py``); the
rest it waited for a core.

Each with its p50/p99 and the raw limit measured in the same run: for (a) three
sequential Redis round trips plus one bare HTTP POST to the fake model; for (b)
one bare ``sendMessageDraft`` through aiogram to the fake Bot API. Timestamps
are ``time.perf_counter()`` (CLOCK_MONOTONIC: comparable across the two processes).
Uses REDIS_URL or 127.0.0.1:6379 under a namespace of its own, deleted afterwards.

``--pin`` leaves CPU 0 to the agent process and puts this process, the fakes and the
projector on the other CPUs (Redis, a service, stays where the system puts it): on a
2-core machine the default placement makes the agent wait for a core behind the
fakes and the users, which are not its own costs.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from prometheus_client import CollectorRegistry

from bench.looptime import LoopTurns, spent
from bench.report import Figure, emit
from bench.servers import redis_url
from eventbot.appender import Appender
from eventbot.tasks import cancel_and_wait
from eventbot.connections import redis_client
from eventbot.redisclient import RedisClient
from eventbot.consumer import Consumer, ConsumerConfig
from eventbot.fakes.anthropic import FakeAnthropic
from eventbot.fakes.telegram import FakeTelegram, TgChat, TgUser
from eventbot.heap import freeze_startup_heap
from eventbot.ids import new_event_id
from eventbot.keys import Keys
from eventbot.localservices import LocalRedis
from eventbot.ledger import Ledger
from eventbot.metrics import ConsumerMetrics
from eventbot.readmodels import ReadModelBuilder, StreamLog, limits_for
from events import BalanceCredited, MessageReceived, UserSeen, chat_key, default_codec, user_key
from services.projector.handlers import READMODEL_GROUP, ReadModelHandler

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 8
MODEL = "claude-haiku-4-5"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


class Run:
    def __init__(self, redis: RedisClient, url: str, conversations: int, turns: int) -> None:
        self.redis = redis
        self.url = url
        self.conversations = conversations
        self.turns = turns
        self.keys = Keys(f"bench-agent-{uuid.uuid4().hex[:8]}", PARTITIONS)
        self.codec = default_codec()
        self.appender = Appender(redis, self.keys, self.codec)
        self.ledger = Ledger(redis, self.keys, self.codec)
        self.telegram = FakeTelegram()
        self.claude = ModelProcess()
        self.appended_at: dict[str, float] = {}  # the text sent -> when its append returned
        self.final_sent: dict[int, asyncio.Event] = defaultdict(asyncio.Event)


    async def balanced(self, agents: int, timeout_s: float = 60.0) -> None:
        """Until the agent group's partitions are spread over all ``agents`` (a steady state, not a handover)."""
        deadline = time.monotonic() + timeout_s
        leases = [f"{stream}:lease:agent" for stream in self.keys.streams("conv")]
        while time.monotonic() < deadline:
            holders = [h for h in await self.redis.mget(leases) if h is not None]
            if len(holders) == len(leases) and len(set(holders)) == agents:
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"the agents' partitions were not spread over {agents} processes within {timeout_s:g}s")

    def watch_final_messages(self) -> None:
        send = self.telegram._send_message

        async def recording(p: dict[str, Any]) -> Any:
            result = await send(p)
            self.final_sent[int(p["chat_id"])].set()
            return result

        self.telegram._send_message = recording  # type: ignore[method-assign]

    def agent_env(self, out: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("EVENTBOT_")}
        env.update(
            REDIS_URL=self.url, EVENTBOT_NAMESPACE=self.keys.namespace, EVENTBOT_PARTITIONS=str(PARTITIONS),
            TELEGRAM_BOT_TOKEN=self.telegram.token, TELEGRAM_API_URL=self.telegram.base_url,
            ANTHROPIC_API_KEY="bench-key", ANTHROPIC_BASE_URL=self.claude.base_url,
            EVENTBOT_MODELS=MODEL, EVENTBOT_DEFAULT_MODEL=MODEL, EVENTBOT_MERGE_WINDOW_MS="0",
            EVENTBOT_LOG_LEVEL="WARNING", BENCH_AGENT_OUT=out,
        )
        return env

    async def credit(self, user: TgUser) -> None:
        event = BalanceCredited(
            event_id=new_event_id(), occurred_at=datetime.now(timezone.utc), partition_key=user_key(user.id),
            user_id=user.id, amount=10**8, source="admin", reference="bench",
        )
        await self.ledger.transact(user.id, lambda head: [event])

    async def say(self, user: TgUser, text: str, first: bool) -> None:
        update = self.telegram.send_text(user, text, chat=TgChat.private(user), deliver=False)
        m = update["message"]
        common = dict(occurred_at=datetime.now(timezone.utc), partition_key=chat_key(user.id), chat_id=user.id)
        events: list[Any] = [UserSeen(event_id=new_event_id(), user_id=user.id, first_name=user.first_name, **common)] if first else []
        events.append(MessageReceived(
            event_id=new_event_id(), update_id=update["update_id"], message_id=m["message_id"], user_id=user.id,
            chat_type="private", text=text, **common,
        ))
        self.final_sent[user.id].clear()
        await self.appender.append_many(events)
        self.appended_at[text] = time.perf_counter()
        await asyncio.wait_for(self.final_sent[user.id].wait(), 60)

    async def conversation(self, user: TgUser, think_s: float) -> None:
        rng = random.Random(user.id)
        # Start spread over one think time, as people do, not all in the same millisecond.
        await asyncio.sleep(rng.uniform(0, think_s))
        for turn in range(self.turns):
            await self.say(user, f"user {user.id} turn {turn}: how do event streams work?", turn == 0)
            await asyncio.sleep(rng.uniform(0.5, 1.5) * think_s)  # reading the answer, typing the next

    def hot_path(self, records: list[dict[str, Any]]) -> list[float]:
        return [r["received_at"] - self.appended_at[r["text"]] for r in records if r["text"] in self.appended_at]

    def ttft(self, records: list[dict[str, Any]]) -> list[float]:
        first_sends = self.first_sends(records)
        return [first_sends[r["text"]] - r["first_delta_at"] for r in records if r["text"] in first_sends]

    def first_sends(self, records: list[dict[str, Any]]) -> dict[str, float]:
        """Answered text -> when the fake Bot API got the first send of its chat after the model's first delta."""
        sends: dict[int, list[float]] = defaultdict(list)
        for c in self.telegram.calls():
            if c.ok and c.method in ("sendMessageDraft", "sendMessage", "editMessageText"):
                sends[int(c.params["chat_id"])].append(c.at)
        out = {}
        for r in records:
            if r["text"] not in self.appended_at or r["first_delta_at"] is None:
                continue
            chat = int(r["text"].split()[1])
            after = [t for t in sends[chat] if t >= r["first_delta_at"]]
            if after:
                out[r["text"]] = min(after)
        return out


    STAGES = (
        ("delivered to the agent", "appended", "entered"),
        ("context read, read model caught up", "entered", "context_after"),
        ("request built, hold placed", "context_after", "hold"),
        ("hold -> model called", "hold", "model_called"),
        ("model called -> request arrives", "model_called", "arrived"),
        # (b): the fake model's first delta -> the fake Bot API's first send.
        ("first delta -> parsed by the agent", "first_delta", "delta_parsed"),
        ("parsed -> Bot API called", "delta_parsed", "first_send_called"),
        ("Bot API called -> request arrives", "first_send_called", "first_send"),
    )

    def breakdown(self, stages: dict[str, dict[str, float]], records: list[dict[str, Any]]) -> list[Figure]:
        """(a) and (b) split into their stages, p50/p99 of each (ms): where the time goes."""
        arrived = {r["text"]: r for r in records}
        first_sends = self.first_sends(records)
        spans: dict[str, list[float]] = defaultdict(list)
        for text, marks in stages.items():
            if text not in self.appended_at or text not in arrived:
                continue
            record = arrived[text]
            marks = {**marks, "appended": self.appended_at[text], "arrived": record["received_at"]}
            if text in first_sends:
                marks.update(first_delta=record["first_delta_at"], first_send=first_sends[text])
            for name, start, end in self.STAGES:
                if start in marks and end in marks:
                    spans[name].append(marks[end] - marks[start])
        figures = []
        for name, _, _ in self.STAGES:
            if spans[name]:
                figures.append(Figure(f"agent (a) stage: {name}, p50", statistics.median(spans[name]) * 1000, "ms"))
                figures.append(Figure(f"agent (a) stage: {name}, p99", pct(spans[name], 99) * 1000, "ms"))
        return figures

    def tail(self, records: list[dict[str, Any]], turns: list[Any], slowest: float = 0.01) -> list[Figure]:
        """The slowest ``slowest`` share of hot paths (a): how much of each window the agent's loop
        waited for I/O and how much CPU it used (one agent process only: its loop's turns)."""
        windows = sorted(
            ((r["received_at"] - self.appended_at[r["text"]], self.appended_at[r["text"]], r["received_at"])
             for r in records if r["text"] in self.appended_at),
            reverse=True,
        )
        run_began = min(self.appended_at.values(), default=0.0)
        windows = windows[:max(1, round(len(windows) * slowest))]
        waited, busy = [], []
        for wall, t0, t1 in windows:
            w, cpu = spent(turns, t0, t1)
            waited.append(w / wall)
            busy.append(cpu / wall)
            print(f"# slow hot path {wall * 1000:.1f} ms, {t0 - run_began:.1f} s into the run: the agent's loop waited {w * 1000:.1f} ms for I/O "
                  f"and used {cpu * 1000:.1f} ms of CPU (the rest: waiting for a core)")
        share = f"slowest {slowest:.0%} of hot paths"
        return [
            Figure(f"agent (a) {share}: agent loop waiting for I/O, share of the window", statistics.fmean(waited) * 100, "%"),
            Figure(f"agent (a) {share}: agent CPU, share of the window", statistics.fmean(busy) * 100, "%"),
        ]


class ModelProcess:
    """The fake model in a process of its own, so its work doesn't queue behind the users' and the Bot API's."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="bench-agent-model-")
        self.base_url = ""
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> str:
        url_file = Path(self.dir, "url")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.agent", "--fake-model", self.dir], cwd=ROOT,
        )
        for _ in range(400):
            if url_file.exists() and url_file.read_text():
                self.base_url = url_file.read_text()
                return self.base_url
            await asyncio.sleep(0.05)
        raise RuntimeError("the fake model process did not start")

    def stop(self) -> list[dict[str, Any]]:
        """Stop it; every request it saw: last user text, arrival, first delta (perf_counter, system-wide)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)
        records = json.loads(Path(self.dir, "records.json").read_text())
        for f in Path(self.dir).iterdir():
            f.unlink()
        os.rmdir(self.dir)
        return records


def fake_model(directory: str) -> None:
    async def serve() -> None:
        fake = FakeAnthropic(answer_chars=400, delta_chars=20, delta_delay_s=0.0)
        url = await fake.start()
        Path(directory, "url").write_text(url)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await fake.stop()
        first: dict[int, float] = {}
        for d in fake.deltas:
            first.setdefault(d.request_index, d.produced_at)
        records = [
            {"text": (r.texts() or [""])[-1], "received_at": r.received_at, "first_delta_at": first.get(r.index)}
            for r in fake.requests
        ]
        Path(directory, "records.json").write_text(json.dumps(records))

    asyncio.run(serve())


async def raw_round(run: Run, http: aiohttp.ClientSession, label: str, started: dict[str, float]) -> None:
    """3 sequential Redis round trips + one bare POST to the fake model, its start time kept under ``label``."""
    body = {"model": MODEL, "max_tokens": 16, "stream": True, "messages": [{"role": "user", "content": label}]}
    started[label] = time.perf_counter()
    for _ in range(3):
        await run.redis.ping()
    async with http.post(f"{run.claude.base_url}/v1/messages", json=body, headers={"x-api-key": "k"}) as resp:
        await resp.read()


async def raw_under_load(run: Run, started: dict[str, float], every_s: float = 0.05) -> None:
    """The raw sequence of (a) repeated while the conversations run: what the loaded machine allows."""
    async with aiohttp.ClientSession() as http:
        for i in itertools.count():
            await raw_round(run, http, f"load-raw {i}", started)
            await asyncio.sleep(every_s)


async def raw_limits(run: Run, samples: int = 300) -> tuple[dict[str, float], list[float]]:
    """(a): 3 sequential Redis round trips + one bare POST to the fake model (start times by request text,
    matched to arrivals once the model process has stopped); (b): one bare sendMessageDraft."""
    a: dict[str, float] = {}
    async with aiohttp.ClientSession() as http:
        for i in range(samples):
            await raw_round(run, http, f"raw {i}", a)
    b: list[float] = []
    user = TgUser(id=999_999)
    run.telegram.send_text(user, "raw", deliver=False)
    bot = Bot(run.telegram.token, session=AiohttpSession(api=run.telegram.api_server()))
    try:
        for i in range(samples):
            t0 = time.perf_counter()
            await bot.send_message_draft(user.id, 1, text=f"raw {i}")
            b.append(run.telegram.calls("sendMessageDraft")[-1].at - t0)
    finally:
        await bot.session.close()
    return a, b


async def token_events(url: str, answers: int = 200, deltas: int = 50) -> list[Figure]:
    """One token event per delta vs what accumulated while the previous append was in flight.

    ``answers`` answers stream at once through :class:`TokenSink`, at zero delay and at a
    model-like 20 ms per delta. Measured: events and appends (round trips) per answer, and
    how far the token stream trails the answer when it ends (last delta -> all appended).
    """
    from services.agent.tokens import TokenSink

    redis = redis_client(url)
    keys = Keys(f"bench-tokens-{uuid.uuid4().hex[:8]}", PARTITIONS)
    appender = Appender(redis, keys, default_codec())
    figures = []
    try:
        for delay in (0.0, 0.02):
            for batch in (False, True):
                appends = [0]
                append_many = appender.append_many

                async def counted(events, _inner=append_many):  # type: ignore[no-untyped-def]
                    appends[0] += 1
                    return await _inner(events)

                appender.append_many = counted  # type: ignore[method-assign]
                trail: list[float] = []
                events = [0]

                async def answer(i: int) -> None:
                    sink = TokenSink(appender, uuid.uuid4(), chat_key(i), 1, datetime.now(timezone.utc), batch=batch)
                    for _ in range(deltas):
                        sink.add("word ")
                        await asyncio.sleep(delay)
                    ended = time.perf_counter()
                    await sink.close()
                    trail.append(time.perf_counter() - ended)
                    events[0] += sink.events

                try:
                    await asyncio.gather(*(answer(i) for i in range(answers)))
                finally:
                    appender.append_many = append_many  # type: ignore[method-assign]
                name = f"tokens {'batched' if batch else 'per delta'}, {delay * 1000:.0f} ms/delta:"
                figures += [
                    Figure(f"{name} events per answer", events[0] / answers, "events"),
                    Figure(f"{name} appends per answer", appends[0] / answers, "round trips"),
                    Figure(f"{name} trail at the end p99", pct(trail, 99) * 1000, "ms"),
                ]
    finally:
        async for key in redis.scan_iter(match=f"{keys.namespace}:*", count=1000):
            await redis.delete(key)
        await redis.aclose()
    return figures


async def main(
    conversations: int, turns: int, think_s: float, json_path: str | None, private_redis: bool, agents: int = 1, pin: bool = False,
) -> None:
    logging.getLogger("aiogram").setLevel(logging.WARNING)
    if private_redis:
        # A redis-server of this run's own: others' load on a shared one would be measured as ours.
        server = LocalRedis(Path(tempfile.mkdtemp(prefix="bench-agent-redis-")))
        try:
            return await _main(server.start(), conversations, turns, think_s, json_path, agents, pin)
        finally:
            server.stop()
    await _main(redis_url(), conversations, turns, think_s, json_path, agents, pin)


async def _main(url: str, conversations: int, turns: int, think_s: float, json_path: str | None, agents: int, pin: bool) -> None:
    agent_cpus = _pin_others() if pin else None  # before the fakes and the projector start: they inherit it
    redis = redis_client(url)  # a blocking pool: 200 users at once queue for connections instead of failing
    run = Run(redis, url, conversations, turns)
    await run.telegram.start()
    await run.claude.start()
    run.watch_final_messages()
    users = [TgUser(id=10_000 + i, first_name=f"U{i}") for i in range(conversations + 1)]
    await asyncio.gather(*(run.credit(u) for u in users))
    outs = [tempfile.NamedTemporaryFile(suffix=".json", delete=False).name for _ in range(agents)]
    projector = subprocess.Popen([sys.executable, "-m", "bench.agent", "--projector"], cwd=ROOT, env=run.agent_env(""))
    # More than one: the group's instances share the partitions, as `--scale agent=N` would.
    children = [subprocess.Popen([sys.executable, "-m", "bench.agent", "--child"], cwd=ROOT, env=run.agent_env(out)) for out in outs]
    if agent_cpus:
        for child in children:
            os.sched_setaffinity(child.pid, agent_cpus)
    try:
        await run.conversation(users[-1], 0.0)  # warm-up: imports, connections, caches of the agent process
        await run.balanced(agents)
        run.telegram._calls.clear(), run.appended_at.clear()
        started = time.perf_counter()
        cpu_before = {"agent": sum(map(cpu_seconds, children)), "builder": cpu_seconds(projector)}
        loaded_a: dict[str, float] = {}
        probe = asyncio.create_task(raw_under_load(run, loaded_a))
        await asyncio.gather(*(run.conversation(u, think_s) for u in users[:-1]))
        elapsed = time.perf_counter() - started
        cpu_during = {"agent": sum(map(cpu_seconds, children)) - cpu_before["agent"],
                      "builder": cpu_seconds(projector) - cpu_before["builder"]}
        await cancel_and_wait(probe)
        raw_a, limit_b = await raw_limits(run)
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            child.wait(60)
        projector.send_signal(signal.SIGTERM)
        projector.wait(60)
        records = run.claude.stop()
        await run.telegram.stop()
        async for key in redis.scan_iter(match=f"{run.keys.namespace}:*", count=1000):
            await redis.delete(key)
        await redis.aclose()
    hot, ttft = run.hot_path(records), run.ttft(records)
    limit_a = [r["received_at"] - raw_a[r["text"]] for r in records if r["text"] in raw_a]
    loaded_limit_a = [r["received_at"] - loaded_a[r["text"]] for r in records if r["text"] in loaded_a]
    counted = _merged([json.loads(Path(out).read_text()) for out in outs])
    for out in outs:
        os.unlink(out)
    answers = [v for k, v in counted["answers"].items() if not k.startswith(str(users[-1].id))]
    before = [float(v[1]) for v in answers if v[1] is not None]
    total = [float(v[0]) for v in answers]
    ms = 1000.0
    answered = len(answers)
    breakdown = run.breakdown(counted["stages"], records)
    if agents == 1:
        breakdown += run.tail(records, counted["turns"][0])
    pauses = counted.get("gc", [])
    for gen in (0, 1, 2):
        mine = [d for g, d in pauses if g == gen]
        if mine:
            print(f"# agent gc gen{gen}: {len(mine)} collections, max {max(mine) * 1000:.1f} ms, total {sum(mine) * 1000:.0f} ms")
    print(f"# {agents} agent process(es); {conversations} concurrent conversations x {turns} turns, think time {think_s:g} s (x0.5-1.5): "
          f"{answered} answers in {elapsed:.1f} s ({answered / elapsed:.0f}/s); fakes at zero delay, merge window off")
    emit([
        Figure("agent (a) hot path p50", statistics.median(hot) * ms, "ms", limit=statistics.median(limit_a) * ms),
        Figure("agent (a) hot path p99", pct(hot, 99) * ms, "ms", target=10, target_kind="max"),
        Figure("agent (a) raw limit p99 (3 Redis RTs + POST)", pct(limit_a, 99) * ms, "ms"),
        # The same raw sequence, sent from this process while the conversations ran: the loaded machine's own tail.
        Figure("agent (a) raw limit under the run's load, p50", statistics.median(loaded_limit_a) * ms, "ms"),
        Figure("agent (a) raw limit under the run's load, p99", pct(loaded_limit_a, 99) * ms, "ms"),
        Figure("agent (b) TTFT overhead p50", statistics.median(ttft) * ms, "ms", limit=statistics.median(limit_b) * ms),
        Figure("agent (b) TTFT overhead p99", pct(ttft, 99) * ms, "ms", target=5, target_kind="max"),
        Figure("agent (b) raw limit p99 (bare sendMessageDraft)", pct(limit_b, 99) * ms, "ms"),
        Figure("agent (c) Redis RTs before the model, p50", statistics.median(before), "round trips", target=3, target_kind="max"),
        Figure("agent (c) Redis RTs before the model, max", max(before), "round trips"),
        Figure("agent (c) Redis RTs before the model, mean", statistics.fmean(before), "round trips"),
        Figure("agent (c) Redis RTs per answer in all, mean", statistics.fmean(total), "round trips"),
        Figure("agent (d) Postgres connections+queries per answer", counted["postgres"] / max(1, answered), "ops",
               target=0, target_kind="max"),
        Figure(f"agent answers/s ({conversations} concurrent conversations)", answered / elapsed, "answers/s"),
        *breakdown,
        # What bounds the rest on this machine: CPU the agent process spent per answer (startup included).
        Figure("agent process CPU per answer", counted["cpu_s"] / max(1, answered) * ms, "ms"),
        Figure("agent process CPU per answer, during the run", cpu_during["agent"] / max(1, answered) * ms, "ms"),
        Figure("read-model builder process CPU per answer, during the run", cpu_during["builder"] / max(1, answered) * ms, "ms"),
    ], json_path)


def _pin_others() -> set[int]:
    """This process (and the children it starts from now on) off CPU 0, which is left to the agent:
    how a latency-critical service is placed on a small machine. Redis, a service, is not moved."""
    cpus = os.sched_getaffinity(0)
    if 0 not in cpus or len(cpus) < 2:
        raise SystemExit("--pin needs CPU 0 and at least one other")
    os.sched_setaffinity(0, cpus - {0})
    print(f"# pinned: the agent on CPU 0; users, fakes and projector on CPUs {sorted(cpus - {0})}")
    return {0}


def cpu_seconds(process: subprocess.Popen[bytes]) -> float:
    """CPU (user + system) a child has used so far, from /proc (Linux)."""
    fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _merged(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The agent processes' counts as one."""
    return {
        "answers": {k: v for p in parts for k, v in p["answers"].items()},
        "stages": {k: v for p in parts for k, v in p["stages"].items()},
        "postgres": sum(p["postgres"] for p in parts),
        "cpu_s": sum(p["cpu_s"] for p in parts),
        "gc": [g for p in parts for g in p["gc"]],
        "turns": [p["turns"] for p in parts],
    }


def projector() -> None:
    """The read-model builder (group ``readmodel``) as its own process, as the projector runs in production."""
    from eventbot.settings import Settings

    settings = Settings.from_env()

    async def serve() -> None:
        redis = redis_client(settings.redis_url)  # type: ignore[arg-type]
        keys, codec = Keys(settings.namespace, settings.partitions), default_codec()
        builder = ReadModelBuilder(redis, keys, limits_for(settings), StreamLog(redis, keys, codec))
        consumer = Consumer(
            redis, keys, codec, ReadModelHandler(builder), keys.streams("conv") + keys.streams("ledger"),
            ConsumerConfig(group=READMODEL_GROUP, block_ms=1000), ConsumerMetrics(CollectorRegistry()),
        )
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, consumer.stop)
        freeze_startup_heap()  # as `eventbot run` does
        await consumer.run()
        await redis.aclose()

    asyncio.run(serve())


def child() -> None:
    """The agent process, instrumented: Redis sends per answer (before the model call and in all), Postgres use."""
    import contextvars

    import psycopg
    from redis.asyncio.connection import AbstractConnection

    import services.agent.answer as answer_module
    from eventbot.settings import Settings
    from services.agent.answer import Answerer
    from services.agent.main import run_agent

    current: contextvars.ContextVar[str | None] = contextvars.ContextVar("answer", default=None)
    answers: dict[str, list[Any]] = defaultdict(lambda: [0, None])
    # Where the hot path's time goes, per answered text: perf_counter at each stage's end.
    stages: dict[str, dict[str, float]] = defaultdict(dict)
    text_of: contextvars.ContextVar[str | None] = contextvars.ContextVar("text", default=None)
    postgres = [0]

    def mark(stage: str) -> None:
        text = text_of.get()
        if text is not None:
            stages[text].setdefault(stage, time.perf_counter())

    def timed(owner: Any, name: str) -> None:
        inner = getattr(owner, name)

        async def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            result = await inner(*args, **kwargs)
            mark(name)
            return result

        setattr(owner, name, wrapper)

    send = AbstractConnection.send_packed_command

    async def counting_send(self, command, check_health=True):  # type: ignore[no-untyped-def]
        key = current.get()
        if key is not None:
            answers[key][0] += 1
        return await send(self, command, check_health)

    answer = Answerer.answer

    async def tagged_answer(self, jobs, cancel):  # type: ignore[no-untyped-def]
        token = current.set(f"{jobs[-1].event.chat_id}:{jobs[-1].event.message_id}")
        text_token = text_of.set(jobs[-1].event.text)
        mark("entered")
        try:
            return await answer(self, jobs, cancel)
        finally:
            current.reset(token)
            text_of.reset(text_token)

    stream = answer_module.stream_answer

    async def counted_stream(*args, **kwargs):  # type: ignore[no-untyped-def]
        key = current.get()
        if key is not None and answers[key][1] is None:
            answers[key][1] = answers[key][0]  # round trips sent before the model was called
        mark("model_called")
        on_delta = args[3]

        def marked(delta: str) -> None:
            mark("delta_parsed")
            on_delta(delta)

        return await stream(*args[:3], marked, *args[4:], **kwargs)

    def counting_connect(original):  # type: ignore[no-untyped-def]
        def connect(*args, **kwargs):  # type: ignore[no-untyped-def]
            postgres[0] += 1
            return original(*args, **kwargs)
        return connect

    from eventbot.readmodels import reader
    from services.agent import billing

    timed(reader.RedisReadModels, "context_after")
    from aiogram.client.session.aiohttp import AiohttpSession
    make_request = AiohttpSession.make_request

    async def marked_request(self, bot, method, timeout=None):  # type: ignore[no-untyped-def]
        text = text_of.get()
        if text is not None and "delta_parsed" in stages[text]:
            mark("first_send_called")  # the first Bot API call after the first delta
        return await make_request(self, bot, method, timeout)

    AiohttpSession.make_request = marked_request  # type: ignore[method-assign]
    timed(billing.Billing, "hold")
    AbstractConnection.send_packed_command = counting_send  # type: ignore[method-assign]
    Answerer.answer = tagged_answer  # type: ignore[method-assign]
    answer_module.stream_answer = counted_stream  # type: ignore[assignment]
    psycopg.Connection.connect = classmethod(counting_connect(psycopg.Connection.connect.__func__))  # type: ignore[method-assign]
    psycopg.AsyncConnection.connect = classmethod(counting_connect(psycopg.AsyncConnection.connect.__func__))  # type: ignore[method-assign]
    psycopg.AsyncCursor.execute = counting_connect(psycopg.AsyncCursor.execute)  # type: ignore[method-assign]

    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level)
    import gc
    gc_pauses: list[tuple[int, float]] = []
    gc_started = [0.0]

    def on_gc(phase: str, info: dict) -> None:  # type: ignore[type-arg]
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            gc_pauses.append((info["generation"], time.perf_counter() - gc_started[0]))

    gc.callbacks.append(on_gc)
    loop_turns = LoopTurns()

    async def serve() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        freeze_startup_heap()  # as `eventbot run` does
        gc_pauses.clear()  # startup's collections are not the hot path's
        loop_turns.install(asyncio.get_running_loop())
        await run_agent(settings, stop=stop)

    asyncio.run(serve())
    cpu = os.times().user + os.times().system
    Path(os.environ["BENCH_AGENT_OUT"]).write_text(json.dumps({
        "answers": answers, "postgres": postgres[0], "cpu_s": cpu, "stages": stages, "gc": gc_pauses,
        "turns": loop_turns.turns,
    }))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--tokens", action="store_true", help="only compare token events per delta vs batched")
    parser.add_argument("--agents", type=int, default=1, help="agent processes in the group (default 1)")
    parser.add_argument("--pin", action="store_true", help="the agent alone on CPU 0, the rest on the other CPUs (Linux)")
    parser.add_argument("--private-redis", action="store_true", help="start a redis-server for this run only")
    parser.add_argument("--think", type=float, default=4.0, help="seconds a user takes between an answer and the next message")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--projector", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fake-model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fake_model:
        fake_model(args.fake_model)
    elif args.projector:
        projector()
    elif args.child:
        child()
    elif args.tokens:
        emit(asyncio.run(token_events(redis_url())), args.json_path)
    else:
        asyncio.run(main(args.conversations, args.turns, args.think, args.json_path, args.private_redis, args.agents, args.pin))
