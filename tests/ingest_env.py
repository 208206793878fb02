"""Shared pieces of the ingest tests: the fake Telegram, an ingest wired to it, reading the log back.

Test modules import the fixtures they use by name.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from eventbot.fakes.telegram import FakeTelegram, TgChat, TgUser
from eventbot.ids import new_event_id
from eventbot.keys import Keys
from eventbot.ledger import Ledger
from eventbot.settings import Settings
from eventbot.readmodels import reader_for
from events import BalanceCredited, Event, EventCodec, user_key
from services.ingest.main import Ingest
from services.ingest.polling import Poller

ADMIN = TgUser(1, first_name="Root", username="root")
ADA = TgUser(1001, first_name="Ada", username="ada")
BOB = TgUser(1002, first_name="Bob", username="bob")
GROUP = TgChat.group(-1001234567890, "Readers")
FORUM = TgChat.group(-1009876543210, "Forum", forum=True)


async def read_events(redis: Redis, keys: Keys, codec: EventCodec, family: str = "conv") -> list[Event]:
    """Every event of a family, stream by stream in entry order."""
    out: list[Event] = []
    for stream in keys.streams(family):  # type: ignore[arg-type]
        for _, fields in await redis.xrange(stream):
            out.append(codec.decode(fields[b"t"].decode(), int(fields[b"v"]), fields[b"d"]))
    return out


def of_type(events: list[Event], cls: type) -> list:  # type: ignore[type-arg]
    return [e for e in events if isinstance(e, cls)]


def ingest_settings(namespace: str, fake: FakeTelegram, **overrides: object) -> Settings:
    base = Settings(
        namespace=namespace, partitions=4, telegram_bot_token=fake.token, telegram_api_url=fake.base_url,
        admin_ids=frozenset({ADMIN.id}), rate_limit_per_minute=20,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


@pytest.fixture
async def fake_tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


@pytest.fixture
def settings(namespace: str, fake_tg: FakeTelegram) -> Settings:
    return ingest_settings(namespace, fake_tg)


@pytest.fixture
async def ingest(settings: Settings, redis: Redis, keys: Keys, codec: EventCodec) -> AsyncIterator[Ingest]:
    app = Ingest.build(settings, redis=redis, read_models=reader_for(redis, settings, codec), codec=codec)
    yield app
    await app.bot.session.close()


async def drain(poller: Poller, fake: FakeTelegram) -> None:
    """Poll until Telegram holds nothing unconfirmed (the last poll confirms the last batch)."""
    for _ in range(50):
        if not await poller.poll_once(timeout_s=0) and not fake.pending_update_ids:
            return
    raise AssertionError(f"updates still pending: {fake.pending_update_ids}")


async def give_credit(ledger: Ledger, user_id: int, amount: int) -> None:
    """Put money on a user's ledger the way a promo credit does."""
    credit = BalanceCredited(event_id=new_event_id(), occurred_at=datetime.now(UTC), partition_key=user_key(user_id),
                             user_id=user_id, amount=amount, source="promo", reference="test")
    await ledger.transact(user_id, lambda head: [credit])


@contextlib.asynccontextmanager
async def polling(app: Ingest) -> AsyncIterator[Poller]:
    """The bot polling in the background, as in production (needed where Telegram waits for an answer)."""
    poller = app.poller(timeout_s=1)
    task = asyncio.create_task(poller.run())
    try:
        yield poller
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def settled(fake: FakeTelegram, timeout: float = 10.0) -> None:
    """Wait until Telegram holds no unconfirmed update (everything was recorded)."""
    await fake.wait_for(lambda: not fake.pending_update_ids, timeout)
