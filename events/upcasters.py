"""Upcasters: turn the payload of an older version into the next one.

Keyed by (type, from_version); the codec chains them until the current version.
History is never edited: old entries are upcast each time they are read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Payload = dict[str, Any]
Upcaster = Callable[[Payload], Payload]


def response_completed_v1_to_v2(p: Payload) -> Payload:
    p = dict(p)
    p["usage"] = {
        "input_tokens": p.pop("input_tokens", 0),
        "output_tokens": p.pop("output_tokens", 0),
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
    }
    return p


UPCASTERS: dict[tuple[str, int], Upcaster] = {
    ("response.completed", 1): response_completed_v1_to_v2,
}
