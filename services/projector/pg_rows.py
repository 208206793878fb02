"""What each event changes in the Postgres tables, as column patches (pure, no I/O).

A patch sets some columns of one row, named by table and key. Patches of one
batch are merged per row in event order (later wins) before they are written;
the upsert then applies each column group only if its version is newer than the
row's (see ``pg_tables``), so the same code serves the live projector and a replay.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from events import (
    BalanceCharged,
    BalanceCredited,
    BalanceRefunded,
    BalanceReleased,
    BalanceReserved,
    CommandIssued,
    Event,
    FileRefused,
    FileUploaded,
    LedgerEvent,
    MessageEdited,
    MessageReceived,
    ModelChanged,
    PaymentReceived,
    PaymentRefunded,
    PromptChanged,
    ResponseCancelled,
    ResponseCompleted,
    ResponseFailed,
    ResponseStarted,
    ThreadCreated,
    ThreadRenamed,
    Usage,
    UserProfileChanged,
    UserSeen,
)

Patch = tuple[str, Any, dict[str, Any]]  # (table, key, columns)


def patches(event: Event) -> Iterator[Patch]:
    at = event.occurred_at
    match event:
        case UserSeen() | UserProfileChanged():
            yield "users", event.user_id, {
                "username": event.username, "first_name": event.first_name, "last_name": event.last_name,
                "language_code": event.language_code, "names_at": at, "first_seen_at": at,
                **({"is_premium": event.is_premium} if isinstance(event, UserSeen) else {}),
            }
            yield from _chat(event.chat_id, None, at)
        case MessageReceived():
            yield "messages", f"{event.chat_id}:{event.message_id}", {
                "role": "user", "chat_id": event.chat_id, "topic_id": event.topic_id,
                "message_id": event.message_id, "user_id": event.user_id, "text": event.text,
                "caption": event.caption, "attachments": _json(event.attachments),
                "disposition": event.disposition, "occurred_at": at,
            }
            yield from _chat(event.chat_id, event.chat_type, at, message=True)
            yield "users", event.user_id, {"first_seen_at": at}
        case MessageEdited():
            yield "messages", f"{event.chat_id}:{event.message_id}", {
                "role": "user", "chat_id": event.chat_id, "topic_id": event.topic_id,
                "message_id": event.message_id, "user_id": event.user_id,
                "edited_text": event.text, "edited_caption": event.caption, "edited_at": at,
            }
        case FileUploaded() | FileRefused():
            refused = isinstance(event, FileRefused)
            f = event.file
            yield "files", f"{event.chat_id}:{event.message_id}:{f.file_unique_id}", {
                "chat_id": event.chat_id, "topic_id": event.topic_id, "message_id": event.message_id,
                "user_id": event.user_id, "kind": f.kind, "file_id": f.file_id,
                "file_unique_id": f.file_unique_id, "mime_type": f.mime_type, "size": f.size, "name": f.name,
                "status": "refused" if refused else "uploaded",
                "reason": event.reason if refused else None, "occurred_at": at,
            }
        case ThreadCreated():
            yield "threads", event.thread_id, {
                "chat_id": event.chat_id, "topic_id": event.topic_id, "user_id": event.user_id,
                "created_at": at, "title": event.title, "title_at": at,
            }
        case ThreadRenamed():
            yield "threads", event.thread_id, {"chat_id": event.chat_id, "topic_id": event.topic_id,
                                               "title": event.title, "title_at": at}
        case ModelChanged():
            yield "users", event.user_id, {"model": event.model, "model_at": at}
        case PromptChanged():
            yield "users", event.user_id, {"prompt": event.prompt, "prompt_at": at}
        case CommandIssued():
            yield "users", event.user_id, {"first_seen_at": at}
        case ResponseStarted():
            yield "responses", event.response_id, {
                "chat_id": event.chat_id, "topic_id": event.topic_id, "user_id": event.user_id,
                "thread_id": event.thread_id, "model": event.model, "max_tokens": event.max_tokens,
                "attempt": event.attempt, "message_ids": list(event.message_ids), "started_at": at,
                "state": "started",
            }
        case ResponseCompleted():
            yield "responses", event.response_id, {
                "chat_id": event.chat_id, "topic_id": event.topic_id, "user_id": event.user_id,
                "state": "completed", "finished_at": at, "stop_reason": event.stop_reason,
                "ttft_ms": event.ttft_ms, "duration_ms": event.duration_ms, **_usage(event.usage),
                "cost": event.cost, "telegram_message_ids": list(event.telegram_message_ids),
            }
            yield _assistant(event, event.text, event.usage, event.cost)
        case ResponseFailed() | ResponseCancelled():
            failed = isinstance(event, ResponseFailed)
            yield "responses", event.response_id, {
                "chat_id": event.chat_id, "topic_id": event.topic_id, "user_id": event.user_id,
                "state": "failed" if failed else "cancelled", "finished_at": at,
                "cause": event.cause if failed else event.reason, **_usage(event.usage), "cost": event.cost,
            }
            if event.partial_text:  # what the user saw (and paid for) is part of the conversation
                yield _assistant(event, event.partial_text, event.usage, event.cost)
        case LedgerEvent():
            yield "balance_operations", (event.user_id, event.seq), _operation(event)
            yield "users", event.user_id, {
                "balance": event.balance_after, "held": event.held_after, "ledger_seq": event.seq,
            }
        case PaymentReceived():
            yield "payments", event.telegram_payment_charge_id, {
                "user_id": event.user_id, "stars": event.stars, "currency": event.currency,
                "payload": event.payload, "provider_payment_charge_id": event.provider_payment_charge_id,
                "credited": event.credited, "received_at": at,
            }
        case PaymentRefunded():
            yield "payments", event.telegram_payment_charge_id, {
                "user_id": event.user_id, "refunded_stars": event.stars, "debited": event.debited, "refunded_at": at,
            }
        case _:
            pass  # token deltas and future types: archived in event_log only


def _chat(chat_id: int, chat_type: str | None, at: Any, *, message: bool = False) -> Iterator[Patch]:
    row: dict[str, Any] = {"first_seen_at": at}
    if chat_type is not None:
        row["chat_type"] = chat_type
    if message:
        row["last_message_at"] = at
    yield "chats", chat_id, row


def _usage(u: Usage) -> dict[str, int]:
    return {
        "input_tokens": u.input_tokens, "output_tokens": u.output_tokens,
        "cache_read_tokens": u.cache_read_tokens, "cache_write_tokens": u.cache_write_tokens,
    }


def _assistant(event: ResponseCompleted | ResponseFailed | ResponseCancelled, text: str, usage: Usage, cost: int) -> Patch:
    return "messages", f"r:{event.response_id}", {
        "role": "assistant", "chat_id": event.chat_id, "topic_id": event.topic_id, "user_id": event.user_id,
        "response_id": event.response_id, "text": text, **_usage(usage), "cost": cost,
        "occurred_at": event.occurred_at,
    }


def _operation(e: LedgerEvent) -> dict[str, Any]:
    row: dict[str, Any] = {
        "event_id": e.event_id, "type": e.type_name(), "amount": e.amount, "balance_after": e.balance_after,
        "held_after": e.held_after, "prev_hash": e.prev_hash, "hash": e.hash, "occurred_at": e.occurred_at,
    }
    match e:
        case BalanceCredited():
            row.update(source=e.source, reference=e.reference)
        case BalanceReserved() | BalanceReleased():
            row.update(hold_id=e.hold_id)
        case BalanceCharged():
            row.update(
                charge_id=e.charge_id, hold_id=e.hold_id, hold_settled=e.hold_settled, model=e.model,
                input_tokens=e.input_tokens, output_tokens=e.output_tokens, cache_read_tokens=e.cache_read_tokens,
                cache_write_tokens=e.cache_write_tokens, price_version=e.price_version,
            )
        case BalanceRefunded():
            row.update(telegram_payment_charge_id=e.telegram_payment_charge_id)
    return row


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()
