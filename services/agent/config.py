"""The agent's knobs, taken from :class:`Settings` once (tests and benchmarks override a few)."""

from __future__ import annotations

from typing import Literal

import msgspec

from eventbot.settings import Settings
from services.agent.model import RetryPolicy


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True):
    models: tuple[str, ...]
    default_model: str
    max_tokens: int
    history_turns: int
    merge_window_s: float
    draft_interval_s: float
    on_new_message: Literal["cancel", "queue"]
    max_file_bytes: int
    retry: RetryPolicy = RetryPolicy()
    # How long to wait for the read model to reach a message before retrying it later.
    wait_applied_timeout_s: float = 5.0
    # How long an answer the user already has waits out a Redis outage to record its end.
    # Given up, the message is handed over again and answered a second time.
    end_record_patience_s: float = 300.0
    token_batching: bool = True
    typing_interval_s: float = 4.5

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> AgentConfig:
        values: dict[str, object] = dict(
            models=settings.models,
            default_model=settings.default_model,
            max_tokens=settings.max_tokens,
            history_turns=settings.history_turns,
            merge_window_s=settings.merge_window_ms / 1000,
            draft_interval_s=settings.draft_interval_ms / 1000,
            on_new_message=settings.on_new_message,
            max_file_bytes=settings.max_file_bytes,
        )
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
