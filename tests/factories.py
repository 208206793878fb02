"""Small event factories for tests: valid events with only what a test cares about."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

from eventbot.ids import new_event_id
from events import BalanceCharged, BalanceCredited, MessageReceived, chat_key, user_key

_update_ids = itertools.count(1)


def now() -> datetime:
    return datetime.now(UTC)


def message(chat_id: int = 1, text: str = "hello", *, user_id: int | None = None, topic_id: int | None = None) -> MessageReceived:
    return MessageReceived(
        event_id=new_event_id(),
        occurred_at=now(),
        partition_key=chat_key(chat_id, topic_id),
        chat_id=chat_id,
        topic_id=topic_id,
        update_id=next(_update_ids),
        message_id=next(_update_ids),
        user_id=user_id if user_id is not None else chat_id,
        chat_type="private",
        text=text,
    )


def credit(user_id: int, amount: int, *, reference: str = "test") -> BalanceCredited:
    return BalanceCredited(
        event_id=new_event_id(), occurred_at=now(), partition_key=user_key(user_id),
        user_id=user_id, amount=amount, source="admin", reference=reference,
    )


def charge(user_id: int, amount: int) -> BalanceCharged:
    charge_id = new_event_id()
    return BalanceCharged(
        event_id=new_event_id(), occurred_at=now(), partition_key=user_key(user_id),
        user_id=user_id, amount=amount, charge_id=charge_id, hold_id=None, hold_settled=0,
        model="claude-test", input_tokens=10, output_tokens=20, price_version="test",
    )
