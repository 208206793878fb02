"""The whole bot scaled out on a three-master Redis Cluster: two of every consumer group, one added, one removed.

The fakes (Telegram, Claude) and a round-robin balancer for the webhook run in
this process; every service is a real ``eventbot run`` process talking to the
cluster by ``redis+cluster://``: two webhook ingests behind the balancer, two
agents, two projectors (each runs the ``readmodel`` and ``postgres`` groups).
Simulated users (the demo's ``Conversation``) chat while a third agent starts,
the first agent is stopped (SIGTERM, it drains) and the first projector is
SIGKILLed and started again. Then the claims are checked from outside: each
message answered once, the log archived once, audit and replay clean, and the
work really shared (each instance's /metrics).

The two fast tests first pin the cluster-safety fixes this run found: redis-py's
cluster pipeline refuses ``pipe.evalsha``, which the read-model builder (every
batch) and the ingest gates (checks of several partitions at once) used.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psycopg
import pytest
from aiohttp import web

from eventbot.appender import Appender
from eventbot.deadletters import DeadLetters
from eventbot.demo.observer import Observer
from eventbot.demo.scenario import STOP_MARKER, TOPICS, Conversation, Kind
from eventbot.fakes.anthropic import FakeAnthropic
from eventbot.fakes.telegram import FakeTelegram, TgUser
from eventbot.keys import Keys
from eventbot.ledger import Ledger
from eventbot.localservices import free_port
from eventbot.readmodels import Limits, ReadModelBuilder, StreamLog
from eventbot.readmodels.keys import ReadModelKeys
from eventbot.redisclient import RedisClient
from eventbot.status import collect
from events import EventCodec, user_key
from services.ingest import texts
from services.ingest.gates import Gates
from services.ingest.rejected import RejectedUpdates
from tests.factories import credit, message

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 8
USERS = 16
MESSAGES = 4  # at least, per user: text, a file, one stopped mid-answer, text; more while instances churn
FIRST_USER_ID = 700_001
GROUPS = ("readmodel", "postgres", "agent")
MODEL = "claude-haiku-4-5"
WEBHOOK_SECRET = "cluster-e2e-webhook-secret"
STOP_HOLD_S = 8.0  # how long a "[long]" answer waits for its /stop before it goes on and completes


@pytest.fixture
def redis_server_url(redis_cluster_url: str) -> str:
    return redis_cluster_url


# --- the fixes, pinned ----------------------------------------------------------------


async def test_read_model_batches_apply_on_a_cluster(redis: RedisClient, keys: Keys, codec: EventCodec) -> None:
    appender, ledger = Appender(redis, keys, codec), Ledger(redis, keys, codec)
    builder = ReadModelBuilder(redis, keys, Limits(history_turns=5), StreamLog(redis, keys, codec))
    for chat in range(1, 9):
        await appender.append_many([message(chat, "one"), message(chat, "two")])
        await ledger.transact(chat, lambda h, u=chat: [credit(u, 7)])
    applied = 0
    for family in ("conv", "ledger"):
        for stream in keys.streams(family):
            raw = await redis.xrange(stream)
            batch = [(eid.decode(), codec.decode(f[b"t"].decode(), int(f[b"v"]), f[b"d"])) for eid, f in raw]
            applied += await builder.apply(stream, batch)
    assert applied == 8 * 2 + 8
    # Each partition's position (one hash in the partition's slot) names both its streams.
    rm = ReadModelKeys(keys)
    positions = [await redis.hgetall(rm.position(1, p)) for p in range(keys.partitions)]
    written = {keys.partition_of(str(chat)) for chat in range(1, 9)}
    assert [len(p) for p in positions] == [2 if p in written else 0 for p in range(keys.partitions)]


async def test_gate_checks_of_users_on_several_partitions_in_one_pipeline(redis: RedisClient, keys: Keys) -> None:
    gates = Gates(redis, keys, per_minute=3)
    users = [u for u in range(1, 200) if keys.partition_of(user_key(u)) in (0, 1, 2)][:6]
    assert len({keys.partition_of(user_key(u)) for u in users}) == 3
    now_ms = int(time.time() * 1000)
    results = await gates._run_checks([(u, 1000 + u, now_ms) for u in users])
    assert [tuple(int(x) for x in r) for r in results] == [(1, 1, 0, 0)] * len(users)
    await redis.script_flush()  # the NOSCRIPT path of the pipelined calls too
    results = await gates._run_checks([(u, 2000 + u, now_ms) for u in users])
    assert [int(r[1]) for r in results] == [2] * len(users)


# --- the scaled-out system ---------------------------------------------------------------


@dataclass
class Service:
    """One ``eventbot run <kind>`` process with its own /metrics port and log file."""

    name: str
    kind: str
    env: dict[str, str]
    log_path: Path
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    processed: Counter[str] = field(default_factory=Counter)  # group -> entries, last /metrics seen
    owned: Counter[str] = field(default_factory=Counter)  # group -> partition leases held, last /metrics seen
    up: bool = False  # /metrics answered since the last start

    def start(self) -> None:
        self.processed, self.owned, self.up = Counter(), Counter(), False
        env = {**self.env, "METRICS_PORT": str(self.metrics_port)}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "eventbot.cli", "run", self.kind], cwd=ROOT, env=env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM: the service drains the work in hand and exits."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.process.wait, timeout)

    def kill(self) -> None:
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    async def scrape(self, session: aiohttp.ClientSession) -> None:
        with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
            async with session.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=aiohttp.ClientTimeout(total=2)) as r:
                text = await r.text()
            seen: Counter[str] = Counter()
            for group, value in PROCESSED.findall(text):
                seen[group] += int(float(value))
            self.processed, self.up = seen, True
            self.owned = Counter({group: int(float(value)) for group, value in OWNED.findall(text)})

    def tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


PROCESSED = re.compile(r'^eventbot_consumer_processed_total\{group="(\w+)",stream="[^"]*"\} ([0-9.e+]+)$', re.M)
OWNED = re.compile(r'^eventbot_consumer_partitions_owned\{group="(\w+)"\} ([0-9.e+]+)$', re.M)


@dataclass
class Balancer:
    """Round-robin in front of the ingests' webhooks, as a load balancer would be; counts 200s per backend."""

    ports: list[int]
    port: int = field(default_factory=free_port)
    ok: Counter[int] = field(default_factory=Counter)
    _next: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/telegram"

    async def start(self) -> web.AppRunner:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_post("/telegram", self._forward)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        return runner

    async def close(self) -> None:
        await self._session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        backend = self.ports[self._next % len(self.ports)]
        self._next += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "x-telegram-bot-api-secret-token")}
        try:
            async with self._session.post(f"http://127.0.0.1:{backend}/telegram", data=await request.read(), headers=headers) as r:
                body = await r.read()
                if r.status == 200:
                    self.ok[backend] += 1
                return web.Response(status=r.status, body=body)
        except (aiohttp.ClientError, OSError):
            return web.Response(status=502)  # not up yet: Telegram retries


