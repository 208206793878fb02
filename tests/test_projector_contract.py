"""One contract, two code paths: the live projections equal a replay of the log.

Hypothesis generates traffic; the live side consumes it in random batch sizes
with random redeliveries (windows applied again, as after a crash before XACK);
the replay side rebuilds from ``event_log`` plus the stream tail with the
replay commands' code. Postgres tables and Redis read models must be equal.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from eventbot.appender import Appender
from eventbot.keys import Keys
from eventbot.readmodels import ArchiveLog, Limits, ReadModelBuilder
from eventbot.readmodels.keys import ReadModelKeys
from events import MessageEdited, PromptChanged, ResponseCompleted, ResponseStarted, default_codec
from services.projector.pg_projection import PostgresProjection
from services.projector.replay import replay_postgres, replay_redis
from services.projector.synthetic import Traffic
from tests.test_projector_helpers import LIVE, append, dump, migrated_pool, stream_entries


class Quiet:
    """No progress bar in tests."""

    def __init__(self, label: str, total: int) -> None:
        self.done = 0

    def add(self, n: int) -> None:
        self.done += n

    def finish(self) -> None:
        pass


async def _live(apply, redis: Redis, codec, streams: list[str], rng: random.Random) -> None:  # type: ignore[no-untyped-def]
    """Feed every stream through ``apply`` in random batches, sometimes re-delivering a window."""
    for stream in streams:
        entries = await stream_entries(redis, codec, stream)
        i = 0
        while i < len(entries):
            n = rng.randint(1, 40)
            await apply(stream, entries[i:i + n])
            if rng.random() < 0.3 and i:
                back = rng.randint(1, i)
                await apply(stream, entries[i - back:i + rng.randint(0, n)])  # redelivered, overlapping
            i += n


async def _rm_snapshot(redis: Redis, rm: ReadModelKeys, gen: int) -> dict[str, object]:
    prefix = rm.prefix(gen)
    out: dict[str, object] = {}
    async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
        name = key.decode()[len(prefix):]
        kind = await redis.type(key)
        out[name] = await (redis.hgetall(key) if kind == b"hash" else redis.get(key))
    return out


async def _scenario(redis_url: str, database_url: str, seed: int, size: int, rng_seed: int) -> None:
    codec = default_codec()
    redis = Redis.from_url(redis_url)
    keys = Keys(f"c{uuid.uuid4().hex[:10]}", 3)
    pool = await migrated_pool(database_url, LIVE)
    try:
        async with pool.connection() as conn:
            await conn.execute("DROP SCHEMA IF EXISTS eventbot CASCADE; DROP SCHEMA IF EXISTS shadow CASCADE")
            await conn.commit()
        pool2 = await migrated_pool(database_url, LIVE)
        await pool.close()
        pool = pool2
        await append(Appender(redis, keys, codec), Traffic(seed=seed, users=4).events(size))
        streams = keys.streams("conv") + keys.streams("ledger")
        rng = random.Random(rng_seed)
        log = ArchiveLog(pool, redis, keys, codec, LIVE)
        projection = PostgresProjection(pool, codec, LIVE)
        builder = ReadModelBuilder(redis, keys, Limits(history_turns=4, recent_ops=3), log)
        await _live(projection.apply, redis, codec, streams, rng)
        await _live(builder.apply, redis, codec, streams, rng)

        report = await replay_postgres(pool, redis, keys, codec, live=LIVE, shadow="shadow", verify=True, progress=Quiet)
        assert report.equal, [d for d in report.differences if not d.equal]
        assert await dump(pool, LIVE) == await dump(pool, "shadow")

        rm = ReadModelKeys(keys)
        before = await _rm_snapshot(redis, rm, 1)
        rebuilt = await replay_redis(redis, keys, builder, log, progress=Quiet, grace_s=0)
        assert rebuilt.generation == 2
        assert await _rm_snapshot(redis, rm, 2) == before
        assert await _rm_snapshot(redis, rm, 1) == {}, "the old generation is removed after the switch"
    finally:
        await pool.close()
        async for key in redis.scan_iter(match=f"{keys.namespace}:*"):
            await redis.delete(key)
        await redis.aclose()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), size=st.integers(1, 250), rng_seed=st.integers(0, 10_000))
def test_live_projection_with_redeliveries_equals_a_replay(redis_server_url: str, database_url: str, seed: int, size: int, rng_seed: int) -> None:
    asyncio.run(_scenario(redis_server_url, database_url, seed, size, rng_seed))


# --- the same expectations, checked on the live projector and on a replay -----------------------------

async def _project(mode: str, redis_url: str, database_url: str, events: list) -> dict:  # type: ignore[type-arg]
    codec = default_codec()
    redis = Redis.from_url(redis_url)
    keys = Keys(f"c{uuid.uuid4().hex[:10]}", 2)
    pool = await migrated_pool(database_url, LIVE)
    try:
        await append(Appender(redis, keys, codec), events)
        if mode == "live":
            await _live(PostgresProjection(pool, codec, LIVE).apply, redis, codec,
                        keys.streams("conv") + keys.streams("ledger"), random.Random(1))
            return await dump(pool, LIVE)
        await replay_postgres(pool, redis, keys, codec, live=LIVE, shadow="shadow", progress=Quiet)
        return await dump(pool, "shadow")
    finally:
        await pool.close()
        async for key in redis.scan_iter(match=f"{keys.namespace}:*"):
            await redis.delete(key)
        await redis.aclose()


@pytest.mark.parametrize("mode", ["live", "replay"])
def test_contract_edits_cleared_prompts_and_finished_responses(mode: str, redis_server_url: str, database_url: str) -> None:
    traffic = Traffic(seed=9, users=1)
    events = traffic.events(1)
    user = traffic.users[0]
    received = next(e for e in events if e.type_name() == "message.received")
    started = next(e for e in events if isinstance(e, ResponseStarted))
    env = dict(partition_key=received.partition_key, chat_id=received.chat_id, topic_id=received.topic_id)
    t = max(e.occurred_at for e in events)
    extra = [
        MessageEdited(event_id=uuid.uuid4(), occurred_at=t + timedelta(seconds=1), **env, update_id=999,
                      message_id=received.message_id, user_id=user, text="edited"),
        PromptChanged(event_id=uuid.uuid4(), occurred_at=t + timedelta(seconds=2), **env, user_id=user, prompt="terse"),
        PromptChanged(event_id=uuid.uuid4(), occurred_at=t + timedelta(seconds=3), **env, user_id=user, prompt=None),
        # A late duplicate start must not reopen a finished response.
        ResponseStarted(**{**{f: getattr(started, f) for f in started.__struct_fields__}, "event_id": uuid.uuid4(),
                           "occurred_at": t + timedelta(seconds=4), "attempt": 2}),
    ]
    tables = asyncio.run(_project(mode, redis_server_url, database_url, events + extra))
    msg = next(m for m in tables["messages"] if m[0] == f"{received.chat_id}:{received.message_id}")
    assert (msg[7], msg[18]) == (received.text, "edited"), "original text kept, edit beside it"
    users = {u[0]: u for u in tables["users"]}
    assert users[user][9] is None and users[user][10] is not None, "the prompt was cleared"
    response = next(r for r in tables["responses"] if r[0] == started.response_id)
    finished = [e for e in events if getattr(e, "response_id", None) == started.response_id and not isinstance(e, ResponseStarted)]
    assert response[10] != "started" and response[10] in {"completed", "failed", "cancelled"} and finished
    assert response[7] == 2, "the later attempt is recorded"
    ops = sorted(tables["balance_operations"], key=lambda r: r[1])
    assert [o[1] for o in ops] == list(range(1, len(ops) + 1))
    assert users[user][11] == traffic.heads[user].balance
    assert not isinstance(finished[0], ResponseCompleted) or any(m[6] == started.response_id for m in tables["messages"])
    # The response row keeps the final token counts (tokens are never rows of their own).
    assert response[16] is not None and response[17] is not None
