"""The projector's two consumer groups as BatchHandlers for the core consumer runtime.

Each is a thin adapter: the projection code it calls is the same code a replay runs.
"""

from __future__ import annotations

from eventbot.consumer import Batch
from eventbot.readmodels import ReadModelBuilder
from services.projector.pg_projection import PostgresProjection

READMODEL_GROUP = "readmodel"
POSTGRES_GROUP = "postgres"


class ReadModelHandler:
    def __init__(self, builder: ReadModelBuilder) -> None:
        self.builder = builder

    async def __call__(self, batch: Batch) -> None:
        await self.builder.apply(batch.stream, [(d.entry_id, d.event) for d in batch.deliveries])


class PostgresHandler:
    """Rows, archive and checkpoint in one transaction; the runtime acks after it returns."""

    def __init__(self, projection: PostgresProjection) -> None:
        self.projection = projection

    async def __call__(self, batch: Batch) -> None:
        await self.projection.apply(batch.stream, [(d.entry_id, d.event) for d in batch.deliveries])
