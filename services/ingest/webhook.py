"""The webhook endpoint: 200 only once an update's events are appended.

A request without the right ``X-Telegram-Bot-Api-Secret-Token`` gets 401 and is not
read further; a body that is not a JSON update gets 400 (Telegram would only
resend it); while Redis is unreachable the answer is 503, so Telegram keeps the
update and retries it. aiogram's ``SimpleRequestHandler`` answers before or
regardless of the append, which is why this handler exists.
"""

from __future__ import annotations

import hmac
import logging

import orjson
from aiogram import Bot, Dispatcher
from aiogram.types import Update
from aiohttp import web
from pydantic import ValidationError

from services.ingest.feeding import PerConversation, UpdateNotRecorded, conversation_key, feed_one

log = logging.getLogger("eventbot.ingest.webhook")

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_BODY = 1024 * 1024  # updates are small; anything bigger is not from Telegram


class WebhookHandler:
    def __init__(self, bot: Bot, dp: Dispatcher, secret: str) -> None:
        if not secret:
            raise ValueError("a webhook needs a secret token")
        self.bot = bot
        self.dp = dp
        self._secret = secret.encode()
        self._in_order = PerConversation()

    async def handle(self, request: web.Request) -> web.Response:
        response = await self._handle(request)
        metrics = self.dp.workflow_data.get("ingest_metrics")
        if metrics is not None:
            metrics.webhook.labels(str(response.status)).inc()
        return response

    async def _handle(self, request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, self._secret):
            return web.Response(status=401, text="unauthorized")
        try:
            body = await request.read()
            update = Update.model_validate(orjson.loads(body), context={"bot": self.bot})
        except (orjson.JSONDecodeError, ValidationError, UnicodeDecodeError):
            return web.Response(status=400, text="not an update")
        try:
            async with self._in_order.hold(conversation_key(update)):
                await feed_one(self.dp, self.bot, update)
        except UpdateNotRecorded as e:
            log.warning("update not recorded, answering 503: %s", e)
            return web.Response(status=503, text="store unavailable", headers={"Retry-After": "1"})
        return web.json_response({})


def webhook_app(bot: Bot, dp: Dispatcher, *, secret: str, path: str) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post(path, WebhookHandler(bot, dp, secret).handle)
    return app
