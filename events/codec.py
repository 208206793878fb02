"""Encoding events for streams (msgpack) and for humans (JSON), with upcasting."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from events.base import Event
from events.upcasters import UPCASTERS, Upcaster


class EventDecodeError(Exception):
    """An entry could not be turned into an event."""


class UnknownEventType(EventDecodeError):
    def __init__(self, type_name: str, version: int) -> None:
        super().__init__(f"unknown event type {type_name!r} v{version}")
        self.type_name = type_name
        self.version = version


class CorruptEvent(EventDecodeError):
    pass


class EventCodec:
    """Encodes and decodes every registered event type; reusable and thread-safe."""

    def __init__(self, types: Iterable[type[Event]], upcasters: Mapping[tuple[str, int], Upcaster] = UPCASTERS) -> None:
        self.types: dict[str, type[Event]] = {}
        for cls in types:
            name = cls.type_name()
            if name in self.types:
                raise ValueError(f"event type {name!r} registered twice")
            self.types[name] = cls
        self._upcasters = dict(upcasters)
        self._msgpack_decoders = {n: msgspec.msgpack.Decoder(c) for n, c in self.types.items()}
        self._json_decoders = {n: msgspec.json.Decoder(c) for n, c in self.types.items()}
        # UUIDs as 16 raw bytes: a third of the string form on the wire.
        self._msgpack = msgspec.msgpack.Encoder(uuid_format="bytes")
        self._any = msgspec.msgpack.Decoder()
        self._json = msgspec.json.Encoder()

    def encode(self, event: Event) -> bytes:
        return self._msgpack.encode(event)

    def decode(self, type_name: str, version: int, data: bytes) -> Event:
        cls = self.types.get(type_name)
        if cls is None or version > cls.version or version < 1:
            raise UnknownEventType(type_name, version)
        try:
            if version == cls.version:
                return self._msgpack_decoders[type_name].decode(data)
            payload = self._upcast(type_name, version, self._any.decode(data))
            return self._msgpack_decoders[type_name].decode(self._msgpack.encode(payload))
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError, ValueError) as e:
            raise CorruptEvent(f"{type_name} v{version}: {e}") from e

    def to_json(self, event: Event) -> bytes:
        return self._json.encode(event)

    def from_json(self, type_name: str, version: int, data: bytes | str) -> Event:
        cls = self.types.get(type_name)
        if cls is None or version > cls.version or version < 1:
            raise UnknownEventType(type_name, version)
        try:
            if version == cls.version:
                return self._json_decoders[type_name].decode(data)
            payload = self._upcast(type_name, version, msgspec.json.decode(data))
            return self._json_decoders[type_name].decode(self._json.encode(payload))
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError, ValueError) as e:
            raise CorruptEvent(f"{type_name} v{version}: {e}") from e

    def _upcast(self, type_name: str, version: int, payload: Any) -> Any:
        if not isinstance(payload, dict):
            raise CorruptEvent(f"{type_name} v{version}: payload is not a map")
        current = self.types[type_name].version
        while version < current:
            step = self._upcasters.get((type_name, version))
            if step is None:
                raise UnknownEventType(type_name, version)
            payload = step(payload)
            version += 1
        return payload
