"""The fake Bot API server behaves like Telegram where a bot must cope with it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.exceptions import TelegramBadRequest, TelegramConflictError, TelegramRetryAfter
from aiogram.methods import GetUpdates, SendMessageDraft
from aiogram.types import BotCommand, LabeledPrice
from aiohttp import web

from eventbot.fakes.telegram import SECRET_HEADER, FakeTelegram, TgChat, TgUser
from eventbot.localservices import free_port

ADA = TgUser(1001, username="ada")
GROUP = TgChat.group(-1001234567890)


@pytest.fixture
async def fake():
    async with FakeTelegram() as fake:
        yield fake


@pytest.fixture
async def bot(fake: FakeTelegram):
    bot = Bot(fake.token, session=AiohttpSession(api=fake.api_server()))
    yield bot
    await bot.session.close()


async def test_envelope_json_and_form_bodies_and_wrong_token(fake: FakeTelegram) -> None:
    fake.send_text(ADA, "hi")  # the chat must exist for sendMessage
    async with aiohttp.ClientSession() as http:
        url = f"{fake.base_url}/bot{fake.token}"
        async with http.post(f"{url}/sendMessage", json={"chat_id": ADA.id, "text": "as json"}) as r:
            body = await r.json()
            assert r.status == 200 and body["ok"] is True and body["result"]["text"] == "as json"
        async with http.post(f"{url}/sendMessage", data={"chat_id": str(ADA.id), "text": "as form"}) as r:
            assert (await r.json())["result"]["chat"]["id"] == ADA.id
        form = aiohttp.FormData()
        form.add_field("chat_id", str(ADA.id))
        form.add_field("text", "as multipart")
        form.add_field("blob", b"bytes", filename="x.bin")  # forces multipart/form-data
        async with http.post(f"{url}/sendMessage", data=form) as r:
            assert r.status == 200
        async with http.post(f"{fake.base_url}/bot1:wrong/getMe") as r:
            assert r.status == 401 and await r.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}
        async with http.post(f"{url}/noSuchMethod") as r:
            assert r.status == 404 and (await r.json())["ok"] is False
    assert fake.texts(ADA.id) == ["as json", "as form", "as multipart"]


async def test_limits_real_telegram_enforces(fake: FakeTelegram, bot: Bot) -> None:
    fake.send_text(ADA, "hi")
    with pytest.raises(TelegramBadRequest, match="message is too long"):
        await bot.send_message(ADA.id, "x" * 4097)
    sent = await bot.send_message(ADA.id, "é" * 4096)  # 4096 characters is fine
    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await bot.edit_message_text("é" * 4096, chat_id=ADA.id, message_id=sent.message_id)
    await bot.edit_message_text("shorter", chat_id=ADA.id, message_id=sent.message_id)
    # Markup is counted after parsing: tags don't count against the limit.
    await bot.send_message(ADA.id, "<b>" + "y" * 4096 + "</b>", parse_mode="HTML")
    with pytest.raises(TelegramBadRequest, match="text is empty"):
        await bot.send_message(ADA.id, "   ")
    with pytest.raises(TelegramBadRequest, match="chat not found"):
        await bot.send_message(999, "who?")
    assert fake.messages(ADA.id)[0].history == ["é" * 4096, "shorter"]
    assert [c.params["text"] for c in fake.edits(ADA.id)] == ["shorter"]


async def test_flood_mode_answers_429_with_retry_after(fake: FakeTelegram, bot: Bot) -> None:
    fake.send_text(ADA, "hi")
    fake.flood(3, methods=["sendMessage"], times=2)
    for _ in range(2):
        with pytest.raises(TelegramRetryAfter) as caught:
            await bot.send_message(ADA.id, "hello")
        assert caught.value.retry_after == 3
    await bot.send_message(ADA.id, "hello")
    assert [c.status for c in fake.calls("sendMessage")] == [429, 429, 200]
    assert fake.calls("sendMessage")[0].error == "Too Many Requests: retry after 3"


async def test_drafts_only_in_private_chats_and_recorded(fake: FakeTelegram, bot: Bot) -> None:
    fake.send_text(ADA, "hi")
    fake.send_text(ADA, "hi all", chat=GROUP)
    await bot(SendMessageDraft(chat_id=ADA.id, draft_id=7, text="Thinking"))
    await bot(SendMessageDraft(chat_id=ADA.id, draft_id=7, text="Thinking harder"))
    with pytest.raises(TelegramBadRequest):
        await bot(SendMessageDraft(chat_id=GROUP.id, draft_id=7, text="nope"))
    assert [(d.draft_id, d.text) for d in fake.drafts(ADA.id)] == [(7, "Thinking"), (7, "Thinking harder")]
    assert fake.drafts(ADA.id)[0].at <= fake.drafts(ADA.id)[1].at <= time.perf_counter()


async def test_long_polling_waits_then_confirms_by_offset(fake: FakeTelegram, bot: Bot) -> None:
    started = time.perf_counter()
    assert await bot(GetUpdates(timeout=1)) == []
    assert time.perf_counter() - started >= 0.9  # held the request open, then gave up

    poll = asyncio.create_task(bot(GetUpdates(timeout=10)))
    await asyncio.sleep(0.1)
    update = fake.send_text(ADA, "wake up")
    got = await asyncio.wait_for(poll, 2)  # answered as soon as the update arrived
    assert [u.update_id for u in got] == [update["update_id"]]
    # Not confirmed yet: asked again, it comes again.
    assert [u.update_id for u in await bot(GetUpdates(timeout=0))] == [update["update_id"]]
    assert await bot(GetUpdates(offset=update["update_id"] + 1, timeout=0)) == []
    assert fake.pending_update_ids == [] and fake.confirmed_offset == update["update_id"] + 1


async def test_files_download_and_size_limit(fake: FakeTelegram, bot: Bot) -> None:
    update = fake.send_file(ADA, "photo", b"\xff\xd8jpeg" * 100)
    biggest = update["message"]["photo"][-1]
    info = await bot.get_file(biggest["file_id"])
    assert (await bot.download_file(info.file_path)).read() == b"\xff\xd8jpeg" * 100
    huge = fake.send_file(ADA, "video", b"tiny", size=21 * 1024 * 1024)
    with pytest.raises(TelegramBadRequest, match="file is too big"):
        await bot.get_file(huge["message"]["video"]["file_id"])


@contextlib.asynccontextmanager
async def hook_server(hook: Callable[[web.Request], Awaitable[web.Response]]) -> AsyncIterator[str]:
    """A webhook endpoint on loopback that answers with ``hook``; yields its URL."""
    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        await runner.cleanup()


async def test_webhook_delivery_with_secret_retried_until_200(fake: FakeTelegram, bot: Bot) -> None:
    seen: list[tuple[str | None, int]] = []
    answers = iter([503, 500, 200, 200])

    async def hook(request: web.Request) -> web.Response:
        seen.append((request.headers.get(SECRET_HEADER), (await request.json())["update_id"]))
        return web.Response(status=next(answers))

    async with hook_server(hook) as url:
        with pytest.raises(TelegramBadRequest, match="loopback"):
            await bot.set_webhook("https://example.com/hook")  # the fake never leaves the machine
        await bot.set_webhook(url, secret_token="abc")
        with pytest.raises(TelegramConflictError):
            await bot(GetUpdates(timeout=0))  # as Telegram: no polling while a webhook is set
        first, second = fake.send_text(ADA, "one"), fake.send_text(ADA, "two")
        await fake.wait_for(lambda: not fake.pending_update_ids)
        await bot.delete_webhook()
    ids = [first["update_id"]] * 3 + [second["update_id"]]
    assert seen == [("abc", i) for i in ids]
    assert [d.status for d in fake.webhook_deliveries] == [503, 500, 200, 200]


async def test_whereabouts_tells_which_update_holds_the_queue(fake: FakeTelegram, bot: Bot) -> None:
    """What a test that waited too long prints: confirmed, or pending behind which update, answered how."""
    down = True

    async def hook(request: web.Request) -> web.Response:
        return web.Response(status=503 if down else 200)

    async with hook_server(hook) as url:
        await bot.set_webhook(url)
        first, second = fake.send_text(ADA, "one")["update_id"], fake.send_text(ADA, "two")["update_id"]
        await fake.wait_for(lambda: len(fake.webhook_deliveries) >= 2)
        assert fake.whereabouts(second) == (
            f"update {second} still with Telegram, 2 of 2 pending behind update {first} "
            f"(webhook answers {{503: {len(fake.webhook_deliveries)}}}); webhook answers {{}}")
        down = False
        await fake.wait_for(lambda: not fake.pending_update_ids)
        assert fake.whereabouts(second) == f"update {second} confirmed by the bot; webhook answers {{200: 1}}"
        await bot.delete_webhook()
    polled = fake.send_text(ADA, "three")["update_id"]
    assert fake.whereabouts(polled).startswith(f"update {polled} still with Telegram, 1 of 1 pending; polled, offset")


async def test_payments_and_commands(fake: FakeTelegram, bot: Bot) -> None:
    fake.send_text(ADA, "hi")
    await bot.set_my_commands([BotCommand(command="help", description="Help")])
    assert fake.commands['{"type": "default"}'] == [{"command": "help", "description": "Help"}]
    with pytest.raises(TelegramBadRequest, match="exactly one price"):
        await bot.send_invoice(ADA.id, "t", "d", "payload", currency="XTR",
                               prices=[LabeledPrice(label="a", amount=1), LabeledPrice(label="b", amount=2)])
    await bot.send_invoice(ADA.id, "t", "d", "payload-1", currency="XTR", prices=[LabeledPrice(label="a", amount=5)])
    invoice = fake.invoices(ADA.id)[0]
    assert (invoice.invoice.payload, invoice.invoice.total_amount) == ("payload-1", 5)
    update = fake.pre_checkout(ADA, payload="payload-1", stars=5)
    await bot.answer_pre_checkout_query(update["pre_checkout_query"]["id"], ok=True)
    with pytest.raises(TelegramBadRequest, match="QUERY_ID_INVALID"):  # answered once only
        await bot.answer_pre_checkout_query(update["pre_checkout_query"]["id"], ok=True)
    paid = fake.successful_payment(ADA, payload="payload-1", stars=5)
    charge = paid["message"]["successful_payment"]["telegram_payment_charge_id"]
    with pytest.raises(TelegramBadRequest, match="CHARGE_NOT_FOUND"):
        await bot.refund_star_payment(user_id=42, telegram_payment_charge_id=charge)
    assert await bot.refund_star_payment(user_id=ADA.id, telegram_payment_charge_id=charge)
    with pytest.raises(TelegramBadRequest, match="CHARGE_ALREADY_REFUNDED"):
        await bot.refund_star_payment(user_id=ADA.id, telegram_payment_charge_id=charge)
