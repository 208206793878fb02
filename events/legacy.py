"""Earlier versions of event types, kept so history written with them stays readable.

These are never appended any more; the codec upcasts them on read.
"""

from __future__ import annotations

from typing import ClassVar
from uuid import UUID

from events.conversation import ConvEvent


class ResponseCompletedV1(ConvEvent, frozen=True, kw_only=True, tag="response.completed"):
    version: ClassVar[int] = 1
    response_id: UUID
    user_id: int
    text: str
    stop_reason: str | None
    input_tokens: int
    output_tokens: int
    ttft_ms: int | None
    duration_ms: int
