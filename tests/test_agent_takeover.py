"""An agent process killed mid-generation; another takes over: one complete answer, one charge.

The first agent is a real process started without DATABASE_URL (it answers a
first message that way, so the agent needs no Postgres), then SIGKILLed while
streaming the second answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventbot.fakes.telegram import TgChat, TgUser
from events import BalanceCharged, BalanceReleased, BalanceReserved
from tests.agent_world import World

ADA = TgUser(id=3001, first_name="Ada")
GROUP = TgChat.group(-3002)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
async def world(redis, redis_server_url, keys, codec, appender, ledger):
    async with World(redis, redis_server_url, keys, codec, appender, ledger) as w:
        yield w


def agent_process(world: World) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("EVENTBOT_")}
    env.update(
        REDIS_URL=world.redis_url, EVENTBOT_NAMESPACE=world.keys.namespace, EVENTBOT_PARTITIONS=str(world.keys.partitions),
        TELEGRAM_BOT_TOKEN=world.telegram.token, TELEGRAM_API_URL=world.telegram.base_url,
        ANTHROPIC_API_KEY="test-key", ANTHROPIC_BASE_URL=world.claude.base_url,
        EVENTBOT_MODELS="claude-haiku-4-5", EVENTBOT_DEFAULT_MODEL="claude-haiku-4-5",
        EVENTBOT_MERGE_WINDOW_MS="0", EVENTBOT_CLAIM_IDLE_MS="1000", EVENTBOT_BLOCK_MS="50",
        EVENTBOT_DRAFT_INTERVAL_MS="50", EVENTBOT_LOG_LEVEL="WARNING", METRICS_PORT="0",
    )
    return subprocess.Popen([sys.executable, "-m", "eventbot.cli", "run", "agent"], cwd=ROOT, env=env)


@contextlib.contextmanager
def agent_killed_at_the_end(world: World) -> Iterator[subprocess.Popen[bytes]]:
    """A real agent process, SIGKILLed when the block ends: no shutdown, its answer in flight left as it is."""
    child = agent_process(world)
    try:
        yield child
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)


@pytest.mark.slow
async def test_killed_agent_is_taken_over_with_one_answer_and_one_charge(world: World) -> None:
    await world.credit(ADA, 10**7)
    with agent_killed_at_the_end(world):
        await world.says(ADA, "first, to a process without DATABASE_URL")
        [first] = await world.wait_events(ADA.id, "response.completed", timeout=60)
        assert world.replies(ADA.id)[0].text == first.text

        # Slow enough (6 s) that the kill lands mid-stream even on a loaded machine.
        world.claude.answer_chars, world.claude.delta_chars, world.claude.delta_delay_s = 900, 30, 0.2
        await world.says(ADA, "second, streamed slowly")
        await world.telegram.wait_for(lambda: len(world.telegram.drafts(ADA.id)) >= 2, timeout=30)
        assert len(world.claude.deltas_of(1)) < 30  # killed mid-generation

    world.claude.delta_delay_s = 0
    await world.start_agent(world.settings(models=("claude-haiku-4-5",), default_model="claude-haiku-4-5"))
    completed = await world.wait_events(ADA.id, "response.completed", 2, timeout=60)
    second = completed[1]
    await asyncio.sleep(0.3)  # anything duplicated would arrive now

    assert [m.text for m in world.replies(ADA.id)] == [first.text, second.text]
    assert len(world.telegram.calls("sendMessage")) == 2
    assert len(second.text) == 900 and len(world.claude.requests) == 3
    started = [e for e in await world.conv_events(ADA.id) if e.type_name() == "response.started"]
    assert [(e.response_id, e.attempt) for e in started[1:]] == [(second.response_id, 1), (second.response_id, 2)]

    ledger = await world.ledger_events(ADA.id)
    holds = [e for e in ledger if isinstance(e, BalanceReserved)]
    charges = [e for e in ledger if isinstance(e, BalanceCharged)]
    assert [c.charge_id for c in charges] == [first.response_id, second.response_id]
    assert [h.hold_id for h in holds] == [first.response_id, second.response_id]
    assert charges[1].amount == second.cost and charges[1].output_tokens == second.usage.output_tokens
    releases = [e for e in ledger if isinstance(e, BalanceReleased) and e.hold_id == second.response_id]
    assert charges[1].hold_settled + sum(r.amount for r in releases) == holds[1].amount
    head = await world.ledger.head(ADA.id)
    assert head.held == 0 and head.balance == 10**7 - charges[0].amount - charges[1].amount


@pytest.mark.slow
async def test_in_a_group_the_takeover_finishes_the_message_the_killed_agent_was_streaming(world: World) -> None:
    """A group's answer streams in a real message: the takeover edits it, the chat never shows a stale half answer."""
    await world.credit(ADA, 10**7)
    world.claude.answer_chars, world.claude.delta_chars, world.claude.delta_delay_s = 900, 30, 0.2
    with agent_killed_at_the_end(world):
        asked = await world.says(ADA, "streamed slowly in a group", chat=GROUP)
        await world.telegram.wait_for(lambda: any(len(m.history) >= 2 for m in world.replies(GROUP.id)), timeout=30)
        [shown] = await world.wait_events(GROUP.id, "response.shown", timeout=10)
        assert len(world.claude.deltas_of(0)) < 30  # killed mid-generation
    [streaming] = world.replies(GROUP.id)
    assert shown.telegram_message_id == streaming.message_id and shown.index == 0
    assert 0 < len(streaming.text) < 900  # what the chat showed when the agent died: half an answer

    world.claude.delta_delay_s = 0
    await world.start_agent(world.settings(models=("claude-haiku-4-5",), default_model="claude-haiku-4-5"))
    [completed] = await world.wait_events(GROUP.id, "response.completed", timeout=60)
    await asyncio.sleep(0.3)  # anything duplicated would arrive now

    [message] = world.replies(GROUP.id)  # the same message, now the whole answer: nothing else in the chat
    assert message.message_id == streaming.message_id and message.reply_to_message_id == asked.message_id
    assert message.text == completed.text and len(completed.text) == 900
    assert completed.telegram_message_ids == (streaming.message_id,)
    assert len(world.telegram.calls("sendMessage")) == 1 and len(world.claude.requests) == 2
    charges = [e for e in await world.ledger_events(ADA.id) if isinstance(e, BalanceCharged)]
    assert [c.charge_id for c in charges] == [completed.response_id]


async def test_failing_after_the_answer_was_recorded_settles_without_answering_again(world: World, monkeypatch) -> None:
    """The window between response.completed and the charge: a retry must only settle."""
    from services.agent.billing import Billing

    settle = Billing.settle
    failures = []

    async def settle_fails_once(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not failures:
            failures.append(1)
            raise ConnectionResetError("redis went away right after the answer was recorded")
        return await settle(self, *args, **kwargs)

    monkeypatch.setattr(Billing, "settle", settle_fails_once)
    await world.credit(ADA, 10**7)
    await world.start_agent(world.settings(models=("claude-haiku-4-5",), default_model="claude-haiku-4-5"))
    await world.says(ADA, "once please")
    [completed] = await world.wait_events(ADA.id, "response.completed")

    async def charged() -> list[BalanceCharged]:
        return [e for e in await world.ledger_events(ADA.id) if isinstance(e, BalanceCharged)]

    for _ in range(200):
        if await charged():
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    assert failures and [c.charge_id for c in await charged()] == [completed.response_id]
    assert len(world.claude.requests) == 1 and [m.text for m in world.replies(ADA.id)] == [completed.text]
    assert (await world.ledger.head(ADA.id)).held == 0
