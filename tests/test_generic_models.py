"""Generic reply models that aiogram builds per call stay built while held (pydantic caches them weakly)."""

from __future__ import annotations

import gc

from aiogram.methods.base import Response
from aiogram.types import Message

from eventbot.telegram import BotSession


async def test_reply_models_are_not_rebuilt_after_a_collection_while_the_session_lives() -> None:
    session = BotSession("http://127.0.0.1:9")
    try:
        held = {id(model) for model in session.response_models}
        gc.collect()
        # What aiogram computes for every sendMessage reply: the one built at start, not a new class.
        assert id(Response[Message]) in held
        assert id(Response[bool]) in held
    finally:
        await session.close()
