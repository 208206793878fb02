"""Audit: every balance explained; tampering anywhere is named by user, seq and check."""

from __future__ import annotations

import asyncio
import json

import msgspec
import pytest
from redis.asyncio import Redis

from eventbot.keys import Keys
from eventbot.ledger import Ledger
from eventbot.readmodels import ArchiveLog, Limits, ReadModelBuilder
from eventbot.readmodels import codec as rm_codec
from eventbot.readmodels.keys import ReadModelKeys
from events import EventCodec, user_key
from services.projector.audit import Auditor, ledger as ledger_listing
from services.projector.handlers import PostgresHandler, ReadModelHandler
from services.projector.pg_projection import PostgresProjection
from tests.factories import charge, credit
from tests.test_projector_helpers import LIVE, consumer, drained, eventually, migrated_pool, running

USER = 77


async def _history(ledger: Ledger) -> None:
    for amount in (1_000_000, 250_000):
        await ledger.transact(USER, lambda head, a=amount: [credit(USER, a)])
    for amount in (120_000, 35_000, 7_000):
        await ledger.transact(USER, lambda head, a=amount: [charge(USER, a)])


async def _project(redis: Redis, keys: Keys, codec: EventCodec, pool) -> None:  # type: ignore[no-untyped-def]
    builder = ReadModelBuilder(redis, keys, Limits(), ArchiveLog(pool, redis, keys, codec, LIVE))
    async with running(consumer(redis, keys, codec, PostgresHandler(PostgresProjection(pool, codec, LIVE)), "postgres", "p"),
                       consumer(redis, keys, codec, ReadModelHandler(builder), "readmodel", "rm")):
        await eventually(lambda: drained(redis, keys, "postgres"))
        await eventually(lambda: drained(redis, keys, "readmodel"))


@pytest.fixture
async def audited(redis: Redis, keys: Keys, codec: EventCodec, ledger: Ledger, database_url: str):  # type: ignore[no-untyped-def]
    await _history(ledger)
    pool = await migrated_pool(database_url)
    await _project(redis, keys, codec, pool)
    yield Auditor(pool, redis, keys, codec, LIVE), pool
    await pool.close()


async def test_a_consistent_ledger_verifies_and_lists_its_causes(audited) -> None:  # type: ignore[no-untyped-def]
    auditor, pool = audited
    assert await auditor.verify(USER) == []
    assert await auditor.users() == [USER]
    ops, balance = await ledger_listing(pool, LIVE, USER)
    assert [o.seq for o in ops] == [1, 2, 3, 4, 5]
    assert balance == 1_000_000 + 250_000 - 120_000 - 35_000 - 7_000
    assert "price=test" in ops[2].cause and "in=10 out=20" in ops[2].cause and ops[0].cause == "admin test"
    _, at_second = await ledger_listing(pool, LIVE, USER, at=ops[1].occurred_at)
    assert at_second == 1_250_000


async def test_a_tampered_balance_operation_row_is_named(audited) -> None:  # type: ignore[no-untyped-def]
    auditor, pool = audited
    async with pool.connection() as conn:
        await conn.execute("UPDATE eventbot.balance_operations SET amount = amount + 1 WHERE user_id = %s AND seq = 4", (USER,))
    found = await auditor.verify(USER)
    assert [(d.user_id, d.seq, d.check) for d in found] == [(USER, 4, "row")]


async def test_a_tampered_archived_event_breaks_the_hash_chain_at_its_seq(audited) -> None:  # type: ignore[no-untyped-def]
    auditor, pool = audited
    async with pool.connection() as conn:
        await conn.execute("UPDATE eventbot.event_log SET payload = jsonb_set(payload, '{amount}', '1')"
                           " WHERE user_id = %s AND (payload->>'seq')::int = 2", (USER,))
    checks = {(d.seq, d.check) for d in await auditor.verify(USER)}
    assert (2, "hash") in checks and (2, "fold") in checks


async def test_a_tampered_redis_read_model_is_named(audited, redis: Redis, keys: Keys) -> None:  # type: ignore[no-untyped-def]
    auditor, _ = audited
    key = ReadModelKeys(keys).user_ledger(1, USER)
    state = rm_codec.decode(("ledger",), await redis.get(key))
    await redis.set(key, rm_codec.encode(msgspec.structs.replace(state, balance=state.balance + 500)))
    found = await auditor.verify(USER)
    assert [(d.seq, d.check) for d in found] == [(5, "readmodel")]


async def test_a_tampered_stream_entry_is_named(audited, redis: Redis, keys: Keys, codec: EventCodec) -> None:  # type: ignore[no-untyped-def]
    auditor, _ = audited
    stream = keys.stream("ledger", keys.partition_of(user_key(USER)))
    entries = await redis.xrange(stream)
    entry_id, fields = entries[2]  # seq 3, a charge
    original = codec.decode(fields[b"t"].decode(), int(fields[b"v"]), fields[b"d"])
    forged = msgspec.structs.replace(original, amount=1)  # keeps the old hash: the content no longer matches it
    await redis.xdel(stream, entry_id)
    await redis.xadd(stream, {"t": fields[b"t"], "v": fields[b"v"], "d": codec.encode(forged)})
    found = await auditor.verify(USER)
    assert (USER, 3, "stream") in [(d.user_id, d.seq, d.check) for d in found]


async def test_a_ledger_head_out_of_step_is_named(audited, redis: Redis, keys: Keys) -> None:  # type: ignore[no-untyped-def]
    auditor, _ = audited
    await redis.hset(keys.ledger_head(keys.partition_of(user_key(USER)), USER), "balance", 1)
    assert [(d.seq, d.check) for d in await auditor.verify(USER)] == [(5, "head")]


def test_cli_verify_exits_1_naming_user_seq_and_check(
    redis_server_url: str, database_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from eventbot.cli import main as cli
    from events import default_codec
    from tests.test_replay import _as_url

    async def prepare() -> None:
        redis = Redis.from_url(redis_server_url)
        keys, codec = Keys(namespace, 8), default_codec()
        await _history(Ledger(redis, keys, codec))
        pool = await migrated_pool(database_url)
        await _project(redis, keys, codec, pool)
        await pool.close()
        await redis.aclose()

    asyncio.run(prepare())
    for name, value in {"REDIS_URL": redis_server_url, "DATABASE_URL": _as_url(database_url),
                        "EVENTBOT_NAMESPACE": namespace}.items():
        monkeypatch.setenv(name, value)
    try:
        assert cli(["audit", "verify", "--all", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["ok"] is True
        assert cli(["audit", "ledger", "--user", str(USER), "--format", "csv"]) == 0
        assert len(capsys.readouterr().out.strip().splitlines()) == 6
        import psycopg

        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("UPDATE eventbot.balance_operations SET balance_after = 0 WHERE user_id = %s AND seq = 2", (USER,))
        assert cli(["audit", "verify", "--user", str(USER)]) == 1
        assert f"user {USER} seq 2: row" in capsys.readouterr().out
    finally:
        async def cleanup() -> None:
            redis = Redis.from_url(redis_server_url)
            async for key in redis.scan_iter(match=f"{namespace}:*"):
                await redis.delete(key)
            await redis.aclose()

        asyncio.run(cleanup())


