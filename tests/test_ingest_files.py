"""File bytes on demand (eventbot.files): fetched from the Bot API once, cached in Redis with a TTL."""

from __future__ import annotations

import asyncio
import traceback

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession

from eventbot.fakes.telegram import FakeTelegram
from eventbot.files import FileCache, FileTooLarge, FileUnavailable, TelegramFiles
from events import Attachment
from tests.ingest_env import ADA, fake_tg  # noqa: F401 - fixtures


@pytest.fixture
async def bot(fake_tg: FakeTelegram):
    bot = Bot(fake_tg.token, session=AiohttpSession(api=fake_tg.api_server()))
    yield bot
    await bot.session.close()


def attachment_of(update: dict) -> Attachment:
    doc = update["message"]["document"]
    return Attachment(kind="document", file_id=doc["file_id"], file_unique_id=doc["file_unique_id"],
                      size=doc["file_size"])


async def test_bytes_are_fetched_once_and_cached_with_a_ttl(fake_tg: FakeTelegram, bot: Bot, redis, namespace) -> None:
    data = bytes(range(256)) * 400
    file = attachment_of(fake_tg.send_file(ADA, "document", data, name="blob.bin"))
    cache = FileCache(redis, namespace, TelegramFiles(bot), max_bytes=1_000_000, ttl_s=120)
    got = await asyncio.gather(cache.get(file), cache.get(file), cache.get(file))
    assert got == [data, data, data]
    assert len(fake_tg.calls("getFile")) == 1  # concurrent requests share one download
    assert await cache.get(file) == data
    assert len(fake_tg.calls("getFile")) == 1  # then Redis serves it
    assert 0 < await redis.ttl(cache.key(file)) <= 120


async def test_too_large_files_are_refused_before_and_during_download(fake_tg: FakeTelegram, bot: Bot, redis,
                                                                      namespace) -> None:
    cache = FileCache(redis, namespace, TelegramFiles(bot), max_bytes=1_000, ttl_s=60)
    announced = attachment_of(fake_tg.send_file(ADA, "document", b"x" * 2_000))
    with pytest.raises(FileTooLarge):
        await cache.get(announced)
    assert fake_tg.calls("getFile") == []  # refused on the metadata alone
    # Metadata said small, the download is not: cut off at the limit, nothing cached.
    stored = fake_tg.add_file(b"y" * 5_000, size=500)
    liar = Attachment(kind="document", file_id=stored.file_id, file_unique_id=stored.file_unique_id, size=500)
    with pytest.raises(FileTooLarge):
        await cache.get(liar)
    assert await redis.exists(cache.key(liar)) == 0


async def test_unavailable_file_error_does_not_carry_the_token(fake_tg: FakeTelegram, bot: Bot, redis,
                                                               namespace) -> None:
    cache = FileCache(redis, namespace, TelegramFiles(bot), ttl_s=60)
    stored = fake_tg.add_file(b"z" * 10)
    stored.link_expired = True  # getFile answers, the download 404s (its URL holds the token)
    gone = Attachment(kind="document", file_id=stored.file_id, file_unique_id=stored.file_unique_id, size=10)
    with pytest.raises(FileUnavailable) as caught:
        await cache.get(gone)
    rendered = "".join(traceback.format_exception(caught.value))
    assert "ClientResponseError" in rendered and fake_tg.token not in rendered
    with pytest.raises(FileUnavailable):
        await cache.get(Attachment(kind="document", file_id="nope", file_unique_id="nope"))
