"""The money: every change of a user's balance, as a hash-chained ledger.

Amounts are integers in micro-USD. Each event carries the per-user ``seq``,
the balance and hold total after it, and a SHA-256 chain (``prev_hash``,
``hash``) over its canonical JSON bytes; the appender fills these in.
"""

from __future__ import annotations

import hashlib
from typing import ClassVar, Literal
from uuid import UUID

import msgspec

from events.base import Event, Family

CreditSource = Literal["stars_payment", "admin", "promo"]
GENESIS_HASH = "0" * 64


class LedgerEvent(Event, frozen=True, kw_only=True):
    family: ClassVar[Family] = "ledger"
    user_id: int
    amount: int
    seq: int = 0
    balance_after: int = 0
    held_after: int = 0
    prev_hash: str = ""
    hash: str = ""

    def effect(self) -> tuple[int, int]:
        """(change of balance, change of held amount) this event makes."""
        raise NotImplementedError

    def canonical_bytes(self) -> bytes:
        return msgspec.json.encode(msgspec.structs.replace(self, hash=""))

    def computed_hash(self) -> str:
        return hashlib.sha256(self.canonical_bytes()).hexdigest()


class BalanceCredited(LedgerEvent, frozen=True, kw_only=True, tag="balance.credited"):
    source: CreditSource
    reference: str  # payment charge id, admin user id, or promo code

    def effect(self) -> tuple[int, int]:
        return self.amount, 0


class BalanceReserved(LedgerEvent, frozen=True, kw_only=True, tag="balance.reserved"):
    """A hold before a generation: the most the request can cost."""

    hold_id: UUID

    def effect(self) -> tuple[int, int]:
        return 0, self.amount


class BalanceReleased(LedgerEvent, frozen=True, kw_only=True, tag="balance.released"):
    hold_id: UUID

    def effect(self) -> tuple[int, int]:
        return 0, -self.amount


class BalanceCharged(LedgerEvent, frozen=True, kw_only=True, tag="balance.charged"):
    """Settles (part of) a hold; names what it pays for so an auditor can recompute it."""

    charge_id: UUID  # the response id: one charge per response, on every path
    hold_id: UUID | None
    hold_settled: int
    model: str
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    price_version: str

    def effect(self) -> tuple[int, int]:
        return -self.amount, -self.hold_settled


class BalanceRefunded(LedgerEvent, frozen=True, kw_only=True, tag="balance.refunded"):
    """A debit because a Stars payment was refunded to the user."""

    telegram_payment_charge_id: str

    def effect(self) -> tuple[int, int]:
        return -self.amount, 0


class PaymentReceived(Event, frozen=True, kw_only=True, tag="payment.received"):
    family: ClassVar[Family] = "ledger"
    user_id: int
    telegram_payment_charge_id: str
    provider_payment_charge_id: str = ""
    currency: str = "XTR"
    stars: int
    payload: str
    credited: int  # micro-USD credited for these Stars


class PaymentRefunded(Event, frozen=True, kw_only=True, tag="payment.refunded"):
    family: ClassVar[Family] = "ledger"
    user_id: int
    telegram_payment_charge_id: str
    stars: int
    debited: int
