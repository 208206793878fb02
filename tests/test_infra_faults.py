"""Infrastructure faults under chat traffic: Redis crashed and restarted, Postgres cut off, Telegram and Claude failing.

The services run as real processes (as in ``test_chaos``); the faults are done
to what they depend on. After each run everything must still hold: every
message answered exactly once, every event projected once, audit verify
clean, the replay equal. The figures for the README's guarantees table are
printed (``-s`` shows them): acknowledged appends lost per Redis persistence
mode, answers given while Postgres was away.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from eventbot.fakes.anthropic import Fault, FakeAnthropic
from eventbot.fakes.telegram import FakeTelegram
from eventbot.localservices import LocalRedis
from tests.e2e.checks import Report, verify
from tests.e2e.faults import ProbeWriter, TcpProxy
from tests.e2e.system import System
from tests.e2e.traffic import Traffic

SEED = int(os.environ.get("EVENTBOT_CHAOS_SEED", 20261122))
POSTGRES_OUTAGE_S = 30.0
# Each test fails on its own clock, inside the event loop, well before pytest-timeout's
# signal: that one lands in whatever frame runs (a lock holder, a Condition) and can
# leave tasks that never finish cancelling, hanging the whole run at teardown.
BUDGET_S = 360


@asynccontextmanager
async def running(
    tmp: Path, database_url: str, namespace: str, *, appendfsync: str = "everysec", users: int = 4,
    projector_database_url: str | None = None, claude: FakeAnthropic | None = None,
) -> AsyncIterator[tuple[System, Traffic, LocalRedis]]:
    """Redis of our own, the fakes, the three services and users chatting; everything stopped on the way out."""
    redis = LocalRedis(tmp / "redis", appendfsync=appendfsync)
    redis.start()
    system: System | None = None
    traffic: Traffic | None = None
    try:
        async with asyncio.timeout(BUDGET_S), FakeTelegram() as tg, (claude or FakeAnthropic(answer_chars=500, delta_chars=40, delta_delay_s=0.03)) as model:
            system = System(redis.url, database_url, namespace, tmp, tg, model, projector_database_url=projector_database_url)
            system.start_services()
            traffic = Traffic(system, users=users, seed=SEED)
            traffic.start()
            yield system, traffic, redis
    finally:
        if traffic is not None:
            traffic.cancel()
        if system is not None:
            await system.close()
        redis.stop()


async def finish(system: System, traffic: Traffic, **kwargs: object) -> Report:
    errors = await traffic.stop()
    await system.caught_up()
    return await verify(system, traffic, errors, **kwargs)  # type: ignore[arg-type]


def report(name: str, r: Report, system: System) -> None:
    print(f"\n{name} figures:", json.dumps(r.figures, sort_keys=True))
    assert r.problems + r.known_window == [], "\n".join(r.problems + r.known_window) + "\n" + system.logs()


async def wait_answers(traffic: Traffic, n: int, timeout_s: float = 120.0) -> None:
    """Until ``n`` more answers arrived (traffic is flowing again)."""
    target = traffic.answered() + n
    deadline = time.monotonic() + timeout_s
    while traffic.answered() < target:
        assert time.monotonic() < deadline, f"no answers for {timeout_s:.0f}s"
        await asyncio.sleep(0.2)


# -- Redis ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("appendfsync", ["everysec", "always"])
async def test_redis_killed_and_restarted_under_load(tmp_path, database_url, namespace, appendfsync) -> None:
    """kill -9 of redis-server twice under load: what AOF kept of what it acknowledged; services reconnect."""
    rng = random.Random(SEED)
    async with running(tmp_path, database_url, namespace, appendfsync=appendfsync) as (system, traffic, redis):
        probe = ProbeWriter(redis.url, f"{namespace}-probe")
        probe.start()
        try:
            await wait_answers(traffic, 8)
            downtime = []
            for _ in range(2):
                await asyncio.sleep(rng.uniform(2.0, 5.0))
                acked_before = len(probe.acked)
                redis.kill()
                t0 = time.perf_counter()
                await asyncio.sleep(rng.uniform(1.0, 3.0))
                await asyncio.to_thread(redis.start)
                downtime.append(round(time.perf_counter() - t0, 1))
                await wait_answers(traffic, 8)  # the services found Redis again by themselves
                assert len(probe.acked) > acked_before
            await probe.stop()
            lost = await probe.lost()
        finally:
            await probe.close()
        r = await finish(system, traffic)
        r.figures.update(appendfsync=appendfsync, redis_kills=2, redis_downtime_s=downtime,
                         probe_appends_acked=len(probe.acked), probe_acked_lost=lost,
                         unexplained_exits=system.exits(), seed=SEED)
        report(f"redis appendfsync={appendfsync}", r, system)
        # kill -9 of the process (not the host): the kernel still writes what Redis handed it, in both modes.
        assert lost == 0


# -- Postgres ---------------------------------------------------------------------------------


def _through(database_url: str, port: int) -> str:
    """The same database reached on another local port."""
    parts = urlsplit(database_url)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit((parts.scheme, f"{user}127.0.0.1:{port}", parts.path, parts.query, parts.fragment))


@pytest.mark.slow
@pytest.mark.timeout(420)
async def test_postgres_cut_off_for_30s_under_load(tmp_path, database_url, namespace) -> None:
    """The projector's Postgres connections are cut for 30 s: answers keep coming, the projector catches up."""
    target = urlsplit(database_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.start()
    try:
        async with running(tmp_path, database_url, namespace,
                           projector_database_url=_through(database_url, proxy.port)) as (system, traffic, _):
            await wait_answers(traffic, 8)
            proxy.cut()
            cut_at = time.perf_counter()
            await asyncio.sleep(POSTGRES_OUTAGE_S)
            proxy.restore()
            restored_at = time.perf_counter()
            during = traffic.answered_between(cut_at, restored_at)
            await wait_answers(traffic, 8)
            r = await finish(system, traffic)
            r.figures.update(postgres_outage_s=POSTGRES_OUTAGE_S, answered_during_outage=during,
                             unexplained_exits=system.exits(), seed=SEED)
            report("postgres outage", r, system)
            assert during > 0  # the hot path never waits for Postgres
    finally:
        await proxy.stop()


# -- Telegram and Claude --------------------------------------------------------------------------

SEND_METHODS = ("sendMessage", "sendMessageDraft", "editMessageText", "sendChatAction")


async def storms(tg: FakeTelegram, claude: FakeAnthropic, rng: random.Random, rounds: int) -> dict[str, int]:
    """Seeded bursts: Telegram 429s on sends, Claude 529s before the stream, streams dropped or errored midway."""
    done = {"telegram_429_bursts": 0, "claude_529": 0, "claude_drops": 0, "claude_error_events": 0}
    for _ in range(rounds):
        await asyncio.sleep(rng.uniform(0.5, 2.0))
        kind = rng.choice(("flood", "529", "drop", "error"))
        if kind == "flood":
            tg.flood(retry_after=rng.choice((1, 2)), methods=SEND_METHODS, times=rng.randint(5, 30))
            done["telegram_429_bursts"] += 1
        elif kind == "529":
            n = rng.randint(1, 4)
            claude.fail_next(*[Fault("http_529", retry_after_s=1) for _ in range(n)])
            done["claude_529"] += n
        elif kind == "drop":
            claude.fail_next(Fault("drop", after_deltas=rng.randint(0, 6)))
            done["claude_drops"] += 1
        else:
            claude.fail_next(Fault("error_event", after_deltas=rng.randint(0, 6)))
            done["claude_error_events"] += 1
    tg.calm()
    return done


@pytest.mark.slow
@pytest.mark.timeout(420)
async def test_telegram_429_storms_and_claude_529_and_dropped_streams(tmp_path, database_url, namespace) -> None:
    """Answers still arrive, no final message is dropped or doubled, and every charge is what its answer cost."""
    rng = random.Random(SEED)
    claude = FakeAnthropic(answer_chars=500, delta_chars=40, delta_delay_s=0.03)
    async with running(tmp_path, database_url, namespace, claude=claude) as (system, traffic, _):
        await wait_answers(traffic, 4)
        injected = await storms(system.telegram, claude, rng, rounds=30)
        await wait_answers(traffic, 4)
        r = await finish(system, traffic)
        rejected = sum(1 for c in system.telegram.calls() if c.status == 429)
        r.figures.update(injected, telegram_429_answers=rejected, unexplained_exits=system.exits(), seed=SEED)
        report("telegram and claude faults", r, system)
        assert rejected > 0 and r.figures["outcomes"].get("completed", 0) > 0
