"""How events change the read models: pure functions, no I/O.

The live builder, a generation rebuild and the reader's cold-key rebuild all
fold events through these functions, so they cannot disagree.
"""

from __future__ import annotations


import msgspec

from eventbot.views import FileView, LedgerOp, ResponseView, ThreadView, Turn
from events import (
    BalanceCharged,
    BalanceCredited,
    BalanceRefunded,
    BalanceReleased,
    BalanceReserved,
    Event,
    FileUploaded,
    LedgerEvent,
    MessageEdited,
    MessageReceived,
    ModelChanged,
    PromptChanged,
    ResponseCancelled,
    ResponseCompleted,
    ResponseFailed,
    ResponseStarted,
    ThreadCreated,
    ThreadRenamed,
    UserProfileChanged,
    UserSeen,
)


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    history_turns: int = 20
    recent_ops: int = 10
    files: int = 50


class LedgerState(msgspec.Struct, frozen=True, kw_only=True):
    seq: int = 0
    balance: int = 0
    held: int = 0
    ops: tuple[LedgerOp, ...] = ()


class ChatState(msgspec.Struct, frozen=True, kw_only=True):
    """A chat (or forum topic): its current thread, that thread's recent turns and files."""

    thread: ThreadView | None = None
    history: tuple[Turn, ...] = ()
    files: tuple[FileView, ...] = ()


class ProfileWrite(msgspec.Struct, frozen=True):
    """One last-writer-wins field group of a user's profile: names, model or prompt."""

    user_id: int
    group: str
    version: str
    value: object


# What a same-partition key is: ("ledger", user_id) | ("chat", partition_key) | ("response", partition_key, id).
KeyRef = tuple


def key_refs(event: Event) -> list[KeyRef]:
    match event:
        case LedgerEvent():
            return [("ledger", event.user_id)]
        case ResponseStarted() | ResponseFailed() | ResponseCancelled() | ResponseCompleted():
            return [("chat", event.partition_key), ("response", event.partition_key, event.response_id)]
        case (ThreadCreated() | ThreadRenamed() | MessageReceived() | MessageEdited() | FileUploaded()):
            return [("chat", event.partition_key)]
    return []


def fold_ledger(state: LedgerState | None, event: Event, limits: Limits) -> LedgerState | None:
    if not isinstance(event, LedgerEvent):
        return state
    state = state or LedgerState()
    if event.seq <= state.seq:
        return state  # already folded (a rebuild overlapping the live position)
    op = LedgerOp(
        seq=event.seq, type=event.type_name(), amount=event.amount, balance_after=event.balance_after,
        occurred_at=event.occurred_at, reference=_reference(event),
    )
    ops = (*state.ops, op)[-limits.recent_ops:] if limits.recent_ops else ()
    return LedgerState(seq=event.seq, balance=event.balance_after, held=event.held_after, ops=ops)


def fold_chat(state: ChatState | None, event: Event, limits: Limits) -> ChatState | None:
    s = state or ChatState()
    match event:
        case ThreadCreated():
            thread = ThreadView(thread_id=event.thread_id, chat_id=event.chat_id, topic_id=event.topic_id,
                                title=event.title)
            return ChatState(thread=thread)
        case ThreadRenamed():
            if s.thread is None or s.thread.thread_id != event.thread_id:
                return state
            return msgspec.structs.replace(s, thread=msgspec.structs.replace(s.thread, title=event.title))
        case MessageReceived():
            if event.disposition != "answer":
                return state  # not for the model: not part of its context
            turn = Turn(role="user", text=event.text or event.caption or "", attachments=event.attachments,
                        message_id=event.message_id, occurred_at=event.occurred_at)
            return _with_turn(s, turn, limits)
        case MessageEdited():
            history = tuple(
                msgspec.structs.replace(t, text=event.text or event.caption or "")
                if t.role == "user" and t.message_id == event.message_id else t
                for t in s.history
            )
            return msgspec.structs.replace(s, history=history)
        case FileUploaded():
            files = (*s.files, FileView(message_id=event.message_id, user_id=event.user_id, file=event.file))
            return msgspec.structs.replace(s, files=files[-limits.files:])
        case ResponseCompleted():
            return _with_turn(s, _assistant(event, event.text), limits)
        case ResponseFailed() | ResponseCancelled():
            if not event.partial_text:
                return state
            return _with_turn(s, _assistant(event, event.partial_text), limits)
    return state


