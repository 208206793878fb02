"""Operator commands as an operator runs them: doctor, status, dlq."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import anthropic
import pytest
from redis.asyncio import Redis

from eventbot.appender import Appender
from eventbot.consumer import Batch
from eventbot.doctor import check_anthropic, check_model, check_prices
from eventbot.fakes.anthropic import FakeAnthropic
from eventbot.keys import Keys
from eventbot.localservices import LocalRedis, free_port
from eventbot.settings import Settings
from events import EventCodec
from services.agent.pricing import DEFAULT_PRICES
from tests.factories import message
from tests.test_consumer import Recorder, _zero, eventually, make, pending_total, running


def eventbot(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventbot.cli", *args],
        env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, timeout=60,
    )


def test_doctor_names_an_unreachable_redis() -> None:
    result = eventbot("doctor", "--json", env={"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert result.returncode == 1
    report = json.loads(result.stdout)
    [redis] = [c for c in report["checks"] if c["name"] == "redis"]
    assert redis["level"] == "fail" and "unreachable" in redis["detail"] and redis["fix"]


def test_doctor_refuses_an_evicting_memory_policy(tmp_path) -> None:
    server = LocalRedis(tmp_path / "redis", extra_args=("--maxmemory-policy", "allkeys-lru"))
    try:
        result = eventbot("doctor", env={"REDIS_URL": server.start()})
    finally:
        server.stop()
    assert result.returncode == 1
    assert "allkeys-lru can evict stream keys" in result.stdout


def test_doctor_passes_a_sound_redis(tmp_path) -> None:
    server = LocalRedis(tmp_path / "redis")
    try:
        result = eventbot("doctor", "--json", env={"REDIS_URL": server.start()})
    finally:
        server.stop()
    assert result.returncode == 0, result.stdout
    assert json.loads(result.stdout)["ok"] is True


async def test_dlq_retry_redrives_once_to_the_failing_group_only(
    redis: Redis, redis_server_url: str, namespace: str, keys: Keys, codec: EventCodec, appender: Appender
) -> None:
    env = {"REDIS_URL": redis_server_url, "EVENTBOT_NAMESPACE": namespace, "EVENTBOT_PARTITIONS": str(keys.partitions)}
    event = message(12, "needs a fix")
    await appender.append(event)
    fixed = {"yes": False}

    async def broken_until_fixed(batch: Batch) -> None:
        if not fixed["yes"]:
            raise RuntimeError("bug in the handler")

    failing, other = Recorder(broken_until_fixed), Recorder()
    dlq = keys.dead_letters("g", "conv", keys.partition_of("12"))
    async with running(make(redis, keys, codec, failing, "c", max_deliveries=2)):
        await eventually(lambda: redis.xlen(dlq))
    async with running(make(redis, keys, codec, other, "o", group="other")):
        await eventually(lambda: len(other.calls) == 1)

    listed = json.loads(eventbot("dlq", "list", "--json", env=env).stdout)
    assert [(x["group"], x["type"]) for x in listed] == [("g", "message.received")]
    shown = eventbot("dlq", "show", listed[0]["ref"], env=env)
    assert "bug in the handler" in shown.stdout and str(event.event_id) in shown.stdout

    fixed["yes"] = True
    retried = eventbot("dlq", "retry", listed[0]["ref"], "--json", env=env)
    assert retried.returncode == 0
    new_id = json.loads(retried.stdout)["redriven_as"]
    stream = keys.stream("conv", keys.partition_of("12"))

    async def other_group_passed(entry_id: str) -> bool:
        groups = {g["name"].decode(): g for g in await redis.xinfo_groups(stream)}
        return groups["other"]["last-delivered-id"].decode() == entry_id and groups["other"]["pending"] == 0
    assert await redis.xlen(dlq) == 0
    calls_before = len(failing.calls)
    async with running(make(redis, keys, codec, failing, "c2")), running(make(redis, keys, codec, other, "o2", group="other")):
        await eventually(lambda: len(failing.calls) == calls_before + 1)
        await eventually(lambda: _zero(pending_total(redis, keys)))
        await eventually(lambda: other_group_passed(new_id))
    assert failing.calls[-1] == str(event.event_id)
    assert len(failing.applied) == 1
    assert other.calls == [str(event.event_id)], "the group that applied it does not see the re-drive"
    assert json.loads(eventbot("dlq", "list", "--json", env=env).stdout) == []


def test_status_shows_groups_and_dead_letters(redis_server_url: str, namespace: str) -> None:
    env = {"REDIS_URL": redis_server_url, "EVENTBOT_NAMESPACE": namespace, "EVENTBOT_PARTITIONS": "2"}
    result = eventbot("status", "--json", env=env)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["namespace"] == namespace and len(status["streams"]) == 6


async def test_doctor_names_retired_deprecated_unknown_and_unpriced_models() -> None:
    models = ("claude-sonnet-5-5", "claude-sonnet-4-5", "claude-opus-4-1", "claude-nonesuch")
    async with FakeAnthropic() as fake:
        settings = Settings(anthropic_api_key="k", anthropic_base_url=fake.base_url, models=models, default_model=models[0])
        checks = {c.name: c for c in await check_anthropic(settings)}
    assert checks["anthropic"].level == "ok"
    assert checks["anthropic.model.claude-sonnet-5-5"].level == "ok"
    deprecated = checks["anthropic.model.claude-sonnet-4-5"]
    assert deprecated.level == "warn" and "2026-11-30" in deprecated.detail and "EVENTBOT_MODELS" in deprecated.fix
    assert checks["anthropic.model.claude-opus-4-1"].level == "fail" and "retired" in checks["anthropic.model.claude-opus-4-1"].detail
    assert checks["anthropic.model.claude-nonesuch"].level == "fail"
    [prices] = check_prices(settings, DEFAULT_PRICES)
    assert prices.level == "fail" and "claude-sonnet-4-5, claude-opus-4-1, claude-nonesuch" in prices.detail
    [priced] = check_prices(Settings(), DEFAULT_PRICES)
    assert priced.level == "ok"


async def test_doctor_reports_a_failed_model_lookup_without_hiding_the_others() -> None:
    async with FakeAnthropic() as fake:
        # A lookup that times out (a microsecond to answer in).
        async with anthropic.AsyncAnthropic(api_key="k", base_url=fake.base_url, max_retries=0, timeout=0.000001) as slow:
            [failed] = [await check_model(slow, "claude-haiku-4-5")]
        async with anthropic.AsyncAnthropic(api_key="k", base_url=fake.base_url, max_retries=0) as client:
            fine = await check_model(client, "claude-sonnet-5-5")
    assert failed.level == "warn" and "could not look it up" in failed.detail
    assert fine.level == "ok"


async def test_the_fake_refuses_a_retired_model_like_the_api() -> None:
    async with FakeAnthropic() as fake, anthropic.AsyncAnthropic(api_key="k", base_url=fake.base_url, max_retries=0) as client:
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.create(model="claude-opus-4-1", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
