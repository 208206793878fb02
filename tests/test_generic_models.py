"""Generic reply models that aiogram and the anthropic SDK build per call stay built while held (pydantic caches them weakly)."""

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


def test_the_answerers_stream_models_survive_a_collection() -> None:
    from anthropic.types.parsed_message import ParsedMessage, ResponseFormatT

    from services.agent.model import stream_models

    held = stream_models()
    gc.collect()
    # What the SDK's accumulator builds at every message_start: the held one, not a new class.
    assert ParsedMessage[ResponseFormatT] is held[0]
