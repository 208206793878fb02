"""The Bot API methods the fake server answers, with the checks real Telegram makes.

A mixin of :class:`eventbot.fakes.telegram.FakeTelegram`: each handler takes the
request's parameters (strings from a form, typed values from JSON) and returns the
``result`` or raises :class:`ApiError`.
"""

from __future__ import annotations

import contextlib
import html
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from eventbot.fakes.telegram_records import ApiError, Draft, Invoice, PreCheckoutAnswer, SentMessage, bad_request
from eventbot.tasks import wait_until

if TYPE_CHECKING:
    from eventbot.fakes.telegram import FakeTelegram

MAX_TEXT = 4096
MAX_DOWNLOAD = 20 * 1024 * 1024  # the public Bot API serves files up to 20 MB
Handler = Callable[[dict[str, Any]], Awaitable[Any]]
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class MethodsMixin:
    def _methods(self: FakeTelegram) -> dict[str, Handler]:
        return {
            "getme": self._get_me,
            "getupdates": self._get_updates,
            "setwebhook": self._set_webhook,
            "deletewebhook": self._delete_webhook,
            "getwebhookinfo": self._get_webhook_info,
            "sendmessage": self._send_message,
            "editmessagetext": self._edit_message_text,
            "sendmessagedraft": self._send_message_draft,
            "sendchataction": self._send_chat_action,
            "deletemessage": self._delete_message,
            "getfile": self._get_file,
            "sendinvoice": self._send_invoice,
            "answerprecheckoutquery": self._answer_pre_checkout_query,
            "answercallbackquery": self._answer_callback_query,
            "refundstarpayment": self._refund_star_payment,
            "setmycommands": self._set_my_commands,
        }

    async def _get_me(self: FakeTelegram, p: dict[str, Any]) -> Any:
        return self.bot_user()

    async def _get_updates(self: FakeTelegram, p: dict[str, Any]) -> Any:
        if self.webhook_url is not None:
            raise ApiError(409, "Conflict: can't use getUpdates method while webhook is active; "
                                "use deleteWebhook to delete the webhook first")
        offset = _int(p, "offset", 0)
        limit = min(max(_int(p, "limit", 100), 1), 100)
        timeout = max(_int(p, "timeout", 0), 0)
        if offset > 0:
            # An offset confirms every update below it: Telegram forgets them.
            self.confirmed_offset = max(self.confirmed_offset, offset)
            before = len(self._pending)
            self._pending = [u for u in self._pending if u["update_id"] >= offset]
            if len(self._pending) != before:
                self._notify_soon()  # someone may be waiting for these to be confirmed
        self._poll_generation += 1
        generation = self._poll_generation
        if not self._pending and timeout:
            with contextlib.suppress(TimeoutError):
                await wait_until(
                    self._changed, lambda: bool(self._pending) or self._poll_generation != generation or self._closing,
                    timeout,
                )
            if self._poll_generation != generation and not self._closing:
                raise ApiError(409, "Conflict: terminated by other getUpdates request; "
                                    "make sure that only one bot instance is running")
        return self._pending[:limit]

    async def _set_webhook(self: FakeTelegram, p: dict[str, Any]) -> Any:
        url = _str(p, "url", "")
        if not url:
            return await self._delete_webhook(p)
        require_loopback(url)
        self.webhook_url = url
        self.webhook_secret = p.get("secret_token") or None
        if _bool(p, "drop_pending_updates"):
            self._pending.clear()
        self._poll_generation += 1  # a long poll in progress ends
        self._start_delivering()
        return True

    async def _delete_webhook(self: FakeTelegram, p: dict[str, Any]) -> Any:
        self.webhook_url = None
        self.webhook_secret = None
        await self._stop_delivering()
        if _bool(p, "drop_pending_updates"):
            self._pending.clear()
        return True

    async def _get_webhook_info(self: FakeTelegram, p: dict[str, Any]) -> Any:
        return {"url": self.webhook_url or "", "has_custom_certificate": False,
                "pending_update_count": len(self._pending)}

    async def _send_message(self: FakeTelegram, p: dict[str, Any]) -> Any:
        chat = self._chat(p)
        text = _str(p, "text", "")
        _check_text(text, p)
        reply_to = _reply_to(p)
        message = SentMessage(
            chat_id=chat.id, message_id=self._new_message_id(chat.id), text=text,
            topic_id=_int(p, "message_thread_id", None), sent_at=time.time(),
            reply_markup=_json(p, "reply_markup"), reply_to_message_id=reply_to, history=[text],
        )
        self._sent[(chat.id, message.message_id)] = message
        return self._message_api(message, chat)

    async def _edit_message_text(self: FakeTelegram, p: dict[str, Any]) -> Any:
        chat = self._chat(p)
        message = self._sent.get((chat.id, _int(p, "message_id", 0)))
        if message is None or message.deleted:
            raise bad_request("message to edit not found")
        text = _str(p, "text", "")
        _check_text(text, p)
        markup = _json(p, "reply_markup")
        if text == message.text and markup == message.reply_markup:
            raise bad_request("message is not modified: specified new message content and reply markup are "
                              "exactly the same as a current content and reply markup of the message")
        message.text = text
        message.reply_markup = markup
        message.history.append(text)
        return self._message_api(message, chat)

    async def _send_message_draft(self: FakeTelegram, p: dict[str, Any]) -> Any:
        chat = self._chat(p)
        if chat.type != "private":
            raise bad_request("TEXTDRAFT_PEER_INVALID")
        draft_id = _int(p, "draft_id", 0)
        if draft_id == 0:
            raise bad_request("draft_id must be non-zero")
        text = _str(p, "text", "")
        if visible_length(text, p.get("parse_mode")) > MAX_TEXT:
            raise bad_request("text is too long")
        self._drafts.append(Draft(chat.id, draft_id, text, _int(p, "message_thread_id", None), time.perf_counter()))
        return True

    async def _send_chat_action(self: FakeTelegram, p: dict[str, Any]) -> Any:
        self._chat(p)
        if not _str(p, "action", ""):
            raise bad_request("action is empty")
        return True

    async def _delete_message(self: FakeTelegram, p: dict[str, Any]) -> Any:
        chat = self._chat(p)
        message = self._sent.get((chat.id, _int(p, "message_id", 0)))
        if message is None or message.deleted:
            raise bad_request("message to delete not found")
        message.deleted = True
        return True

    async def _get_file(self: FakeTelegram, p: dict[str, Any]) -> Any:
        stored = self._files.get(_str(p, "file_id", ""))
        if stored is None:
            raise bad_request("invalid file_id")
        if stored.size > MAX_DOWNLOAD:
            raise bad_request("file is too big")
        return {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id, "file_size": stored.size,
                "file_path": stored.file_path}

    async def _send_invoice(self: FakeTelegram, p: dict[str, Any]) -> Any:
        chat = self._chat(p)
        payload = _str(p, "payload", "")
        if not 1 <= len(payload.encode()) <= 128:
            raise bad_request("invoice payload must be 1-128 bytes")
        currency = _str(p, "currency", "")
        prices = _json(p, "prices") or []
        if currency == "XTR":
            if p.get("provider_token"):
                raise bad_request("provider_token must be empty for payments in Telegram Stars")
            if len(prices) != 1:
                raise bad_request("payments in Telegram Stars must have exactly one price")
        total = sum(int(item["amount"]) for item in prices)
        if total <= 0:
            raise bad_request("CURRENCY_TOTAL_AMOUNT_INVALID")
        invoice = Invoice(chat.id, _str(p, "title", ""), _str(p, "description", ""), payload, currency, total)
        message = SentMessage(chat_id=chat.id, message_id=self._new_message_id(chat.id), text="",
                              topic_id=_int(p, "message_thread_id", None), sent_at=time.time(),
                              reply_markup=_json(p, "reply_markup"), invoice=invoice)
        self._sent[(chat.id, message.message_id)] = message
        return self._message_api(message, chat)

    async def _answer_pre_checkout_query(self: FakeTelegram, p: dict[str, Any]) -> Any:
        query_id = _str(p, "pre_checkout_query_id", "")
        if query_id not in self._pre_checkout or self._pre_checkout[query_id] is not None:
            raise bad_request("QUERY_ID_INVALID")
        ok = _bool(p, "ok")
        error = p.get("error_message") or None
        if not ok and not error:
            raise bad_request("error_message is required when ok is false")
        self._pre_checkout[query_id] = PreCheckoutAnswer(ok, error, time.perf_counter())
        return True

    async def _answer_callback_query(self: FakeTelegram, p: dict[str, Any]) -> Any:
        if self._callbacks.pop(_str(p, "callback_query_id", ""), None) is None:
            raise bad_request("query is too old and response timeout expired or query ID is invalid")
        return True

    async def _refund_star_payment(self: FakeTelegram, p: dict[str, Any]) -> Any:
        charge = self._charges.get(_str(p, "telegram_payment_charge_id", ""))
        if charge is None or charge.user_id != _int(p, "user_id", 0):
            raise bad_request("CHARGE_NOT_FOUND")
        if charge.refunded:
            raise bad_request("CHARGE_ALREADY_REFUNDED")
        charge.refunded = True
        return True

    async def _set_my_commands(self: FakeTelegram, p: dict[str, Any]) -> Any:
        commands = _json(p, "commands") or []
        if len(commands) > 100:
            raise bad_request("too many commands")
        scope = _json(p, "scope") or {"type": "default"}
        self.commands[json.dumps(scope, sort_keys=True)] = commands
        return True

    def _chat(self: FakeTelegram, p: dict[str, Any]) -> Any:
        chat = self._chats.get(_int(p, "chat_id", 0))
        if chat is None:
            raise bad_request("chat not found")
        return chat


