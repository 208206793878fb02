"""Process faults: ingest, agent and projector SIGKILLed at random moments under steady chat traffic.

Each service is a real ``eventbot run`` process against a Redis (AOF) and a
Postgres of the test's own, with the fake Bot API and the fake Claude in the
test process. Simulated users top up (Stars or an admin's /topup) and chat
while a seeded schedule kills a random service with SIGKILL and starts it
again, at least 50 times. Then traffic stops, everything catches up, and the
claims are checked from outside: every message answered exactly once (one
terminal response, one final message in Telegram), every event projected once
(``event_log`` = entries ever appended), money exact (audit verify, one charge
per response equal to its cost, no hold left), the replay equal to the live
projection.

Any lost event, lost or unexplained duplicate answer, money discrepancy or
replay difference fails the test. One thing is reported as an expected failure,
with the messages named: a final message that Telegram accepted while its agent
was being killed, before the terminal event was appended, is sent again by the
agent that takes the message over (the Bot API has no idempotent send). It counts
as this only with that signature: an agent killed within a second of the arrival
of a final message it was sending, and the next send (the takeover's answer,
generated again) after the kill; any other duplicate fails the test.

The seed is printed; set EVENTBOT_CHAOS_SEED to replay a schedule, and
EVENTBOT_CHAOS_KILLS to change the number of kills.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter

import pytest

from eventbot.fakes.anthropic import FakeAnthropic
from eventbot.fakes.telegram import FakeTelegram
from eventbot.localservices import LocalRedis
from tests.e2e.checks import verify
from tests.e2e.system import SERVICES, System
from tests.e2e.traffic import Traffic

DEFAULT_SEED = 20261122
DEFAULT_KILLS = 60  # the issue asks for at least 50 across a run
# The test fails on its own clock, inside the event loop, before pytest-timeout's signal
# (which lands in any frame, can leave tasks that never finish cancelling, and hang the run).
# A restart waits until the new process serves; on a slow boot of a loaded 2-core machine
# 60 of them have taken over 540 s.
BUDGET_S = 840
# Agents hold answers in flight, so they are the likeliest to leave something half done.
WEIGHTS = {"ingest": 3, "agent": 4, "projector": 3}


def chaos_seed() -> int:
    return int(os.environ.get("EVENTBOT_CHAOS_SEED", DEFAULT_SEED))


async def kill_at_random(
    system: System, rng: random.Random, kills: int, gap_s: tuple[float, float], done: Counter[str], restarts_s: list[float],
) -> None:
    """``kills`` SIGKILLs, each of a service drawn by ``WEIGHTS`` after a random pause; each restarted at once.

    The pause counts from the moment the last restarted process serves again: on
    a loaded 2-core machine a start takes seconds, and kills faster than that
    would test only the start-up. ``done`` and ``restarts_s`` fill as it goes (a budget
    running out can say how far it got).
    """
    for _ in range(kills):
        await asyncio.sleep(rng.uniform(*gap_s))
        name = rng.choices(SERVICES, weights=[WEIGHTS[s] for s in SERVICES])[0]
        system.ensure_running()
        started = time.monotonic()
        await asyncio.to_thread(system.restart, name)
        restarts_s.append(time.monotonic() - started)
        done[name] += 1


async def measure_loop_lag(late_s: list[float], period_s: float = 0.01) -> None:
    """How late this event loop wakes up, every ``period_s``: the fake Bot API answers the
    agents on it, so while it lags an agent's final send waits there, unanswered."""
    while True:
        due = time.perf_counter() + period_s
        await asyncio.sleep(period_s)
        late_s.append(time.perf_counter() - due)


def _ms(sorted_s: list[float], q: float) -> float:
    return round(sorted_s[min(len(sorted_s) - 1, int(q * len(sorted_s)))] * 1000, 1) if sorted_s else 0.0


@pytest.mark.slow
@pytest.mark.timeout(BUDGET_S + 60)
async def test_services_killed_at_random_lose_and_duplicate_nothing(tmp_path, database_url, namespace) -> None:
    seed = chaos_seed()
    kills = int(os.environ.get("EVENTBOT_CHAOS_KILLS", DEFAULT_KILLS))
    print(f"\nchaos seed {seed} (EVENTBOT_CHAOS_SEED={seed} replays this schedule), {kills} kills")
    rng = random.Random(seed)
    redis = LocalRedis(tmp_path / "redis", appendfsync="everysec")
    redis.start()
    system: System | None = None
    traffic: Traffic | None = None
    killed: Counter[str] = Counter()
    restarts_s: list[float] = []
    phase = "starting"
    try:
        async with asyncio.timeout(BUDGET_S), FakeTelegram() as tg, \
                FakeAnthropic(answer_chars=500, delta_chars=40, delta_delay_s=0.03) as claude:
            system = System(redis.url, database_url, namespace, tmp_path, tg, claude)
            system.start_services()
            traffic = Traffic(system, users=6, seed=seed)
            traffic.start()
            started = time.monotonic()
            late_s: list[float] = []
            lag_probe = asyncio.create_task(measure_loop_lag(late_s))
            try:
                phase = "killing"
                await kill_at_random(system, rng, kills, (0.5, 3.0), killed, restarts_s)
            finally:
                lag_probe.cancel()
            phase = "stopping traffic"
            errors = await traffic.stop()
            phase = "catching up"
            await system.caught_up()
            phase = "verifying"
            report = await verify(system, traffic, errors)
            report.figures.update(
                seed=seed, kills=sum(killed.values()), kills_by_service=dict(killed),
                unexplained_exits=system.exits(), pay_retries=sum(c.pay_retries for c in traffic.conversations),
                traffic_seconds=round(time.monotonic() - started),
                restart_s={"p50": round(sorted(restarts_s)[len(restarts_s) // 2], 2), "max": round(max(restarts_s), 2)},
                model_requests=len(claude.requests),
                test_loop_late_ms={"p50": _ms(sorted(late_s), 0.5), "p99": _ms(sorted(late_s), 0.99),
                                   "max": _ms(sorted(late_s), 1.0)},
            )
            print("chaos figures:", json.dumps(report.figures, sort_keys=True))
            assert sum(killed.values()) == kills
            assert report.figures["messages"] > kills  # traffic kept flowing between the kills
            assert report.problems == [], "\n".join(report.problems) + "\n" + system.logs()
            if report.known_window:
                # Everything else held; what remains is the Bot API's non-idempotent send, named here.
                lag = report.figures["test_loop_late_ms"]
                pytest.xfail(f"(test loop late p99 {lag['p99']} ms, max {lag['max']} ms) " + "; ".join(report.known_window)[:3000])
    except TimeoutError as e:
        raise AssertionError(
            f"time budget of {BUDGET_S}s spent while {phase}, after {sum(killed.values())} of {kills} kills"
            f" (restarts took {sum(restarts_s):.0f}s in all, the longest {max(restarts_s, default=0):.1f}s)"
        ) from e
    finally:
        if traffic is not None:
            traffic.cancel()
        if system is not None:
            await system.close()
        redis.stop()
