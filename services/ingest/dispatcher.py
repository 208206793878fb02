"""The ingest dispatcher: routers plus the dependencies handlers receive by name (no globals)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import Dispatcher
from aiogram.types import TelegramObject, Update
from redis.asyncio import Redis

from eventbot.appender import Appender
from eventbot.keys import Keys
from eventbot.ledger import Ledger
from eventbot.settings import Settings
from eventbot.views import ReadModels
from eventbot.logs import correlation_id
from services.ingest.coalesce import CoalescingAppender
from services.ingest.gates import Gates
from services.ingest.handlers import register
from services.ingest.mapping import Origin
from services.ingest.metrics import IngestMetrics
from services.ingest.rejected import RejectedUpdates
from services.ingest.payments import Payments
from services.ingest.pricing import InvoiceSigner, StarsPricing
from services.ingest.seen import SeenUsers


async def _origin(
    handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]], event: TelegramObject, data: dict[str, Any]
) -> Any:
    # Every handler of this update derives its event ids from the same origin.
    assert isinstance(event, Update)
    data["origin"] = origin = Origin.of(data["bot"].id, event)
    token = correlation_id.set(origin.correlation_id)  # every log line of this update carries it
    try:
        return await handler(event, data)
    finally:
        correlation_id.reset(token)


def build_dispatcher(
    *, redis: Redis, keys: Keys, appender: Appender, ledger: Ledger, read_models: ReadModels, settings: Settings,
    signer: InvoiceSigner, metrics: IngestMetrics | None = None,
) -> Dispatcher:
    shared = CoalescingAppender(appender)
    dp = Dispatcher(
        # No conversation state machine here: state lives in events and read models.
        disable_fsm=True,
        appender=shared,
        ledger=ledger,
        read_models=read_models,
        settings=settings,
        signer=signer,
        gates=Gates(redis, keys, per_minute=settings.rate_limit_per_minute),
        payments=Payments(redis, keys, shared, ledger),
        pricing=StarsPricing(settings.stars_packages, settings.micro_usd_per_star),
        seen_users=SeenUsers(),
        ingest_metrics=metrics,
        rejected=RejectedUpdates(redis, keys),
    )
    dp.update.outer_middleware(_origin)
    register(dp)
    return dp
