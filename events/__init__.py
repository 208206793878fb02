"""eventbot's vocabulary: every event type, and the codec that reads and writes them.

No I/O lives here.
"""

from events.base import Event, Family, chat_key, user_key
from events.codec import CorruptEvent, EventCodec, EventDecodeError, UnknownEventType
from events.conversation import (
    Attachment,
    CommandIssued,
    ConvEvent,
    FileRefused,
    FileUploaded,
    MessageEdited,
    MessageReceived,
    ModelChanged,
    PromptChanged,
    ThreadCreated,
    ThreadRenamed,
    UserProfileChanged,
    UserSeen,
)
from events.ledger import (
    GENESIS_HASH,
    BalanceCharged,
    BalanceCredited,
    BalanceRefunded,
    BalanceReleased,
    BalanceReserved,
    LedgerEvent,
    PaymentReceived,
    PaymentRefunded,
)
from events.responses import (
    ResponseCancelled,
    ResponseCompleted,
    ResponseFailed,
    ResponseShown,
    ResponseStarted,
    TokenStreamed,
    Usage,
)

ALL_EVENT_TYPES: tuple[type[Event], ...] = (
    UserSeen,
    UserProfileChanged,
    MessageReceived,
    MessageEdited,
    FileUploaded,
    FileRefused,
    CommandIssued,
    ThreadCreated,
    ThreadRenamed,
    ModelChanged,
    PromptChanged,
    ResponseStarted,
    ResponseShown,
    ResponseCompleted,
    ResponseFailed,
    ResponseCancelled,
    TokenStreamed,
    BalanceCredited,
    BalanceReserved,
    BalanceReleased,
    BalanceCharged,
    BalanceRefunded,
    PaymentReceived,
    PaymentRefunded,
)


def default_codec() -> EventCodec:
    return EventCodec(ALL_EVENT_TYPES)


__all__ = [name for name in dir() if not name.startswith("_")]
