"""The fake Anthropic API's model catalogue: ``GET /v1/models`` and ``GET /v1/models/{id}``.

The real catalogue tells, per model, whether it is ``active``, ``deprecated`` (still
callable, retiring at ``retires_at``) or ``retired`` (requests naming it fail), which
is what ``eventbot doctor`` reads for every configured model. This one holds the
models eventbot has offered, as the API listed them on 2026-11-30.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

Lifecycle = Literal["active", "deprecated", "retired"]
EPOCH = "1970-01-01T00:00:00Z"  # what the API gives for an unknown release date


@dataclass(frozen=True)
class CatalogueEntry:
    id: str
    display_name: str
    created_at: str = EPOCH
    lifecycle: Lifecycle = "active"
    deprecated_at: str | None = None
    retires_at: str | None = None

    def to_api(self) -> dict[str, Any]:
        return {
            "type": "model", "id": self.id, "display_name": self.display_name, "created_at": self.created_at,
            "lifecycle": self.lifecycle, "deprecated_at": self.deprecated_at, "retires_at": self.retires_at,
        }


CATALOGUE: Mapping[str, CatalogueEntry] = {e.id: e for e in (
    CatalogueEntry("claude-sonnet-5-5", "Claude Sonnet 5.5"),
    CatalogueEntry("claude-opus-5-5", "Claude Opus 5.5", "2026-09-22T00:00:00Z"),
    CatalogueEntry("claude-haiku-4-5", "Claude Haiku 4.5", "2025-10-01T00:00:00Z"),
    CatalogueEntry("claude-sonnet-5", "Claude Sonnet 5", "2026-06-30T00:00:00Z"),
    CatalogueEntry("claude-opus-5", "Claude Opus 5", "2026-07-24T00:00:00Z"),
    CatalogueEntry("claude-sonnet-4-6", "Claude Sonnet 4.6", "2026-02-17T00:00:00Z"),
    CatalogueEntry("claude-opus-4-6", "Claude Opus 4.6", "2026-02-05T00:00:00Z"),
    CatalogueEntry("claude-opus-4-5", "Claude Opus 4.5", "2025-11-01T00:00:00Z", "deprecated",
                   retires_at="2027-01-22T00:00:00Z"),
    CatalogueEntry("claude-sonnet-4-5", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z", "deprecated",
                   retires_at="2026-11-30T00:00:00Z"),
    CatalogueEntry("claude-opus-4-1", "Claude Opus 4.1", "2025-08-05T00:00:00Z", "retired"),
)}


def add_model_routes(app: web.Application, catalogue: Mapping[str, CatalogueEntry]) -> None:
    async def listed(request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "20"))
        data = [e.to_api() for e in catalogue.values()][:limit]
        return web.json_response({
            "data": data, "has_more": len(catalogue) > limit,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None,
        })

    async def one(request: web.Request) -> web.Response:
        entry = catalogue.get(request.match_info["model_id"])
        if entry is None:
            return web.json_response(
                {"type": "error", "error": {"type": "not_found_error", "message": f"model: {request.match_info['model_id']}"}},
                status=404,
            )
        return web.json_response(entry.to_api())

    app.router.add_get("/v1/models", listed)
    app.router.add_get("/v1/models/{model_id}", one)
