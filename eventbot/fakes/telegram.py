"""A fake Telegram Bot API server on loopback, for tests, the demo and benchmarks.

The real aiogram client talks to it through ``TelegramAPIServer.from_base(fake.base_url)``.
It serves ``/bot<token>/<method>`` with the real envelope and JSON, urlencoded or
multipart bodies, and ``/file/bot<token>/<path>`` downloads. It enforces what real
Telegram enforces that a bot must cope with (4096-character texts, "message is not
modified", 429 with ``retry_after`` in flood mode), records every call with a
``time.perf_counter()`` timestamp, and lets a test play the user: a message, a file,
a button press, a pre-checkout query, a payment, delivered by ``getUpdates`` long
polling or as webhook POSTs carrying the secret header (retried until answered 200,
as Telegram does).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
from aiohttp import web

from eventbot.fakes import telegram_updates as tgu
from eventbot.fakes.telegram_methods import MethodsMixin, require_loopback, visible_length
from eventbot.fakes.telegram_records import (
    ApiError,
    Call,
    Charge,
    Draft,
    Invoice,
    PreCheckoutAnswer,
    SentMessage,
    StoredFile,
    WebhookDelivery,
)
from eventbot.fakes.telegram_updates import FileKind, TgChat, TgUser
from eventbot.tasks import wait_until

__all__ = [
    "FakeTelegram", "TgUser", "TgChat", "Call", "SentMessage", "Draft", "Invoice", "StoredFile",
    "Charge", "PreCheckoutAnswer", "WebhookDelivery", "SECRET_HEADER", "visible_length",
]

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
_ANY = object()


class FakeTelegram(MethodsMixin):
    def __init__(
        self,
        *,
        bot_id: int = 700_000_001,
        username: str = "eventbot_test_bot",
        token: str | None = None,
        webhook_retry_s: float = 0.05,
    ) -> None:
        self.bot_id = bot_id
        self.username = username
        self.token = token or f"{bot_id}:{secrets.token_urlsafe(24)}"
        self.webhook_retry_s = webhook_retry_s
        self._calls: list[Call] = []
        self._sent: dict[tuple[int, int], SentMessage] = {}
        self._user_messages: dict[tuple[int, int], dict[str, Any]] = {}
        self._drafts: list[Draft] = []
        self._chats: dict[int, TgChat] = {}
        self._next_message_id: dict[int, int] = {}
        self._files: dict[str, StoredFile] = {}
        self._charges: dict[str, Charge] = {}
        self._pre_checkout: dict[str, PreCheckoutAnswer | None] = {}
        self._callbacks: dict[str, dict[str, Any]] = {}
        self.commands: dict[str, list[dict[str, Any]]] = {}
        # Updates not yet confirmed, in update_id order.
        self._pending: list[dict[str, Any]] = []
        self._next_update_id = 10_000
        self.confirmed_offset = 0
        self._poll_generation = 0
        self._closing = False
        self.webhook_url: str | None = None
        self.webhook_secret: str | None = None
        self.webhook_deliveries: list[WebhookDelivery] = []
        self._flood: dict[str, Any] | None = None
        self._changed = asyncio.Condition()
        self._notifiers: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._client: aiohttp.ClientSession | None = None
        self._deliverer: asyncio.Task[None] | None = None

    # ----- lifecycle -------------------------------------------------------

    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", r"/bot{token}/{method}", self._api)
        app.router.add_get(r"/file/bot{token}/{path:.+}", self._download)
        # No access log: every request path carries the bot token.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        self._client = aiohttp.ClientSession()
        return self.base_url

    async def stop(self) -> None:
        # Long polls in progress return now rather than holding the server's shutdown.
        self._closing = True
        async with self._changed:
            self._changed.notify_all()
        await self._stop_delivering()
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None

    async def __aenter__(self) -> FakeTelegram:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def api_server(self) -> Any:
        """An aiogram ``TelegramAPIServer`` pointing at this fake."""
        from aiogram.client.telegram import TelegramAPIServer

        return TelegramAPIServer.from_base(self.base_url)

    def bot_user(self) -> dict[str, Any]:
        return {"id": self.bot_id, "is_bot": True, "first_name": "Eventbot", "username": self.username,
                "can_join_groups": True, "can_read_all_group_messages": False, "supports_inline_queries": False}

    # ----- playing the user -------------------------------------------------

    def send_text(
        self, user: TgUser, text: str, *, chat: TgChat | None = None, topic_id: int | None = None,
        reply_to_message_id: int | None = None, deliver: bool = True,
    ) -> dict[str, Any]:
        """The user sends ``text``; returns the update (queued for the bot unless ``deliver`` is False)."""
        msg = self._user_message(user, chat, topic_id, reply_to_message_id, text=text)
        return self._update({"message": msg}, deliver)

    def send_file(
        self, user: TgUser, kind: FileKind, data: bytes, *, chat: TgChat | None = None, name: str | None = None,
        mime_type: str | None = None, caption: str | None = None, size: int | None = None,
        topic_id: int | None = None, deliver: bool = True,
    ) -> dict[str, Any]:
        """The user sends a file; ``size`` may claim more than ``len(data)`` to stand for a huge one."""
        stored = self.add_file(data, size=size)
        fields = tgu.file_fields(kind, file_id=stored.file_id, file_unique_id=stored.file_unique_id,
                                 size=stored.size, name=name, mime_type=mime_type)
        if kind == "photo":
            self.add_file(data[:1024], file_id=f"{stored.file_id}-s", unique_id=f"{stored.file_unique_id}-s")
        msg = self._user_message(user, chat, topic_id, None, caption=caption, extra=fields)
        return self._update({"message": msg}, deliver)

    def edit_text(self, update: dict[str, Any], text: str, *, deliver: bool = True) -> dict[str, Any]:
        """The user edits the message of ``update``."""
        msg = dict(update["message"])
        msg.pop("entities", None)
        msg |= {"text": text, "edit_date": int(time.time())}
        if entities := tgu.entities_of(text):
            msg["entities"] = entities
        self._user_messages[(msg["chat"]["id"], msg["message_id"])] = msg
        return self._update({"edited_message": msg}, deliver)

    def press_button(self, user: TgUser, message: SentMessage, data: str, *, deliver: bool = True) -> dict[str, Any]:
        chat = self._chats[message.chat_id]
        query_id = secrets.token_hex(8)
        query = {"id": query_id, "from": user.to_api(), "chat_instance": str(message.chat_id), "data": data,
                 "message": self._message_api(message, chat)}
        self._callbacks[query_id] = query
        return self._update({"callback_query": query}, deliver)

    def pre_checkout(
        self, user: TgUser, *, payload: str, stars: int, currency: str = "XTR", deliver: bool = True
    ) -> dict[str, Any]:
        query_id = secrets.token_hex(8)
        self._pre_checkout[query_id] = None
        query = {"id": query_id, "from": user.to_api(), "currency": currency, "total_amount": stars,
                 "invoice_payload": payload}
        return self._update({"pre_checkout_query": query}, deliver)

    def successful_payment(
        self, user: TgUser, *, payload: str, stars: int, chat: TgChat | None = None,
        charge_id: str | None = None, deliver: bool = True,
    ) -> dict[str, Any]:
        charge_id = charge_id or f"stxfake{secrets.token_hex(12)}"
        payment = {"currency": "XTR", "total_amount": stars, "invoice_payload": payload,
                   "telegram_payment_charge_id": charge_id, "provider_payment_charge_id": ""}
        msg = self._user_message(user, chat, None, None, extra={"successful_payment": payment})
        update = self._update({"message": msg}, deliver)
        self._charges.setdefault(charge_id, Charge(charge_id, user.id, stars, payload, update["update_id"]))
        return update

    async def pay(self, user: TgUser, invoice: SentMessage, *, timeout: float = 10.0) -> str | None:
        """What Telegram does when the user pays ``invoice``: pre-checkout, then the payment.

        Returns the charge id, or None when the bot refused the pre-checkout query.
        """
        assert invoice.invoice is not None, "not an invoice"
        inv = invoice.invoice
        update = self.pre_checkout(user, payload=inv.payload, stars=inv.total_amount, currency=inv.currency)
        query_id = update["pre_checkout_query"]["id"]
        await self.wait_for(lambda: self._pre_checkout[query_id] is not None, timeout)
        answer = self._pre_checkout[query_id]
        if answer is None or not answer.ok:
            return None
        paid = self.successful_payment(user, payload=inv.payload, stars=inv.total_amount,
                                       chat=self._chats[invoice.chat_id])
        return paid["message"]["successful_payment"]["telegram_payment_charge_id"]

    def redeliver(self, update: dict[str, Any]) -> None:
        """Queue ``update`` again with its own update_id, as Telegram does when unsure it arrived.

        For a webhook it is POSTed again; by polling it is returned again unless an
        offset already confirmed it (Telegram never resends a confirmed update).
        """
        self._pending.append(update)
        self._pending.sort(key=lambda u: u["update_id"])
        self._notify_soon()

    async def post_webhook(
        self, update: dict[str, Any] | None = None, *, secret: str | None | object = _ANY, body: bytes | None = None,
        url: str | None = None,
    ) -> int:
        """POST one update (or a raw ``body``) to the webhook now; returns the HTTP status."""
        assert self._client is not None, "start() the fake first"
        target = url or self.webhook_url
        assert target is not None, "no webhook set"
        require_loopback(target)
        secret = self.webhook_secret if secret is _ANY else secret
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers[SECRET_HEADER] = str(secret)
        data = body if body is not None else json.dumps(update).encode()
        try:
            async with self._client.post(target, data=data, headers=headers) as resp:
                await resp.read()
                return resp.status
        except (aiohttp.ClientError, OSError):
            return 0

    def add_file(
        self, data: bytes, *, size: int | None = None, file_id: str | None = None, unique_id: str | None = None
    ) -> StoredFile:
        unique_id = unique_id or f"AQAD{secrets.token_hex(6)}"
        file_id = file_id or f"BQACAgI{secrets.token_hex(16)}"
        stored = StoredFile(file_id, unique_id, f"documents/file_{len(self._files)}", data,
                            len(data) if size is None else size)
        self._files[file_id] = stored
        return stored

    # ----- flood mode --------------------------------------------------------

    def flood(self, retry_after: int = 1, *, methods: Iterable[str] | None = None, times: int | None = None,
              chat_id: int | None = None) -> None:
        """Answer 429 with ``retry_after`` to matching calls (``times`` of them, or until ``calm()``)."""
        self._flood = {"retry_after": retry_after, "methods": {m.lower() for m in methods} if methods else None,
                       "times": times, "chat_id": chat_id}

    def calm(self) -> None:
        self._flood = None

    def _flooded(self, method: str, params: dict[str, Any]) -> ApiError | None:
        f = self._flood
        if f is None or (f["methods"] is not None and method.lower() not in f["methods"]):
            return None
        if f["chat_id"] is not None and str(params.get("chat_id")) != str(f["chat_id"]):
            return None
        if f["times"] is not None:
            f["times"] -= 1
            if f["times"] <= 0:
                self._flood = None
        after = f["retry_after"]
        return ApiError(429, f"Too Many Requests: retry after {after}", {"retry_after": after})

    # ----- what the bot did --------------------------------------------------

    def calls(self, method: str | None = None) -> list[Call]:
        return [c for c in self._calls if method is None or c.method.lower() == method.lower()]

    def messages(self, chat_id: int, *, topic_id: int | None | object = _ANY,
                 include_deleted: bool = False) -> list[SentMessage]:
        """The bot's messages in a chat (and topic), oldest first, as they read now."""
        return [m for (c, _), m in sorted(self._sent.items()) if c == chat_id
                and (topic_id is _ANY or m.topic_id == topic_id) and (include_deleted or not m.deleted)]

    def texts(self, chat_id: int, *, topic_id: int | None | object = _ANY) -> list[str]:
        """Final texts of the bot's (undeleted) messages in a chat."""
        return [m.text for m in self.messages(chat_id, topic_id=topic_id)]

    def drafts(self, chat_id: int) -> list[Draft]:
        return [d for d in self._drafts if d.chat_id == chat_id]

    def edits(self, chat_id: int) -> list[Call]:
        return [c for c in self.calls("editMessageText") if c.ok and str(c.params.get("chat_id")) == str(chat_id)]

    def invoices(self, chat_id: int | None = None) -> list[SentMessage]:
        return [m for m in self._sent.values() if m.invoice is not None and chat_id in (None, m.chat_id)]

    def pre_checkout_answer(self, update: dict[str, Any]) -> PreCheckoutAnswer | None:
        return self._pre_checkout.get(update["pre_checkout_query"]["id"])

    def charge(self, charge_id: str) -> Charge | None:
        return self._charges.get(charge_id)

    def whereabouts(self, update_id: int) -> str:
        """Where an update is on its way to the bot: for a wait that ran out, to say which side stalled."""
        pending = self.pending_update_ids
        answers = Counter(d.status for d in self.webhook_deliveries if d.update_id == update_id)
        if update_id not in pending:
            where = "confirmed by the bot"
        else:
            where = f"still with Telegram, {pending.index(update_id) + 1} of {len(pending)} pending"
            if pending[0] != update_id:
                oldest = Counter(d.status for d in self.webhook_deliveries if d.update_id == pending[0])
                where += f" behind update {pending[0]} (webhook answers {dict(oldest)})"
        how = f"webhook answers {dict(answers)}" if self.webhook_url or answers else f"polled, offset {self.confirmed_offset}"
        return f"update {update_id} {where}; {how}"

    @property
    def pending_update_ids(self) -> list[int]:
        """Updates Telegram still holds: not confirmed by an offset or a webhook 200."""
        return [u["update_id"] for u in self._pending]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` holds; it is re-checked after every call and delivery."""
        await wait_until(self._changed, predicate, timeout)

    # ----- HTTP ----------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        started = time.perf_counter()
        params: dict[str, Any] = {}
        try:
            if request.match_info["token"] != self.token:
                raise ApiError(401, "Unauthorized")
            params = await _params(request)
            handler = self._methods().get(method.lower())
            if handler is None:
                raise ApiError(404, "Not Found: method not found")
            if flooded := self._flooded(method, params):
                raise flooded
            result = await handler(params)
            body, status, error = {"ok": True, "result": result}, 200, None
        except ApiError as e:
            body, status, error = e.envelope(), e.code, e.description
        except (ValueError, KeyError, TypeError) as e:
            body, status, error = ApiError(400, f"Bad Request: {e}").envelope(), 400, f"Bad Request: {e}"
        self._calls.append(Call(method, params, started, status, error))
        self._notify_soon()
        return web.json_response(body, status=status)

    async def _download(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            raise web.HTTPUnauthorized()
        path = request.match_info["path"]
        for f in self._files.values():
            if f.file_path == path and not f.link_expired:
                return web.Response(body=f.data, content_type="application/octet-stream")
        raise web.HTTPNotFound()

    # ----- internals shared with the method handlers ----------------------------

    def _user_message(
        self, user: TgUser, chat: TgChat | None, topic_id: int | None, reply_to_message_id: int | None,
        *, text: str | None = None, caption: str | None = None, extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        chat = chat or TgChat.private(user)
        self._chats[chat.id] = chat
        reply_to = None
        if reply_to_message_id is not None:
            sent = self._sent.get((chat.id, reply_to_message_id))
            reply_to = (self._message_api(sent, chat) if sent is not None
                        else self._user_messages.get((chat.id, reply_to_message_id)))
        msg = tgu.message(message_id=self._new_message_id(chat.id), date=int(time.time()), chat=chat, user=user,
                          text=text, caption=caption, topic_id=topic_id, reply_to=reply_to, extra=extra)
        self._user_messages[(chat.id, msg["message_id"])] = msg
        return msg

    def _message_api(self, m: SentMessage, chat: TgChat) -> dict[str, Any]:
        out = tgu.message(message_id=m.message_id, date=int(m.sent_at), chat=chat, user=None, topic_id=m.topic_id)
        out["from"] = self.bot_user()
        out["text"] = m.text
        if m.reply_markup:
            out["reply_markup"] = m.reply_markup
        if m.invoice is not None:
            inv = m.invoice
            out.pop("text")
            out["invoice"] = {"title": inv.title, "description": inv.description, "start_parameter": "",
                              "currency": inv.currency, "total_amount": inv.total_amount}
        return out

    def _new_message_id(self, chat_id: int) -> int:
        self._next_message_id[chat_id] = self._next_message_id.get(chat_id, 0) + 1
        return self._next_message_id[chat_id]

    def _update(self, body: dict[str, Any], deliver: bool) -> dict[str, Any]:
        self._next_update_id += 1
        update = {"update_id": self._next_update_id, **body}
        if deliver:
            self._pending.append(update)
            self._notify_soon()
        return update

    def _notify_soon(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        # Builders are sync; wake waiters (long polls, wait_for, the webhook deliverer) from the loop.
        task = asyncio.get_running_loop().create_task(notify())
        self._notifiers.add(task)  # the loop holds tasks weakly: keep it until done
        task.add_done_callback(self._notifiers.discard)

    # ----- webhook delivery ----------------------------------------------------------

    def _start_delivering(self) -> None:
        if self._deliverer is None or self._deliverer.done():
            self._deliverer = asyncio.get_running_loop().create_task(self._deliver_forever())

    async def _stop_delivering(self) -> None:
        if self._deliverer is not None:
            self._deliverer.cancel()
            try:
                await self._deliverer
            except asyncio.CancelledError:
                pass
            self._deliverer = None

    async def _deliver_forever(self) -> None:
        """Like Telegram: POST the oldest pending update until it gets a 200, then the next."""
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: bool(self._pending) and self.webhook_url is not None)
            update = self._pending[0]
            status = await self.post_webhook(update)
            self.webhook_deliveries.append(WebhookDelivery(update["update_id"], status, time.perf_counter()))
            if status == 200 and self._pending and self._pending[0] is update:
                self._pending.pop(0)
            self._notify_soon()  # waiters re-check after every delivery, answered or not
            if status != 200:
                await asyncio.sleep(self.webhook_retry_s)


async def _params(request: web.Request) -> dict[str, Any]:
    """Method parameters from the query string and a JSON, urlencoded or multipart body."""
    params: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        body = await request.json()
        if not isinstance(body, dict):
            raise ApiError(400, "Bad Request: parameters must be a JSON object")
        params.update(body)
    elif request.can_read_body:
        form = await request.post()
        for key, value in form.items():
            params[key] = value.file.read() if isinstance(value, web.FileField) else value
    return params
