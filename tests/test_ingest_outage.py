"""Redis stops while updates arrive: nothing is confirmed to Telegram; once it is back, each is appended once.

These tests run their own redis-server (with AOF), so they can stop and restart it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from redis.asyncio import Redis

from eventbot.connections import redis_client
from eventbot.fakes.telegram import FakeTelegram
from eventbot.keys import Keys
from eventbot.ledger import Ledger
from eventbot.localservices import LocalRedis, ServiceUnavailable, free_port
from eventbot.readmodels import reader_for
from events import EventCodec, MessageReceived
from services.ingest.main import Ingest
from tests.ingest_env import ADA, BOB, fake_tg, give_credit, ingest_settings, of_type, read_events  # noqa: F401

pytestmark = pytest.mark.slow
SECRET = "outage-secret"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    server = LocalRedis(tmp_path / "redis")
    try:
        server.start()
    except ServiceUnavailable as e:
        pytest.skip(str(e))
    yield server
    server.stop()


@pytest.fixture
async def client(own_redis: LocalRedis) -> AsyncIterator[Redis]:
    redis = redis_client(own_redis.url)
    yield redis
    await redis.aclose()


async def outage(fake: FakeTelegram, server: LocalRedis, redis: Redis, keys: Keys, codec: EventCodec) -> None:
    """Send during an outage, check nothing was confirmed, restore, check each update appended once."""
    before = fake.send_text(ADA, "before the outage")
    await fake.wait_for(lambda: before["update_id"] not in fake.pending_update_ids, timeout=10)

    server.stop()
    during = [fake.send_text(user, f"during the outage {i}") for i, user in enumerate([ADA, BOB, ADA, BOB])]
    ids = [u["update_id"] for u in during]
    await asyncio.sleep(1.5)  # several retries' worth
    assert fake.pending_update_ids == ids, "an update was confirmed while Redis was down"
    assert fake.confirmed_offset <= ids[0]
    assert not any(d.status == 200 and d.update_id in ids for d in fake.webhook_deliveries)

    server.start()  # same port, same AOF: the log before the outage is still there
    await fake.wait_for(lambda: not fake.pending_update_ids, timeout=30)
    received = of_type(await read_events(redis, keys, codec), MessageReceived)
    assert sorted(m.update_id for m in received) == [before["update_id"], *ids]


async def test_polling_confirms_nothing_while_redis_is_down(fake_tg: FakeTelegram, own_redis: LocalRedis,
                                                            client: Redis, namespace: str, keys: Keys,
                                                            codec: EventCodec) -> None:
    settings = ingest_settings(namespace, fake_tg)
    await give_credit(Ledger(client, keys, codec), ADA.id, 1_000_000)
    await give_credit(Ledger(client, keys, codec), BOB.id, 1_000_000)
    app = Ingest.build(settings, redis=client, read_models=reader_for(client, settings, codec), codec=codec)
    poller = app.poller(timeout_s=1, backoff_s=(0.05, 0.3))
    task = asyncio.create_task(poller.run())
    try:
        await outage(fake_tg, own_redis, client, keys, codec)
        # The poller had the outage's batch in hand the whole time and kept retrying it.
        assert fake_tg.calls("getUpdates")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await app.bot.session.close()


async def test_webhook_answers_503_while_redis_is_down(fake_tg: FakeTelegram, own_redis: LocalRedis, client: Redis,
                                                       namespace: str, keys: Keys, codec: EventCodec) -> None:
    port = free_port()
    settings = ingest_settings(namespace, fake_tg, telegram_webhook_url=f"http://127.0.0.1:{port}/hook",
                               telegram_webhook_secret=SECRET, webhook_port=port)
    await give_credit(Ledger(client, keys, codec), ADA.id, 1_000_000)
    await give_credit(Ledger(client, keys, codec), BOB.id, 1_000_000)
    app = Ingest.build(settings, redis=client, read_models=reader_for(client, settings, codec), codec=codec)
    runner = web.AppRunner(app.webhook_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await app.bot.set_webhook(settings.telegram_webhook_url or "", secret_token=SECRET)
    try:
        await outage(fake_tg, own_redis, client, keys, codec)
        assert 503 in {d.status for d in fake_tg.webhook_deliveries}
    finally:
        await runner.cleanup()
        await app.bot.session.close()
