"""The aiogram session every eventbot service talks to the Bot API through.

aiogram parses each reply as ``Response[method.__returning__]``, a pydantic
generic parametrised per call. pydantic (2.12 and later) caches parametrised
generics only weakly, so once the garbage collector has taken the last one,
the next reply builds the class and its validator again: about 10 ms of CPU
per Bot API call, the largest single cost of an answer in the agent's profile.
The session built here holds one of each for its whole life, so they are
built once, at start.
"""

from __future__ import annotations

import aiogram.methods as methods
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.methods import base as methods_base


def response_models() -> tuple[type, ...]:
    """``Response[T]`` for every return type of the Bot API methods aiogram knows."""
    returning = {
        cls.__returning__
        for cls in vars(methods).values()
        if isinstance(cls, type) and issubclass(cls, methods_base.TelegramMethod) and cls is not methods_base.TelegramMethod
    }
    return tuple(methods_base.Response[r] for r in returning)  # type: ignore[misc]


class BotSession(AiohttpSession):
    """An aiohttp session for ``api_url`` (Telegram itself when None) whose reply models stay built."""

    def __init__(self, api_url: str | None = None, **kwargs: object) -> None:
        if api_url:
            kwargs["api"] = TelegramAPIServer.from_base(api_url)
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.response_models = response_models()
