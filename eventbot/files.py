"""File bytes on demand: fetched from Telegram by whoever needs them, cached in Redis.

Ingest records only a file's metadata (``file.uploaded``); the agent calls
:meth:`FileCache.get` when a request needs the bytes. Files over the limit (20 MB,
what the public Bot API serves) are refused before any download, and a download
that turns out longer than announced is cut off at the limit. Cached bytes expire
after a TTL; Telegram keeps the original.
"""

from __future__ import annotations

import asyncio
import io
from typing import Protocol

import aiohttp
from aiogram import Bot
from aiogram.exceptions import TelegramAPIError
from redis.asyncio import Redis

from eventbot.errors import EventbotError, StoreUnavailable
from eventbot.redisclient import STORE_DOWN
from events import Attachment

DEFAULT_MAX_BYTES = 20 * 1024 * 1024


class FileTooLarge(EventbotError):
    def __init__(self, size: int | None, limit: int) -> None:
        super().__init__(f"file of {size if size is not None else 'more than ' + str(limit)} bytes exceeds {limit}")
        self.size = size
        self.limit = limit


class FileUnavailable(EventbotError):
    """Telegram could not give us the file (expired id, deleted, network)."""


class FileSource(Protocol):
    async def fetch(self, file_id: str, limit: int) -> bytes:
        """The file's bytes; raise FileTooLarge past ``limit``, FileUnavailable if it can't be had."""
        ...


class TelegramFiles:
    """Downloads through the Bot API (``getFile``, then ``/file/bot<token>/<path>``)."""

    def __init__(self, bot: Bot, *, timeout_s: int = 60) -> None:
        self.bot = bot
        self.timeout_s = timeout_s

    async def fetch(self, file_id: str, limit: int) -> bytes:
        try:
            info = await self.bot.get_file(file_id)
            if info.file_size is not None and info.file_size > limit:
                raise FileTooLarge(info.file_size, limit)
            if info.file_path is None:
                raise FileUnavailable("Telegram gave no file path")
            if self.bot.session.api.is_local:
                buf = await self.bot.download_file(info.file_path, io.BytesIO(), timeout=self.timeout_s)
                data = buf.getvalue() if buf is not None else b""
                if len(data) > limit:
                    raise FileTooLarge(len(data), limit)
                return data
            return await self._stream(info.file_path, limit)
        except (TelegramAPIError, aiohttp.ClientError, asyncio.TimeoutError) as e:
            # ``from None``: aiohttp's errors quote the download URL, which contains the bot token.
            raise FileUnavailable(f"download failed: {type(e).__name__}") from None

    async def _stream(self, path: str, limit: int) -> bytes:
        url = self.bot.session.api.file_url(self.bot.token, path)
        out = bytearray()
        async for chunk in self.bot.session.stream_content(url=url, timeout=self.timeout_s, raise_for_status=True):
            out += chunk
            if len(out) > limit:
                raise FileTooLarge(None, limit)
        return bytes(out)


class FileCache:
    def __init__(
        self, redis: Redis, namespace: str, source: FileSource, *, max_bytes: int = DEFAULT_MAX_BYTES,
        ttl_s: int = 3600,
    ) -> None:
        self.redis = redis
        self.namespace = namespace
        self.source = source
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._inflight: dict[str, asyncio.Future[bytes]] = {}

    def key(self, attachment: Attachment) -> str:
        # file_unique_id is stable across bots and re-sends; file_id is not.
        return f"{self.namespace}:filebytes:{attachment.file_unique_id}"

    async def get(self, attachment: Attachment) -> bytes:
        if attachment.size is not None and attachment.size > self.max_bytes:
            raise FileTooLarge(attachment.size, self.max_bytes)
        key = self.key(attachment)
        try:
            cached = await self.redis.getex(key, ex=self.ttl_s)
        except STORE_DOWN as e:
            raise StoreUnavailable(f"file cache read failed: {type(e).__name__}") from e
        if cached is not None:
            return bytes(cached)
        # One download per file at a time in this process, however many requests want it.
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            data = await self.source.fetch(attachment.file_id, self.max_bytes)
            try:
                await self.redis.set(key, data, ex=self.ttl_s)
            except STORE_DOWN:
                pass  # the bytes are in hand; the cache is only an optimisation
            future.set_result(data)
            return data
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as e:
            future.set_exception(e)
            future.exception()  # retrieved here, so an unawaited future doesn't warn
            raise
        finally:
            del self._inflight[key]
