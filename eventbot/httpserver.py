"""Each service's small HTTP side: Prometheus ``/metrics`` and a ``/healthz`` probe."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

HealthCheck = Callable[[], Awaitable[dict[str, bool]]]


class MergedRegistries:
    """Several services in one process (``run all``) each own a registry; one exposition
    must carry each metric family once, so same-named families are merged here."""

    def __init__(self, registries: Sequence[CollectorRegistry]) -> None:
        self.registries = registries

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for registry in self.registries:
            for family in registry.collect():
                if family.name in merged:
                    merged[family.name].samples.extend(family.samples)
                else:
                    merged[family.name] = family
        yield from merged.values()


def metrics_app(registries: Sequence[CollectorRegistry], health: HealthCheck) -> web.Application:
    exposition = MergedRegistries(registries)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(exposition), headers={"Content-Type": CONTENT_TYPE_LATEST})  # type: ignore[arg-type]

    async def healthz(_: web.Request) -> web.Response:
        checks = await health()
        ok = all(checks.values())
        return web.json_response({"ok": ok, "checks": checks}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(app: web.Application, port: int, host: str = "0.0.0.0") -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
