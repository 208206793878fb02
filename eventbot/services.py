"""Running eventbot's services in this process: each with its own stop, one /metrics.

Every service is a coroutine ``run(settings, registry, stop)`` that returns once
``stop`` is set and its work in hand is finished. Imports are late so that, say,
the agent process never imports the Postgres driver.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry

from eventbot.settings import Settings
from eventbot.tasks import cancel_and_wait

log = logging.getLogger("eventbot.run")

Service = Callable[[Settings, CollectorRegistry, asyncio.Event], Awaitable[None]]
NAMES = ("ingest", "agent", "projector")


async def ingest(settings: Settings, registry: CollectorRegistry, stop: asyncio.Event) -> None:
    from services.ingest.main import run_ingest

    # Ingest confirms an update only after its events are appended, so cancelling
    # it at any await loses nothing: unconfirmed updates come back from Telegram.
    task = asyncio.create_task(run_ingest(settings, registry=registry))
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task in done:
        await task
    else:
        await cancel_and_wait(task)


async def agent(settings: Settings, registry: CollectorRegistry, stop: asyncio.Event) -> None:
    from services.agent.main import run_agent

    await run_agent(settings, registry=registry, stop=stop)


async def projector(settings: Settings, registry: CollectorRegistry, stop: asyncio.Event) -> None:
    from services.projector.main import run_projector

    await run_projector(settings, registry=registry, stop=stop)


SERVICES: dict[str, Service] = {"ingest": ingest, "agent": agent, "projector": projector}
MODULES = {"ingest": "services.ingest.main", "agent": "services.agent.main", "projector": "services.projector.main"}


def import_services(names: list[str]) -> None:
    """Import what ``names`` run, and only that (the agent must never load the Postgres driver)."""
    for name in names:
        importlib.import_module(MODULES[name])
