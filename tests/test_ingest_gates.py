"""What stops a message short of an answer: no balance, too many messages, too large a file."""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from eventbot.fakes.telegram import FakeTelegram
from eventbot.readmodels import reader_for
from events import FileRefused, FileUploaded, MessageReceived
from services.ingest.main import Ingest
from tests.ingest_env import (  # noqa: F401 - fixtures
    ADA,
    BOB,
    drain,
    fake_tg,
    give_credit,
    ingest_settings,
    of_type,
    read_events,
)


@pytest.fixture
async def strict(fake_tg: FakeTelegram, namespace: str, redis, keys, codec) -> AsyncIterator[Ingest]:
    """Ingest with a small rate limit and file limit, and a Postgres it must never reach."""
    settings = ingest_settings(namespace, fake_tg, rate_limit_per_minute=3, max_file_bytes=10_000,
                               database_url="postgresql://nobody@127.0.0.1:1/unreachable")
    app = Ingest.build(settings, redis=redis, read_models=reader_for(redis, settings, codec), codec=codec)
    yield app
    await app.bot.session.close()


async def test_balance_gate_stops_a_user_at_zero_without_postgres(fake_tg: FakeTelegram, strict: Ingest, redis,
                                                                  keys, codec, ledger) -> None:
    fake_tg.send_text(ADA, "hello?")
    fake_tg.send_text(ADA, "hello??")
    await drain(strict.poller(), fake_tg)
    received = of_type(await read_events(redis, keys, codec), MessageReceived)
    assert [(m.text, m.disposition) for m in received] == [("hello?", "no_balance"), ("hello??", "no_balance")]
    assert fake_tg.texts(ADA.id) == ["Your balance is empty, so I can't answer yet. Top up with /pay."]

    await give_credit(ledger, ADA.id, 1)  # one micro-dollar is above zero
    fake_tg.send_text(ADA, "now?")
    await drain(strict.poller(), fake_tg)
    received = of_type(await read_events(redis, keys, codec), MessageReceived)
    assert received[-1].disposition == "answer"


def test_ingest_has_no_way_to_reach_postgres() -> None:
    """The hot path is Redis only: no module of the service imports a Postgres driver."""
    root = Path(__file__).parent.parent / "services" / "ingest"
    imported = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
    assert "aiogram" in imported  # the walk sees the imports
    assert not imported & {"psycopg", "psycopg2", "asyncpg", "sqlalchemy"}


async def test_rate_limit_tells_once_and_records_every_message(fake_tg: FakeTelegram, strict: Ingest, redis, keys,
                                                               codec, ledger) -> None:
    await give_credit(ledger, ADA.id, 1_000_000)
    await give_credit(ledger, BOB.id, 1_000_000)
    for i in range(6):
        fake_tg.send_text(ADA, f"spam {i}")
    fake_tg.send_text(BOB, "just one")
    await drain(strict.poller(), fake_tg)
    received = of_type(await read_events(redis, keys, codec), MessageReceived)
    ada = [m.disposition for m in sorted(received, key=lambda m: m.message_id) if m.user_id == ADA.id]
    assert ada == ["answer"] * 3 + ["rate_limited"] * 3
    assert [m.disposition for m in received if m.user_id == BOB.id] == ["answer"]  # per user
    assert fake_tg.texts(ADA.id) == ["You're sending messages faster than I can answer. Please wait a minute."]


async def test_rate_limit_counts_a_redelivered_update_once(fake_tg: FakeTelegram, strict: Ingest, redis, keys,
                                                           codec, ledger) -> None:
    await give_credit(ledger, ADA.id, 1_000_000)
    for i in range(3):
        fake_tg.send_text(ADA, f"message {i}")
    for _ in range(3):  # three crashed pollers: the same three updates, three times
        await strict.poller().poll_once(timeout_s=0)
    await drain(strict.poller(), fake_tg)
    received = of_type(await read_events(redis, keys, codec), MessageReceived)
    assert [m.disposition for m in received] == ["answer"] * 3


async def test_file_over_the_limit_is_refused_with_a_reply_and_recorded(fake_tg: FakeTelegram, strict: Ingest,
                                                                        redis, keys, codec, ledger) -> None:
    await give_credit(ledger, ADA.id, 1_000_000)
    big = fake_tg.send_file(ADA, "document", b"x" * 10_001, name="huge.bin", caption="read this")
    small = fake_tg.send_file(ADA, "document", b"x" * 10_000, name="fine.txt")
    claimed = fake_tg.send_file(ADA, "video", b"tiny", size=50 * 1024 * 1024)  # Telegram says 50 MB
    await drain(strict.poller(), fake_tg)

    events = await read_events(redis, keys, codec)
    refused = {e.message_id: e for e in of_type(events, FileRefused)}
    uploaded = {e.message_id: e for e in of_type(events, FileUploaded)}
    received = {m.message_id: m for m in of_type(events, MessageReceived)}
    big_id, small_id, claimed_id = (u["message"]["message_id"] for u in (big, small, claimed))
    assert set(refused) == {big_id, claimed_id} and set(uploaded) == {small_id}
    assert (refused[big_id].reason, refused[big_id].limit_bytes, refused[big_id].file.size) == ("too_large", 10_000,
                                                                                             10_001)
    assert received[big_id].disposition == "too_large" and received[big_id].caption == "read this"
    assert received[claimed_id].disposition == "too_large"
    assert received[small_id].disposition == "answer"
    assert fake_tg.texts(ADA.id) == ["huge.bin is too large: I can read files up to 10 KB.",
                                     "This file is too large: I can read files up to 10 KB."]