def fold_response(view: ResponseView | None, event: Event) -> ResponseView | None:
    match event:
        case ResponseStarted():
            if view is not None and view.state != "started":
                return view  # a late or repeated start does not reopen a finished response
            return ResponseView(response_id=event.response_id, state="started", chat_id=event.chat_id,
                                topic_id=event.topic_id, user_id=event.user_id)
        case ResponseCompleted():
            return ResponseView(response_id=event.response_id, state="completed", chat_id=event.chat_id,
                                topic_id=event.topic_id, user_id=event.user_id, text=event.text,
                                telegram_message_ids=event.telegram_message_ids, cost=event.cost)
        case ResponseFailed() | ResponseCancelled():
            state = "failed" if isinstance(event, ResponseFailed) else "cancelled"
            return ResponseView(response_id=event.response_id, state=state, chat_id=event.chat_id,
                                topic_id=event.topic_id, user_id=event.user_id, text=event.partial_text,
                                cost=event.cost)
    return view


def profile_writes(event: Event) -> list[ProfileWrite]:
    match event:
        case UserSeen() | UserProfileChanged():
            names = {"username": event.username, "first_name": event.first_name,
                     "last_name": event.last_name, "language_code": event.language_code}
            return [ProfileWrite(event.user_id, "names", version(event), names)]
        case ModelChanged():
            return [ProfileWrite(event.user_id, "model", version(event), event.model)]
        case PromptChanged():
            return [ProfileWrite(event.user_id, "prompt", version(event), event.prompt)]
    return []


def version(event: Event) -> str:
    """Sorts like (occurred_at, event id): the later change of a profile field wins."""
    micros = int(event.occurred_at.timestamp() * 1_000_000)
    return f"{micros:020d}:{event.event_id}"


def fold(events: list[Event], ref: KeyRef, limits: Limits) -> object:
    """The state of one key after ``events`` (a cold rebuild)."""
    state: object = None
    for e in events:
        state = apply(ref, state, e, limits)
    return state


def apply(ref: KeyRef, state: object, event: Event, limits: Limits) -> object:
    kind = ref[0]
    if kind == "ledger":
        return fold_ledger(state, event, limits)  # type: ignore[arg-type]
    if kind == "chat":
        return fold_chat(state, event, limits)  # type: ignore[arg-type]
    return fold_response(state, event)  # type: ignore[arg-type]


def _with_turn(s: ChatState, turn: Turn, limits: Limits) -> ChatState:
    return msgspec.structs.replace(s, history=(*s.history, turn)[-limits.history_turns:])


def _assistant(event: ResponseCompleted | ResponseFailed | ResponseCancelled, text: str) -> Turn:
    return Turn(role="assistant", text=text, response_id=event.response_id, occurred_at=event.occurred_at)


def _reference(e: LedgerEvent) -> str:
    match e:
        case BalanceCredited():
            return e.reference
        case BalanceCharged():
            return str(e.charge_id)
        case BalanceRefunded():
            return e.telegram_payment_charge_id
        case BalanceReserved() | BalanceReleased():
            return str(e.hold_id)
    return ""


__all__ = [
    "ChatState", "KeyRef", "LedgerState", "Limits", "ProfileWrite", "apply", "fold", "fold_chat",
    "fold_ledger", "fold_response", "key_refs", "profile_writes", "version",
]
