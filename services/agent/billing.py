"""Holds and charges for one response, exactly once on every path.

Every ledger event of a response has an id derived from the response id, so an
agent that takes over a generation (or a retried settle) appends nothing new:
the ledger's dedupe answers "already there". When a hold turns out to exist
already, its stored event is read back so the settlement releases what was
really held, not what a fresh estimate would be.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from uuid import UUID

import msgspec
from redis.asyncio import Redis

from eventbot.errors import LedgerConflict
from eventbot.ids import derived_id
from eventbot.keys import Keys
from eventbot.ledger import Ledger, LedgerAppended, LedgerHead
from events import BalanceCharged, BalanceReleased, BalanceReserved, Event, EventCodec, LedgerEvent, Usage, user_key
from services.agent.holds import MIN_USEFUL_TOKENS, HoldPlan, InsufficientBalance
from services.agent.pricing import PriceTable


class Hold(msgspec.Struct, frozen=True):
    hold_id: UUID
    amount: int
    max_tokens: int
    existed: bool = False  # placed by an earlier attempt (a takeover)


class Settlement(msgspec.Struct, frozen=True):
    cost: int
    charged: bool  # False: this response had been charged already


def ledger_ids(response_id: UUID, at: datetime) -> tuple[UUID, UUID, UUID]:
    """(hold event id, charge event id, release event id) of a response."""
    return (
        derived_id(f"hold:{response_id}", at),
        derived_id(f"charge:{response_id}", at),
        derived_id(f"release:{response_id}", at),
    )


class Billing:
    def __init__(self, ledger: Ledger, redis: Redis, keys: Keys, codec: EventCodec, prices: PriceTable) -> None:
        self.ledger = ledger
        self.redis = redis
        self.keys = keys
        self.codec = codec
        self.prices = prices

    async def hold(
        self, user_id: int, response_id: UUID, at: datetime, plan: Callable[[int], HoldPlan],
        *, retry: bool = False, correlation_id: str | None = None,
    ) -> Hold:
        """Reserve what ``plan(available)`` decides (it may raise to refuse).

        ``retry``: this response may have been started before (a redelivery), so
        look for its hold first; an existing hold reduces ``available`` and must
        not make the takeover refuse.
        """
        hold_event_id, _, _ = ledger_ids(response_id, at)
        if retry and (existing := await self._existing_hold(user_id, response_id, hold_event_id, plan)) is not None:
            return existing
        decided: list[HoldPlan] = []

        def decide(head: LedgerHead) -> list[LedgerEvent]:
            p = plan(head.available)
            decided.append(p)
            return [BalanceReserved(
                event_id=hold_event_id, occurred_at=_now(), partition_key=user_key(user_id),
                correlation_id=correlation_id, causation_id=response_id,
                user_id=user_id, amount=p.amount, hold_id=response_id,
            )]

        appended = await self._transact(user_id, decide)
        if not appended.duplicate:
            return Hold(response_id, decided[-1].amount, decided[-1].max_tokens)
        existing = await self._existing_hold(user_id, response_id, hold_event_id, plan)
        if existing is None:
            raise LedgerConflict(f"hold of response {response_id} is marked appended but can't be read back")
        return existing

    async def existing_hold(self, user_id: int, response_id: UUID, at: datetime) -> Hold | None:
        """The hold a response placed, if any (for settling a response another agent ended)."""
        hold_event_id, _, _ = ledger_ids(response_id, at)
        stored = await self._stored_ledger_event(user_id, hold_event_id)
        return Hold(response_id, stored.amount, 0, existed=True) if isinstance(stored, BalanceReserved) else None

    async def _existing_hold(
        self, user_id: int, response_id: UUID, hold_event_id: UUID, plan: Callable[[int], HoldPlan]
    ) -> Hold | None:
        stored = await self._stored_ledger_event(user_id, hold_event_id)
        if not isinstance(stored, BalanceReserved):
            return None
        # The earlier attempt's hold stands; answer within what it covers, never more.
        try:
            max_tokens = plan(stored.amount).max_tokens
        except InsufficientBalance:
            max_tokens = MIN_USEFUL_TOKENS
        return Hold(response_id, stored.amount, max_tokens, existed=True)

    async def settle(
        self, user_id: int, response_id: UUID, at: datetime, hold: Hold, model: str, usage: Usage,
        *, correlation_id: str | None = None,
    ) -> Settlement:
        """Charge the cost of ``usage`` against the hold and release the rest, once."""
        _, charge_id, release_id = ledger_ids(response_id, at)
        amount = self.prices.cost(model, usage)
        settled = min(amount, hold.amount)
        events: list[LedgerEvent] = []
        common = dict(partition_key=user_key(user_id), correlation_id=correlation_id, causation_id=response_id, user_id=user_id)
        # A zero charge is still recorded: the auditor sees the response was settled at no cost.
        events.append(BalanceCharged(
            event_id=charge_id, occurred_at=_now(), amount=amount, charge_id=response_id, hold_id=hold.hold_id,
            hold_settled=settled, model=model, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens, cache_write_tokens=usage.cache_write_tokens,
            price_version=self.prices.version, **common,
        ))
        if hold.amount > settled:
            events.append(BalanceReleased(
                event_id=release_id, occurred_at=_now(), amount=hold.amount - settled, hold_id=hold.hold_id, **common,
            ))
        appended = await self._transact(user_id, lambda head: events)
        return Settlement(amount, charged=not appended.duplicate)

    async def release(self, user_id: int, response_id: UUID, at: datetime, hold: Hold, *, correlation_id: str | None = None) -> None:
        """Nothing was produced (refused, failed before the first token): give the whole hold back."""
        _, _, release_id = ledger_ids(response_id, at)
        event = BalanceReleased(
            event_id=release_id, occurred_at=_now(), partition_key=user_key(user_id), correlation_id=correlation_id,
            causation_id=response_id, user_id=user_id, amount=hold.amount, hold_id=hold.hold_id,
        )
        await self._transact(user_id, lambda head: [event])

    async def _transact(self, user_id: int, decide: Callable[[LedgerHead], list[LedgerEvent]]) -> LedgerAppended:
        return await self.ledger.transact(user_id, decide)

    async def _stored_ledger_event(self, user_id: int, event_id: UUID) -> Event | None:
        return await stored_event(self.redis, self.keys, self.codec, self.keys.partition_of(str(user_id)), "ledger", event_id)


async def stored_event(redis: Redis, keys: Keys, codec: EventCodec, partition: int, family: str, event_id: UUID) -> Event | None:
    """Read back an appended event by id: its dedupe marker holds the stream entry id."""
    entry = await redis.get(keys.seen(partition, event_id))
    if entry is None:
        return None
    entry_id = entry.decode() if isinstance(entry, bytes) else entry
    rows = await redis.xrange(keys.stream(family, partition), entry_id, entry_id)  # type: ignore[arg-type]
    if not rows:
        return None  # trimmed: it was archived long ago
    fields = rows[0][1]
    return codec.decode(fields[b"t"].decode(), int(fields[b"v"]), fields[b"d"])


def _now() -> datetime:
    return datetime.now(timezone.utc)
