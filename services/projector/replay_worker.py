"""A replay's worker process: the archived events of some streams into the shadow schema.

``python -m services.projector.replay_worker`` with its job as JSON on stdin
(``conninfo``, ``live``, ``shadow``, and per stream ``upto``: the last archived
position the parent copied into the shadow's ``event_log``). It decodes with the
default codec and writes through the same :class:`PostgresProjection` as the live
projector, so each chunk commits with its stream's checkpoint; the parent reads
progress from them.
"""

from __future__ import annotations

import asyncio
import sys

import msgspec
from psycopg import sql

from eventbot.heap import freeze_startup_heap
from eventbot.readmodels.log import archived
from eventbot.readmodels.positions import Position
from events import default_codec
from services.projector.handlers import POSTGRES_GROUP
from services.projector.pg_pool import open_pool
from services.projector.pg_projection import PostgresProjection

CHUNK = 10_000


class Job(msgspec.Struct, frozen=True):
    conninfo: str
    live: str
    shadow: str
    upto: dict[str, tuple[int, int]]  # stream -> (entry ms, seq) archived and copied up to


async def project_archive(job: Job, *, streams_at_once: int = 2) -> int:
    """Returns how many events were applied."""
    codec = default_codec()
    pool = await open_pool(job.conninfo, max_size=streams_at_once + 1, name="replay-worker")
    projection = PostgresProjection(pool, codec, job.shadow, group=POSTGRES_GROUP, durable=False)
    queue = list(reversed(job.upto))
    applied = 0

    async def worker() -> None:
        nonlocal applied
        while queue:
            stream = queue.pop()
            upto = Position(*job.upto[stream])
            async for chunk in archived(pool, codec, sql.Identifier(job.live), stream, None, upto, CHUNK):
                applied += await projection.apply(stream, chunk, archived_upto=upto)

    try:
        await asyncio.gather(*(worker() for _ in range(streams_at_once)))
    finally:
        await pool.close()
    return applied


def main() -> None:
    job = msgspec.json.decode(sys.stdin.buffer.read(), type=Job)
    freeze_startup_heap()  # its chunks are bulk work, as the projector's batches are
    asyncio.run(project_archive(job))


if __name__ == "__main__":
    main()
