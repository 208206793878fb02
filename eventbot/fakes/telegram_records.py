"""What the fake Bot API server remembers: every call, the bot's messages, drafts, files, payments.

Plain records that tests read (``fake.messages(chat_id)``, ``fake.calls("sendMessage")``)
to check what a user would have seen in Telegram.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ApiError(Exception):
    """A Bot API error answer: ``{"ok": false, "error_code", "description", "parameters"}``."""

    def __init__(self, code: int, description: str, parameters: dict[str, Any] | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters

    def envelope(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": False, "error_code": self.code, "description": self.description}
        if self.parameters:
            out["parameters"] = self.parameters
        return out


def bad_request(what: str) -> ApiError:
    return ApiError(400, f"Bad Request: {what}")


@dataclass(frozen=True)
class Call:
    """One request the bot made; ``at`` is ``time.perf_counter()`` when it arrived."""

    method: str
    params: dict[str, Any]
    at: float
    status: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class SentMessage:
    """A message the bot sent, as the chat shows it now (``text`` after edits)."""

    chat_id: int
    message_id: int
    text: str
    topic_id: int | None
    sent_at: float
    reply_markup: dict[str, Any] | None = None
    reply_to_message_id: int | None = None
    history: list[str] = field(default_factory=list)  # every text it had, first to last
    deleted: bool = False
    invoice: Invoice | None = None

    @property
    def edited(self) -> bool:
        return len(self.history) > 1

    def buttons(self) -> list[tuple[str, str]]:
        """(label, callback_data) of its inline keyboard, row by row."""
        rows = (self.reply_markup or {}).get("inline_keyboard", [])
        return [(b.get("text", ""), b.get("callback_data", "")) for row in rows for b in row]


@dataclass(frozen=True)
class Draft:
    chat_id: int
    draft_id: int
    text: str
    topic_id: int | None
    at: float


@dataclass(frozen=True)
class Invoice:
    chat_id: int
    title: str
    description: str
    payload: str
    currency: str
    total_amount: int


@dataclass
class StoredFile:
    file_id: str
    file_unique_id: str
    file_path: str
    data: bytes
    size: int  # what Telegram reports; may exceed len(data) to stand for a huge file
    link_expired: bool = False  # Telegram's download links last an hour; then they 404


@dataclass
class Charge:
    charge_id: str
    user_id: int
    stars: int
    payload: str
    update_id: int  # the successful_payment that first told the bot
    refunded: bool = False


@dataclass(frozen=True)
class PreCheckoutAnswer:
    ok: bool
    error_message: str | None
    at: float


@dataclass(frozen=True)
class WebhookDelivery:
    update_id: int
    status: int  # 0 when the connection failed
    at: float
