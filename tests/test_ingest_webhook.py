"""The webhook: 401 without the secret, 400 on garbage, 200 only after append, retries are one event."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from eventbot.fakes.telegram import FakeTelegram
from eventbot.localservices import free_port
from eventbot.readmodels import reader_for
from eventbot.settings import Settings
from events import MessageReceived
from services.ingest.main import Ingest
from tests.ingest_env import (  # noqa: F401 - fixtures
    ADA,
    fake_tg,
    give_credit,
    ingest_settings,
    of_type,
    read_events,
)

SECRET = "s3cret-token_for-tests"


@pytest.fixture
def settings(namespace: str, fake_tg: FakeTelegram) -> Settings:
    port = free_port()
    return ingest_settings(namespace, fake_tg, telegram_webhook_url=f"http://127.0.0.1:{port}/tg/hook",
                           telegram_webhook_secret=SECRET, webhook_port=port)


@pytest.fixture
async def webhook(settings: Settings, fake_tg: FakeTelegram, redis, keys, codec) -> AsyncIterator[Ingest]:
    app = Ingest.build(settings, redis=redis, read_models=reader_for(redis, settings, codec), codec=codec)
    runner = web.AppRunner(app.webhook_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", settings.webhook_port).start()
    await app.bot.set_webhook(settings.telegram_webhook_url or "", secret_token=SECRET)
    yield app
    await runner.cleanup()
    await app.bot.session.close()


async def test_wrong_or_missing_secret_is_401_and_appends_nothing(fake_tg: FakeTelegram, webhook: Ingest,
                                                                  redis, keys, codec, ledger) -> None:
    await give_credit(ledger, ADA.id, 1_000_000)
    update = fake_tg.send_text(ADA, "let me in", deliver=False)
    assert await fake_tg.post_webhook(update, secret="not-the-secret") == 401
    assert await fake_tg.post_webhook(update, secret=None) == 401
    assert await fake_tg.post_webhook(update, secret=SECRET[:-1]) == 401
    assert of_type(await read_events(redis, keys, codec), MessageReceived) == []
    assert await fake_tg.post_webhook(update) == 200  # the control: the right secret gets in
    assert len(of_type(await read_events(redis, keys, codec), MessageReceived)) == 1


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]", b'{"update_id": "x"}', b"\xff\xfe"])
async def test_malformed_body_is_400_and_appends_nothing(fake_tg: FakeTelegram, webhook: Ingest, redis, keys, codec,
                                                         body: bytes) -> None:
    assert await fake_tg.post_webhook(body=body) == 400
    assert await read_events(redis, keys, codec) == []


async def test_webhook_retry_of_the_same_update_is_one_event(fake_tg: FakeTelegram, webhook: Ingest,
                                                             redis, keys, codec, ledger) -> None:
    await give_credit(ledger, ADA.id, 0)
    update = fake_tg.send_text(ADA, "are you there?", deliver=False)
    assert await fake_tg.post_webhook(update) == 200
    assert await fake_tg.post_webhook(update) == 200  # Telegram retries when our 200 got lost
    received = of_type(await read_events(redis, keys, codec), MessageReceived)
    assert [m.update_id for m in received] == [update["update_id"]]
    assert received[0].disposition == "no_balance"
    assert fake_tg.texts(ADA.id) == ["Your balance is empty, so I can't answer yet. Top up with /pay."]  # told once


async def test_updates_queued_by_telegram_are_delivered_and_confirmed(fake_tg: FakeTelegram, webhook: Ingest,
                                                                      redis, keys, codec, ledger) -> None:
    await give_credit(ledger, ADA.id, 1_000_000)
    sent = [fake_tg.send_text(ADA, f"message {i}") for i in range(5)]
    await fake_tg.wait_for(lambda: not fake_tg.pending_update_ids)
    received = of_type(await read_events(redis, keys, codec), MessageReceived)
    assert [m.update_id for m in received] == [u["update_id"] for u in sent]
    assert {d.status for d in fake_tg.webhook_deliveries} == {200}
