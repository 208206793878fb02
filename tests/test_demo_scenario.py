"""A simulated user left waiting says what it waited for and where the update that should have done it is.

On a CI machine the demo's and the e2e tests' users are the only witnesses of a
stall; their message must tell a lost update from a slow or stuck one.
"""

from __future__ import annotations

import asyncio

import pytest
from aiogram.types import Update

from eventbot.demo.observer import Observer
from eventbot.demo.scenario import Conversation
from eventbot.fakes.telegram import FakeTelegram, TgUser
from eventbot.keys import Keys
from eventbot.ledger import Ledger
from events import EventCodec
from services.ingest.rejected import RejectedUpdates

GRACE = TgUser(4242, first_name="Grace")


def conversation(tg: FakeTelegram, redis, keys: Keys, codec: EventCodec) -> Conversation:  # type: ignore[no-untyped-def]
    return Conversation(tg, Observer(redis, keys, codec), Ledger(redis, keys, codec), asyncio.Condition(), GRACE,
                        messages=1, timeout_s=0.2)


async def test_no_bot_at_all_leaves_the_update_with_telegram(redis, keys: Keys, codec: EventCodec) -> None:  # type: ignore[no-untyped-def]
    async with FakeTelegram() as tg:
        with pytest.raises(TimeoutError) as waited:
            await conversation(tg, redis, keys, codec).run()
        [update_id] = tg.pending_update_ids
    assert str(waited.value) == (f"user {GRACE.id}: no reply to /start within 0.2s; "
                                 f"update {update_id} still with Telegram, 1 of 1 pending; polled, offset 0")


async def test_an_update_kept_aside_by_ingest_is_named(redis, keys: Keys, codec: EventCodec) -> None:  # type: ignore[no-untyped-def]
    async with FakeTelegram() as tg:
        # What ingest does with an update no handler could turn into events, for the update /start will be.
        await RejectedUpdates(redis, keys).keep(Update(update_id=tg._next_update_id + 1), KeyError("x"))
        with pytest.raises(TimeoutError, match=r"; ingest kept it aside on KeyError$"):
            await conversation(tg, redis, keys, codec).run()