def _check_text(text: str, p: dict[str, Any]) -> None:
    length = visible_length(text, p.get("parse_mode"))
    if length == 0 or not text.strip():
        raise bad_request("message text is empty")
    if length > MAX_TEXT:
        raise bad_request("message is too long")


def _reply_to(p: dict[str, Any]) -> int | None:
    params = _json(p, "reply_parameters")
    if isinstance(params, dict) and "message_id" in params:
        return int(params["message_id"])
    return _int(p, "reply_to_message_id", None)


def _str(p: dict[str, Any], key: str, default: str) -> str:
    value = p.get(key, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(p: dict[str, Any], key: str, default: Any) -> Any:
    value = p.get(key)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise bad_request(f"field {key!r} must be an integer") from None


def _bool(p: dict[str, Any], key: str) -> bool:
    value = p.get(key, False)
    return value is True or (isinstance(value, str) and value.lower() in ("true", "1"))


def _json(p: dict[str, Any], key: str) -> Any:
    # Forms carry objects as JSON strings; JSON bodies carry them as objects.
    value = p.get(key)
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except ValueError:
            raise bad_request(f"can't parse {key} JSON object") from None
    return value


def require_loopback(url: str) -> None:
    # This fake must never send traffic off the machine, whatever a test registers.
    host = urlsplit(url).hostname
    if host not in _LOOPBACK:
        raise ApiError(400, "Bad Request: bad webhook: the fake only delivers to loopback")


def visible_length(text: str, parse_mode: str | None) -> int:
    """Characters Telegram counts against the 4096 limit: after entity parsing."""
    if parse_mode and parse_mode.upper() == "HTML":
        text = html.unescape(re.sub(r"<[^>]+>", "", text))
    elif parse_mode and parse_mode.lower().startswith("markdown"):
        text = re.sub(r"\\(.)", r"\1", re.sub(r"[*_~`|]", "", text))
    return len(text.encode("utf-16-le")) // 2
