"""Stars payments after the invoice: crediting a charge once, refunding it at most once.

Every step is keyed by ``telegram_payment_charge_id``: the events' ids derive from
it (a redelivered ``successful_payment`` credits once), and a small per-charge
record in the payer's Redis slot lets ``/refund`` find the payment and remember
how far a refund got. The refund debits first, through ``Ledger.transact`` (so it
never takes more than was credited and is still available, even against concurrent
charges), then asks Telegram; if Telegram refuses, the debit is given back.
"""

from __future__ import annotations

import enum
import logging
from datetime import UTC, datetime
from uuid import UUID

from aiogram import Bot
from aiogram.exceptions import TelegramBadRequest
from redis.asyncio import Redis

from eventbot.errors import StoreUnavailable
from eventbot.ids import derived_id
from eventbot.keys import Keys
from eventbot.redisclient import STORE_DOWN
from eventbot.ledger import Ledger, LedgerHead
from events import BalanceCredited, BalanceRefunded, PaymentReceived, PaymentRefunded, user_key
from services.ingest.coalesce import Appends

log = logging.getLogger("eventbot.ingest.payments")


class RefundOutcome(enum.Enum):
    REFUNDED = "refunded"
    NOT_FOUND = "not_found"  # no such charge, or not this user's
    ALREADY = "already"
    SPENT = "spent"  # less is left than the payment credited
    REFUSED = "refused"  # Telegram said no; the debit was given back


class _Spent(Exception):
    pass


def charge_event_id(bot_id: int, charge_id: str, kind: str, at: datetime) -> UUID:
    return derived_id(f"tg:{bot_id}:charge:{charge_id}:{kind}", at)


class Payments:
    def __init__(self, redis: Redis, keys: Keys, appender: Appends, ledger: Ledger) -> None:
        self.redis = redis
        self.keys = keys
        self.appender = appender
        self.ledger = ledger

    def _key(self, user_id: int, charge_id: str) -> str:
        return f"{self.keys.namespace}:payment:{{{self.keys.partition_of(user_key(user_id))}}}:{user_id}:{charge_id}"

    async def credit(
        self, *, bot_id: int, user_id: int, charge_id: str, stars: int, credit: int, payload: str,
        provider_charge_id: str, paid_at: datetime, correlation_id: str,
    ) -> bool:
        """Record the payment and credit it; False if this charge was already credited.

        The first sighting of a charge fixes its time, and the event ids derive from
        charge id and that time: so the same charge in any later update maps to the
        same events, not only a redelivery of the same update.
        """
        # The record comes first so that whatever is credited can always be found by /refund.
        key = self._key(user_id, charge_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hsetnx(key, "paid_at", int(paid_at.timestamp()))
        pipe.hsetnx(key, "stars", stars)
        pipe.hsetnx(key, "credit", credit)
        pipe.hget(key, "paid_at")
        try:
            *_, first_seen = await pipe.execute()
        except STORE_DOWN as e:
            raise StoreUnavailable(f"payment record write failed: {type(e).__name__}") from e
        paid_at = datetime.fromtimestamp(int(first_seen), UTC)
        payment = PaymentReceived(
            event_id=charge_event_id(bot_id, charge_id, "payment.received", paid_at),
            occurred_at=paid_at, partition_key=user_key(user_id), correlation_id=correlation_id,
            user_id=user_id, telegram_payment_charge_id=charge_id, provider_payment_charge_id=provider_charge_id,
            stars=stars, payload=payload, credited=credit,
        )
        await self.appender.append(payment)
        if credit <= 0:
            return False
        credited = BalanceCredited(
            event_id=charge_event_id(bot_id, charge_id, "balance.credited", paid_at),
            occurred_at=paid_at, partition_key=user_key(user_id), correlation_id=correlation_id,
            causation_id=payment.event_id, user_id=user_id, amount=credit, source="stars_payment",
            reference=charge_id,
        )
        appended = await self.ledger.transact(user_id, lambda head: [credited])
        return not appended.duplicate

    async def refund(self, bot: Bot, *, user_id: int, charge_id: str, correlation_id: str) -> RefundOutcome:
        key = self._key(user_id, charge_id)
        record = await self._hgetall(key)
        if not record:
            return RefundOutcome.NOT_FOUND
        state = record.get("state", "")
        if state in ("refunded", "refused"):
            return RefundOutcome.ALREADY if state == "refunded" else RefundOutcome.REFUSED
        credit, stars = int(record["credit"]), int(record["stars"])
        paid_at = datetime.fromtimestamp(int(record["paid_at"]), UTC)
        now = datetime.now(UTC)
        if state != "debited":
            debit = BalanceRefunded(
                event_id=charge_event_id(bot.id, charge_id, "balance.refunded", paid_at),
                occurred_at=now, partition_key=user_key(user_id), correlation_id=correlation_id,
                user_id=user_id, amount=credit, telegram_payment_charge_id=charge_id,
            )

            def decide(head: LedgerHead) -> list[BalanceRefunded]:
                if head.available < credit:
                    raise _Spent
                return [debit]

            try:
                await self.ledger.transact(user_id, decide)
            except _Spent:
                return RefundOutcome.SPENT
            await self._hset(key, {"state": "debited"})
        if not await self._ask_telegram(bot, user_id, charge_id):
            await self._give_back(bot.id, user_id, charge_id, credit, paid_at, now, correlation_id)
            await self._hset(key, {"state": "refused"})
            return RefundOutcome.REFUSED
        await self.appender.append(PaymentRefunded(
            event_id=charge_event_id(bot.id, charge_id, "payment.refunded", paid_at),
            occurred_at=now, partition_key=user_key(user_id), correlation_id=correlation_id,
            user_id=user_id, telegram_payment_charge_id=charge_id, stars=stars, debited=credit,
        ))
        await self._hset(key, {"state": "refunded"})
        return RefundOutcome.REFUNDED

    async def _ask_telegram(self, bot: Bot, user_id: int, charge_id: str) -> bool:
        try:
            await bot.refund_star_payment(user_id=user_id, telegram_payment_charge_id=charge_id)
        except TelegramBadRequest as e:
            # A retry after a crash finds the Stars already returned: that is success.
            if "CHARGE_ALREADY_REFUNDED" in e.message:
                return True
            log.warning("Telegram refused a Stars refund: %s", e.message.split(":")[-1].strip()[:80])
            return False
        return True

    async def _give_back(
        self, bot_id: int, user_id: int, charge_id: str, credit: int, paid_at: datetime, now: datetime,
        correlation_id: str,
    ) -> None:
        back = BalanceCredited(
            event_id=charge_event_id(bot_id, charge_id, "refund.reverted", paid_at),
            occurred_at=now, partition_key=user_key(user_id), correlation_id=correlation_id,
            user_id=user_id, amount=credit, source="stars_payment", reference=charge_id,
        )
        await self.ledger.transact(user_id, lambda head: [back])

    async def _hset(self, key: str, mapping: dict[str, object]) -> None:
        try:
            await self.redis.hset(key, mapping=mapping)
        except STORE_DOWN as e:
            raise StoreUnavailable(f"payment record write failed: {type(e).__name__}") from e

    async def _hgetall(self, key: str) -> dict[str, str]:
        try:
            raw = await self.redis.hgetall(key)
        except STORE_DOWN as e:
            raise StoreUnavailable(f"payment record read failed: {type(e).__name__}") from e
        return {k.decode(): v.decode() for k, v in raw.items()}