def service_env(redis_url: str, database_url: str, namespace: str, tg: FakeTelegram, claude: FakeAnthropic,
                webhook_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("EVENTBOT_", "TELEGRAM_", "ANTHROPIC_")) and k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(
        REDIS_URL=redis_url, DATABASE_URL=database_url, EVENTBOT_NAMESPACE=namespace,
        EVENTBOT_PARTITIONS=str(PARTITIONS), TELEGRAM_BOT_TOKEN=tg.token, TELEGRAM_API_URL=tg.base_url,
        TELEGRAM_WEBHOOK_URL=webhook_url, TELEGRAM_WEBHOOK_SECRET=WEBHOOK_SECRET,
        ANTHROPIC_API_KEY="test-key-for-the-fake", ANTHROPIC_BASE_URL=claude.base_url,
        EVENTBOT_MODELS=MODEL, EVENTBOT_DEFAULT_MODEL=MODEL, EVENTBOT_MERGE_WINDOW_MS="0",
        EVENTBOT_CLAIM_IDLE_MS="2000", EVENTBOT_BLOCK_MS="200", EVENTBOT_DRAFT_INTERVAL_MS="200",
        EVENTBOT_RATE_LIMIT_PER_MINUTE="10000", EVENTBOT_LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1",
    )
    return env


