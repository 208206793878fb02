"""``run_ingest``: the process entry point, in polling and webhook mode, stopping on cancellation."""

from __future__ import annotations

import asyncio

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession

from eventbot.fakes.telegram import FakeTelegram
from eventbot.localservices import free_port
from events import MessageReceived
from services.ingest.main import run_ingest, until_telegram_answers
from tests.ingest_env import ADA, fake_tg, give_credit, ingest_settings, of_type, read_events  # noqa: F401


async def run_until_answered(settings, fake: FakeTelegram, redis, keys, codec) -> list[MessageReceived]:
    ready = asyncio.Event()
    # No read_models passed: run_ingest builds the projector's Redis reader itself.
    task = asyncio.create_task(run_ingest(settings, redis=redis, ready=ready))
    await asyncio.wait_for(ready.wait(), 10)
    update = fake.send_text(ADA, "through the entry point")
    await fake.wait_for(lambda: update["update_id"] not in fake.pending_update_ids, timeout=10)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()  # stops on cancellation, without an error of its own
    assert await redis.ping()  # a client passed in stays open: it is the caller's
    return of_type(await read_events(redis, keys, codec), MessageReceived)


async def test_run_ingest_polls_when_no_webhook_is_configured(fake_tg: FakeTelegram, namespace, redis, keys, codec,
                                                              ledger) -> None:
    await give_credit(ledger, ADA.id, 1_000_000)
    received = await run_until_answered(ingest_settings(namespace, fake_tg), fake_tg, redis, keys, codec)
    assert [m.text for m in received] == ["through the entry point"]
    assert fake_tg.commands  # setMyCommands at start
    assert fake_tg.calls("deleteWebhook") and fake_tg.calls("getUpdates")


async def test_run_ingest_serves_the_webhook_when_configured(fake_tg: FakeTelegram, namespace, redis, keys, codec,
                                                             ledger) -> None:
    await give_credit(ledger, ADA.id, 1_000_000)
    port = free_port()
    settings = ingest_settings(namespace, fake_tg, telegram_webhook_url=f"http://127.0.0.1:{port}/telegram",
                               telegram_webhook_secret="hook-secret", webhook_port=port)
    received = await run_until_answered(settings, fake_tg, redis, keys, codec)
    assert [m.text for m in received] == ["through the entry point"]
    assert fake_tg.webhook_secret == "hook-secret"
    assert [d.status for d in fake_tg.webhook_deliveries] == [200]
    assert fake_tg.calls("getUpdates") == []


async def test_start_up_calls_wait_for_telegram(fake_tg: FakeTelegram) -> None:
    bot = Bot(fake_tg.token, session=AiohttpSession(api=fake_tg.api_server()))
    fake_tg.flood(1, methods=["deleteWebhook"], times=1)  # busy once, then fine
    try:
        assert await until_telegram_answers(lambda: bot.delete_webhook()) is True
    finally:
        await bot.session.close()
    assert [c.status for c in fake_tg.calls("deleteWebhook")] == [429, 200]
