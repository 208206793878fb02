"""The ingest process: Telegram updates in, events out, nothing else.

``run_ingest(settings)`` polls when no ``TELEGRAM_WEBHOOK_URL`` is set and serves
the webhook otherwise; it runs until cancelled and then closes what it opened.
``TELEGRAM_API_URL`` points the bot at another Bot API server (a local one, or the
fake in tests and the demo).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from aiogram import Bot, Dispatcher
from aiogram.exceptions import TelegramNetworkError, TelegramRetryAfter, TelegramServerError
from aiohttp import web
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from eventbot.telegram import BotSession
from eventbot.appender import AppendMetrics, Appender
from eventbot.connections import DEFAULT_REDIS_URL, redis_client
from eventbot.readmodels import reader_for
from eventbot.keys import Keys
from eventbot.ledger import Ledger
from eventbot.settings import Settings, SettingsError
from eventbot.views import ReadModels
from events import EventCodec, default_codec
from services.ingest.dispatcher import build_dispatcher
from services.ingest.menu import register_commands
from services.ingest.metrics import IngestMetrics
from services.ingest.polling import Poller
from services.ingest.pricing import InvoiceSigner
from services.ingest.webhook import webhook_app

log = logging.getLogger("eventbot.ingest")
T = TypeVar("T")


async def until_telegram_answers(call: Callable[[], Awaitable[T]], *, cap_s: float = 30.0) -> T:
    """Retry a start-up call while Telegram is unreachable or busy; a bad token fails at once."""
    delay = 0.5
    while True:
        try:
            return await call()
        except TelegramRetryAfter as e:
            await asyncio.sleep(e.retry_after)
        except (TelegramNetworkError, TelegramServerError) as e:
            log.warning("Telegram did not answer at start (%s), retrying in %.1fs", type(e).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, cap_s)


def make_bot(settings: Settings) -> Bot:
    if not settings.telegram_bot_token:
        raise SettingsError("TELEGRAM_BOT_TOKEN is required to run ingest")
    session = BotSession(settings.telegram_api_url)
    return Bot(settings.telegram_bot_token, session=session)


@dataclass
class Ingest:
    """The bot, its dispatcher and its dependencies, wired once."""

    bot: Bot
    dp: Dispatcher
    settings: Settings

    @classmethod
    def build(
        cls, settings: Settings, *, redis: Redis, read_models: ReadModels, codec: EventCodec | None = None,
        bot: Bot | None = None, registry: CollectorRegistry | None = None,
    ) -> Ingest:
        codec = codec or default_codec()
        bot = bot or make_bot(settings)
        keys = Keys(settings.namespace, settings.partitions)
        window = settings.dedupe_window_s
        registry = registry if registry is not None else CollectorRegistry()
        appended = AppendMetrics(registry)
        dp = build_dispatcher(
            redis=redis, keys=keys, read_models=read_models, settings=settings,
            appender=Appender(redis, keys, codec, dedupe_window_s=window, tokens_maxlen=settings.tokens_maxlen,
                              metrics=appended),
            ledger=Ledger(redis, keys, codec, dedupe_window_s=window, metrics=appended),
            signer=InvoiceSigner.for_bot(bot.token), metrics=IngestMetrics(registry),
        )
        return cls(bot, dp, settings)

    def poller(self, **kwargs: object) -> Poller:
        return Poller(self.bot, self.dp, allowed_updates=self.dp.resolve_used_update_types(), **kwargs)  # type: ignore[arg-type]

    def webhook_app(self) -> web.Application:
        url = self.settings.telegram_webhook_url
        secret = self.settings.telegram_webhook_secret
        if not url or not secret:
            raise SettingsError("TELEGRAM_WEBHOOK_URL and TELEGRAM_WEBHOOK_SECRET are both required for a webhook")
        return webhook_app(self.bot, self.dp, secret=secret, path=urlsplit(url).path or "/")

    async def poll(self, ready: asyncio.Event | None = None) -> None:
        # A webhook left over from another deployment would make getUpdates fail with 409.
        await until_telegram_answers(lambda: self.bot.delete_webhook(drop_pending_updates=False))
        if ready is not None:
            ready.set()
        await self.poller().run()

    async def serve_webhook(self, ready: asyncio.Event | None = None) -> None:
        runner = web.AppRunner(self.webhook_app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.settings.webhook_host, self.settings.webhook_port).start()
            await until_telegram_answers(lambda: self.bot.set_webhook(
                self.settings.telegram_webhook_url or "", secret_token=self.settings.telegram_webhook_secret,
                allowed_updates=self.dp.resolve_used_update_types(), drop_pending_updates=False,
            ))
            log.info("webhook listening on %s:%d", self.settings.webhook_host, self.settings.webhook_port)
            if ready is not None:
                ready.set()
            # The webhook stays registered on exit: Telegram holds updates until we are back.
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()


async def run_ingest(
    settings: Settings, *, redis: Redis | None = None, read_models: ReadModels | None = None,
    ready: asyncio.Event | None = None, registry: CollectorRegistry | None = None,
) -> None:
    """Run until cancelled. Clients passed in are the caller's to close; the rest are closed here."""
    own_redis = redis is None
    redis = redis if redis is not None else redis_client(settings.redis_url or DEFAULT_REDIS_URL)
    codec = default_codec()
    ingest: Ingest | None = None
    try:
        ingest = Ingest.build(settings, redis=redis, codec=codec, registry=registry,
                              read_models=read_models or reader_for(redis, settings, codec))
        try:
            await register_commands(ingest.bot, settings)
        except Exception as e:  # noqa: BLE001 - the menu is cosmetic; updates matter more
            log.warning("setMyCommands failed: %s", type(e).__name__)
        if settings.telegram_webhook_url:
            await ingest.serve_webhook(ready)
        else:
            await ingest.poll(ready)
    finally:
        if ingest is not None:
            await ingest.bot.session.close()
        if own_redis:
            await redis.aclose()