async def cli(env: dict[str, str], *args: str, timeout: float = 120.0) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "eventbot.cli", *args, cwd=ROOT, env=env,
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


async def caught_up(redis: RedisClient, keys: Keys, timeout_s: float = 120.0) -> None:
    """Until every group took and acked everything, three looks in a row (settling appends after an ack)."""
    deadline, quiet = time.monotonic() + timeout_s, 0
    while quiet < 3:
        status = await collect(redis, keys)
        behind = [(s.stream, g.group) for s in status.streams for g in s.groups
                  if g.group in GROUPS and (g.pending or (s.last_entry and _id(g.last_delivered) < _id(s.last_entry)))]
        quiet = 0 if behind else quiet + 1
        assert time.monotonic() < deadline, f"still behind after {timeout_s:.0f}s: {behind[:4]}"
        await asyncio.sleep(0.3)


@dataclass
class ChattingUser(Conversation):
    """The demo's user, chatting on until ``until`` is set (at least ``messages`` messages).

    Message 1 carries a file and message 2 is stopped mid-answer, as in the demo; the
    test ends the traffic only after the instances came and went, so the churn always
    happens under load however slowly the processes start on a busy machine.
    """

    until: asyncio.Event = field(default_factory=asyncio.Event)
    pause_s: float = 0.3  # reading the answer before writing again

    async def run(self) -> None:
        await self._command("/start")
        await self._top_up(stars=100)
        i = 0
        while i < self.messages or not self.until.is_set():
            await asyncio.sleep(self.pause_s)
            kind: Kind = "file" if i == 1 else "stop" if i == 2 else "text"
            marker = f"[u{self.user.id}#{i}]"
            exchange = await self._say(kind, marker, f"{marker} {TOPICS[(self.user.id + i) % len(TOPICS)]}")
            if self.redeliver_one and i == 0:
                self.fake.redeliver(exchange.update)  # Telegram unsure it arrived: to either ingest, recorded once
                self.redelivered = (exchange.chat_id, exchange.message_id)
            i += 1


@pytest.fixture
def services() -> Iterator[dict[str, Service]]:
    """The test's service processes, SIGKILLed at teardown whatever happened (even a timeout mid-await)."""
    running: dict[str, Service] = {}
    yield running
    for s in running.values():
        s.kill()


