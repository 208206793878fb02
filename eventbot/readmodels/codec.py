"""Bytes of the read-model values in Redis (msgpack), one reusable decoder per shape."""

from __future__ import annotations

from typing import Any

import msgspec

from eventbot.readmodels.fold import ChatState, KeyRef, LedgerState
from eventbot.views import ResponseView

_ENCODER = msgspec.msgpack.Encoder()
_DECODERS: dict[str, msgspec.msgpack.Decoder[Any]] = {
    "ledger": msgspec.msgpack.Decoder(LedgerState),
    "chat": msgspec.msgpack.Decoder(ChatState),
    "response": msgspec.msgpack.Decoder(ResponseView),
}
_ANY = msgspec.msgpack.Decoder()


def encode(value: object) -> bytes:
    return _ENCODER.encode(value)


def decode(ref: KeyRef, raw: bytes | None) -> Any:
    return None if raw is None else _DECODERS[ref[0]].decode(raw)


def decode_any(raw: bytes) -> Any:
    return _ANY.decode(raw)
