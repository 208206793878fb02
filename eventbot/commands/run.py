"""``eventbot run ingest|agent|projector|all``: run services, serve /metrics and /healthz, drain on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from prometheus_client import CollectorRegistry

from eventbot.commands._shared import load_settings
from eventbot.connections import redis_client
from eventbot.httpserver import metrics_app, serve
from eventbot.localdefaults import local_services
from eventbot.localservices import ServiceUnavailable
from eventbot.logs import configure_logging
from eventbot.redisprobe import RedisProbe
from eventbot.heap import freeze_startup_heap
from eventbot.services import NAMES, SERVICES, import_services
from eventbot.settings import Settings

log = logging.getLogger("eventbot.run")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a service (or all three in one process, for development)")
    p.add_argument("service", choices=[*NAMES, "all"])
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings.log_level, secrets=_secrets(settings))
    names = list(NAMES) if args.service == "all" else [args.service]
    try:
        # Only the projector needs Postgres; the others never get DATABASE_URL filled in.
        with local_services(settings, need_postgres="projector" in names) as resolved:
            return asyncio.run(run_services(resolved, names))
    except ServiceUnavailable as e:
        log.error("%s", e)
        return 2


async def run_services(settings: Settings, names: list[str], stop: asyncio.Event | None = None) -> int:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    import_services(names)
    freeze_startup_heap()
    redis = redis_client(settings.redis_url or "", max_connections=4)
    probe_registry = CollectorRegistry()
    probe = RedisProbe(redis, probe_registry)
    registries = {name: CollectorRegistry() for name in names}
    tasks = {name: asyncio.create_task(SERVICES[name](settings, registries[name], stop), name=name) for name in names}

    async def health() -> dict[str, bool]:
        return {"redis": probe.ok, **{name: not task.done() for name, task in tasks.items()}}

    runner = await serve(metrics_app([probe_registry, *registries.values()], health), settings.metrics_port)
    prober = asyncio.create_task(probe.run())
    log.info("running %s; metrics on :%d", ", ".join(names), settings.metrics_port)
    failed = False
    try:
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({stopping, *tasks.values()}, return_when=asyncio.FIRST_COMPLETED)
        for task in done - {stopping}:
            failed = True
            log.error("service %s stopped on its own: %r", task.get_name(), task.exception())
        stop.set()  # drain the others: each finishes the work in hand
        results = await asyncio.gather(*tasks.values(), return_exceptions=True)
        for name, result in zip(tasks, results):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                failed = True
                log.error("service %s failed: %s", name, type(result).__name__)
    finally:
        prober.cancel()
        await runner.cleanup()
        await redis.aclose()
    return 1 if failed else 0


def _secrets(settings: Settings) -> list[str | None]:
    return [settings.telegram_bot_token, settings.anthropic_api_key, settings.telegram_webhook_secret]