@pytest.mark.slow
@pytest.mark.timeout(420)
async def test_two_of_each_group_on_a_cluster_with_instances_coming_and_going(
    redis: RedisClient, redis_cluster_url: str, database_url: str, namespace: str, codec: EventCodec, tmp_path: Path,
    services: dict[str, Service],
) -> None:
    started, t0 = time.monotonic(), time.perf_counter()

    def phase(what: str) -> None:  # where the time went, in the output of a failing run (-s to see it always)
        print(f"[{time.monotonic() - started:6.1f}s] {what}", flush=True)

    keys = Keys(namespace, PARTITIONS)
    users = [TgUser(FIRST_USER_ID + i, first_name=f"Scale{i}") for i in range(USERS)]
    # The users' chats (and ledgers) cover every partition, so every lease carries traffic.
    assert {keys.partition_of(str(u.id)) for u in users} == set(range(PARTITIONS))

    async def hold_long_answers(request_index: int, delta_index: int) -> None:
        # A "[long]" answer shows its first delta, then holds until the agent, told of the user's
        # /stop (webhook -> ingest -> stream -> agent), drops the stream: so each one is stopped,
        # not a race lost to a quick answer. Never stopped, it completes late and the count fails.
        texts_ = claude.requests[request_index].texts()
        if delta_index == 1 and texts_ and STOP_MARKER in texts_[-1]:
            await asyncio.sleep(STOP_HOLD_S)

    tasks: list[asyncio.Task[None]] = []
    try:
        # Fail on our own clock, in the loop, before pytest-timeout's signal (see test_chaos.BUDGET_S).
        async with asyncio.timeout(360), FakeTelegram() as tg, FakeAnthropic(
            answer_chars=300, delta_chars=30, delta_delay_s=0.005, before_delta=hold_long_answers,
        ) as claude, aiohttp.ClientSession() as http:
            ingest_ports = [free_port(), free_port()]
            balancer = Balancer(ingest_ports)
            balancer_runner = await balancer.start()
            env = service_env(redis_cluster_url, database_url, namespace, tg, claude, balancer.url)

            def add(name: str, kind: str, **extra: str) -> Service:
                services[name] = Service(name, kind, {**env, **extra}, tmp_path / f"{name}.log")
                services[name].start()
                return services[name]

            try:
                code, out = await cli(env, "migrate")
                assert code == 0, out
                for i, port in enumerate(ingest_ports, 1):
                    add(f"ingest-{i}", "ingest", EVENTBOT_WEBHOOK_PORT=str(port))
                for name in ("agent-1", "agent-2"):
                    add(name, "agent")
                for name in ("projector-1", "projector-2"):
                    add(name, "projector")

                async def scrape_forever() -> None:
                    while True:
                        await asyncio.gather(*(s.scrape(http) for s in list(services.values()) if s.alive))
                        await asyncio.sleep(0.3)

                observer = Observer(redis, keys, codec)
                changed = asyncio.Condition()

                async def watch() -> None:
                    while True:
                        died = [s.name for s in services.values() if s.process is not None and s.process.poll() not in (None, 0)
                                and s.name not in expected_exits]
                        assert not died, f"services exited on their own: {died}"
                        await observer.poll()
                        async with changed:
                            changed.notify_all()
                        await asyncio.sleep(0.05)

                expected_exits: set[str] = set()
                watcher = asyncio.create_task(watch())
                tasks += [asyncio.create_task(scrape_forever()), watcher]
                ledger = Ledger(redis, keys, codec)
                until = asyncio.Event()
                conversations = [
                    ChattingUser(tg, observer, ledger, changed, user, MESSAGES, redeliver_one=(i == 0), timeout_s=90,
                                 until=until)
                    for i, user in enumerate(users)
                ]
                chatting = asyncio.gather(*(c.run() for c in conversations))

                def answered() -> int:
                    return sum(1 for c in conversations for x in c.exchanges if x.outcome)

                def still_chatting() -> None:
                    for task in (watcher, chatting):
                        if task.done():
                            task.result()  # raises what went wrong (a service died, a user gave up)
                    assert not chatting.done(), "the traffic ended before the instances came and went"

                async def at(n: int) -> None:
                    while answered() < n:
                        still_chatting()
                        await asyncio.sleep(0.05)

                async def owns_partitions(name: str, *groups: str) -> None:
                    while not services[name].up:
                        still_chatting()
                        await asyncio.sleep(0.1)
                    phase(f"{name} serves /metrics")
                    while not all(services[name].owned[g] > 0 for g in groups):
                        still_chatting()
                        await asyncio.sleep(0.1)

                await at(USERS)
                phase("adding agent-3")
                add("agent-3", "agent")  # a consumer added mid-run
                await owns_partitions("agent-3", "agent")
                phase(f"agent-3 took {services['agent-3'].owned['agent']} partitions; stopping agent-1")
                agent1_processed = services["agent-1"].processed["agent"]  # its last /metrics before it leaves
                expected_exits.add("agent-1")
                agent1_exit = asyncio.create_task(services["agent-1"].terminate())  # one removed: it drains meanwhile
                await at(answered() + 2 * USERS)
                phase("killing projector-1")
                expected_exits.add("projector-1")
                services["projector-1"].kill()  # crashed: its leases expire, its pending entries are claimed
                await at(answered() + USERS)
                phase("restarting projector-1")
                services["projector-1-restarted"] = services.pop("projector-1")
                services["projector-1-restarted"].name = "projector-1-restarted"
                services["projector-1-restarted"].start()
                await owns_partitions("projector-1-restarted", "readmodel", "postgres")
                phase("projector-1 back")
                await at(answered() + 2 * USERS)  # more traffic on the new arrangement, then the users finish
                until.set()

                await asyncio.wait_for(chatting, 150)
                assert await agent1_exit == 0, services["agent-1"].tail()
                phase("traffic done")
                await caught_up(redis, keys, 60)
                phase("caught up")
                await observer.poll()
                await asyncio.gather(*(s.scrape(http) for s in services.values() if s.alive))

                # -- every message answered exactly once -------------------------------------------
                exchanges = [x for c in conversations for x in c.exchanges]
                expected = len(exchanges)
                assert all(len(c.exchanges) >= MESSAGES for c in conversations)
                # Every plain message completed. A stopped one is cancelled, unless its partition was handed
                # over to another agent while it streamed (see lost_stops): then the /stop is read only after
                # the answer ended, and it completes. Either way: one outcome.
                assert Counter(x.outcome for x in exchanges if x.kind != "stop") == {"completed": expected - USERS}
                stops = [x for x in exchanges if x.kind == "stop"]
                assert len(stops) == USERS and {x.outcome for x in stops} <= {"cancelled", "completed"}
                lost_stops = [(x.user_id, round(x.sent_at - t0, 1)) for x in stops if x.outcome == "completed"]
                assert [x for x in exchanges if len(observer.terminal_outcomes(x.chat_id, x.message_id)) != 1] == []
                mine = {(x.chat_id, x.message_id) for x in exchanges}
                assert {k: n for k, n in observer.received_count.items() if k in mine} == {k: 1 for k in mine}
                redelivered = [c.redelivered for c in conversations if c.redelivered]
                assert len(redelivered) == 1 and observer.received_count[redelivered[0]] == 1

                async with await psycopg.AsyncConnection.connect(database_url) as conn:
                    rows = await (await conn.execute(
                        "select event_id::text, stream, entry_id, type, payload from eventbot.event_log")).fetchall()
                    table_rows = {t: (await (await conn.execute(f"select count(*) from eventbot.{t}")).fetchone())[0]  # noqa: S608
                                  for t in ("messages", "responses", "balance_operations", "payments")}
                terminal = [p for _, _, _, t, p in rows if t in ("response.completed", "response.cancelled", "response.failed")]
                assert Counter(p["response_id"] for p in terminal).most_common(1)[0][1] == 1
                # In Telegram, each answer's final message once (a stopped one: once if it had shown text).
                finals: dict[int, list[float]] = defaultdict(list)
                for call in tg.calls("sendMessage"):
                    text = str(call.params.get("text"))
                    if call.ok and text not in (texts.WELCOME, texts.HELP) and not text.startswith(texts.RECEIPT_OPENING):
                        finals[int(call.params["chat_id"])].append(call.at)
                partial = {p["response_id"]: bool(p.get("partial_text")) for p in terminal if "partial_text" in p}
                started_by_message = {(p["chat_id"], m): p["response_id"] for _, _, _, t, p in rows
                                      if t == "response.started" for m in p["message_ids"]}
                wrong = []
                for c in conversations:
                    for k, x in enumerate(c.exchanges):
                        end = c.exchanges[k + 1].sent_at if k + 1 < len(c.exchanges) else float("inf")
                        sent = sum(1 for t in finals[x.chat_id] if x.sent_at <= t < end)
                        rid = started_by_message[(x.chat_id, x.message_id)]
                        want = 1 if x.outcome == "completed" or partial.get(rid) else 0
                        if sent != want:
                            wrong.append((x.chat_id, x.message_id, x.outcome, sent, want))
                assert wrong == []

                # -- every event archived exactly once -------------------------------------------
                added = 0
                for family in ("conv", "ledger"):
                    for stream in keys.streams(family):
                        added += int((await redis.xinfo_stream(stream))["entries-added"])
                assert len(rows) == added == observer.by_type.total() - observer.by_type["token.streamed"]
                assert len({r[0] for r in rows}) == len(rows)
                assert len({(r[1], r[2]) for r in rows}) == len(rows)
                types = Counter(r[3] for r in rows)
                # A response is started again (another attempt, same response id) when its message was
                # taken over mid-answer; the table holds it once.
                starts = Counter(p["response_id"] for _, _, _, t, p in rows if t == "response.started")
                restarted = sum(1 for n in starts.values() if n > 1)
                assert table_rows["responses"] == len(starts) == expected
                assert table_rows["payments"] == types["payment.received"] == USERS
                assert table_rows["balance_operations"] == sum(n for t, n in types.items() if t.startswith("balance."))
                assert sum((await DeadLetters(redis, keys).count()).values()) == 0
                assert await RejectedUpdates(redis, keys).latest() == [], "updates kept aside by ingest (update id, error)"
                phase("archive checked")

                code, out = await cli(env, "audit", "verify", "--all")
                phase("audit verify done")
                assert code == 0, out
                code, out = await cli(env, "replay", "postgres", "--verify")
                phase("replay verify done")
                assert code == 0, out

                # -- and the work was shared ----------------------------------------------------------
                processed = {name: dict(s.processed) for name, s in services.items()}
                processed["agent-1"] = {"agent": agent1_processed}
                assert all(processed[a].get("agent", 0) > 0 for a in ("agent-1", "agent-2", "agent-3")), f"{processed}"
                for p in ("projector-2", "projector-1-restarted"):
                    assert processed[p].get("readmodel", 0) > 0 and processed[p].get("postgres", 0) > 0, f"{processed}"
                assert all(balancer.ok[port] > 0 for port in ingest_ports), balancer.ok
                consumers = {g: len(await redis.xinfo_consumers(keys.stream("conv", 0), g)) for g in GROUPS}
                print(f"\ncluster e2e: {expected} messages, {len(rows)} events, {time.monotonic() - started:.1f} s; "
                      f"processed per instance {processed}; webhook 200s per ingest {dict(balancer.ok)}; "
                      f"consumers on conv:{{0}} {consumers}; Postgres rows {table_rows}; "
                      f"stops that missed their answer (user, sent at s): {lost_stops}; responses started again: {restarted}")
            except BaseException:
                traceback.print_exc()  # now: a teardown that hangs would hide it behind the timeout
                for s in services.values():
                    print(f"===== {s.name} =====\n{s.tail()}")
                with contextlib.suppress(Exception):
                    unanswered = [(c.user.id, len(c.exchanges), [x.outcome for x in c.exchanges]) for c in conversations
                                  if len(c.exchanges) < MESSAGES or not all(x.outcome for x in c.exchanges)]
                    print(f"users not done: {unanswered}")
                    status = await collect(redis, keys)
                    print("groups:", [(st.stream, g.group, g.pending, g.last_delivered, st.last_entry)
                                      for st in status.streams for g in st.groups])
                raise
            finally:
                phase("tearing down")
                for s in services.values():
                    s.kill()
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await balancer.close()
                await balancer_runner.cleanup()
                phase("balancer closed")
    finally:
        phase("fakes closed")
