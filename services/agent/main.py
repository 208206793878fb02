"""The agent process: builds its clients once, runs the consumer, closes them on the way out.

It needs Redis, the Telegram Bot API and Anthropic, and nothing else: no
DATABASE_URL, no Postgres driver is ever touched on this path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import anthropic
from aiogram import Bot
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from eventbot.telegram import BotSession
from eventbot.appender import Appender, AppendMetrics
from eventbot.connections import redis_client
from eventbot.keys import Keys
from eventbot.ledger import Ledger
from eventbot.consumer import Consumer, ConsumerConfig
from eventbot.metrics import ConsumerMetrics
from eventbot.readmodels import reader_for
from eventbot.settings import Settings, SettingsError
from eventbot.views import ReadModels
from events import default_codec
from services.agent.answer import Answerer
from services.agent.billing import Billing
from services.agent.config import AgentConfig
from eventbot.files import FileCache, TelegramFiles
from services.agent.files import CachedFiles, FileSource
from services.agent.limiter import Limiters
from services.agent.metrics import AgentMetrics
from services.agent.pricing import DEFAULT_PRICES, PriceTable
from services.agent.service import AgentHandler
from services.agent.sessions import Sessions
from services.agent.warmup import warm_up

log = logging.getLogger("eventbot.agent")

GROUP = "agent"

ReadModelsFactory = Callable[[Redis, Settings], ReadModels]


def default_read_models(redis: Redis, settings: Settings) -> ReadModels:
    # Redis only, with the log as the way to rebuild a missing model: never Postgres. Same limits
    # as the builder's: the reader folds what the builder has not applied yet, and must fold alike.
    return reader_for(redis, settings, default_codec())


async def run_agent(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    stop: asyncio.Event | None = None,
    config: AgentConfig | None = None,
    prices: PriceTable = DEFAULT_PRICES,
    read_models: ReadModelsFactory = default_read_models,
    consumer_name: str | None = None,
    started: asyncio.Event | None = None,
) -> None:
    """Answer messages until ``stop`` is set (then finish the answers in hand and return)."""
    for name, value in (("REDIS_URL", settings.redis_url), ("TELEGRAM_BOT_TOKEN", settings.telegram_bot_token),
                        ("ANTHROPIC_API_KEY", settings.anthropic_api_key)):
        if not value:
            raise SettingsError(f"{name} is required by the agent")
    registry = registry if registry is not None else CollectorRegistry()
    config = config or AgentConfig.from_settings(settings)
    if unpriced := prices.unpriced(config.models):
        # Found at start, not at a user's first answer with that model (which could not be billed).
        raise SettingsError(f"EVENTBOT_MODELS names models with no price in table {prices.version}: {', '.join(unpriced)}")
    stop = stop or asyncio.Event()
    codec = default_codec()
    keys = Keys(settings.namespace, settings.partitions)
    redis = redis_client(settings.redis_url)  # type: ignore[arg-type]
    session = BotSession(settings.telegram_api_url)
    bot = Bot(settings.telegram_bot_token, session=session)  # type: ignore[arg-type]
    # Retries are ours (only before the first token, and measured); the SDK must not add its own.
    claude = anthropic.AsyncAnthropic(
        api_key=settings.anthropic_api_key, base_url=settings.anthropic_base_url, max_retries=0,
        # aiohttp under the SDK rather than httpx's own transport (anyio, a turn of the event loop
        # per write and per lock): 7-9 % less CPU per answer, and the first delta parsed sooner
        # at p99 (3.0 against 3.6-4.1 ms; bench/agent.py, BENCHMARKS.md "Morning").
        http_client=anthropic.DefaultAioHttpClient(),
    )
    appender = Appender(
        redis, keys, codec, dedupe_window_s=settings.dedupe_window_s, tokens_maxlen=settings.tokens_maxlen,
        metrics=AppendMetrics(registry),
    )
    ledger = Ledger(redis, keys, codec, dedupe_window_s=settings.dedupe_window_s, metrics=appender.metrics)
    try:
        files: FileSource = CachedFiles(FileCache(
            redis, settings.namespace, TelegramFiles(bot), max_bytes=config.max_file_bytes, ttl_s=settings.file_cache_ttl_s,
        ))
        answerer = Answerer(
            config=config, redis=redis, keys=keys, codec=codec, appender=appender, read_models=read_models(redis, settings),
            billing=Billing(ledger, redis, keys, codec, prices),
            claude=claude, bot=bot, limiters=Limiters(), files=files, metrics=AgentMetrics(registry),
        )
        sessions = Sessions(answerer.answer, merge_window_s=config.merge_window_s, on_new_message=config.on_new_message)
        consumer_config = ConsumerConfig(
            group=GROUP, mode="concurrent", batch_size=settings.batch_size, block_ms=settings.block_ms,
            claim_idle_ms=settings.claim_idle_ms, max_deliveries=settings.max_deliveries,
            **({"consumer": consumer_name} if consumer_name else {}),
        )
        consumer = Consumer(
            redis, keys, codec, AgentHandler(sessions), keys.streams("conv"), consumer_config, ConsumerMetrics(registry)
        )
        await warm_up(config.default_model)  # before the first message, so no user waits for it
        running = asyncio.create_task(consumer.run())
        if started is not None:
            asyncio.create_task(_signal_when(consumer.started, started))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        consumer.stop()
        stopping.cancel()
        await running
    finally:
        await claude.close()
        await bot.session.close()
        await redis.aclose()


async def _signal_when(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()
