"""What the demo prints at the end, as a table or as one JSON object."""

from __future__ import annotations

import math

import msgspec


class Summary(msgspec.Struct, kw_only=True):
    users: int
    messages: int
    expected_messages: int
    answers: int
    events: int
    events_by_type: dict[str, int]
    outcomes: dict[str, int]
    postgres_rows: dict[str, int]
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    hot_path_p50_ms: float | None
    hot_path_p99_ms: float | None
    audit_ok: bool
    audit_problems: list[str]
    replay_ok: bool
    replay_differences: list[str]
    duplicated_answers: list[str]
    redelivered_update_recorded_once: bool
    errors: list[str]
    seconds: float

    @property
    def ok(self) -> bool:
        return (
            self.messages == self.expected_messages
            and self.answers == self.expected_messages
            and not self.duplicated_answers
            and self.redelivered_update_recorded_once
            and self.audit_ok
            and self.replay_ok
            and not self.errors
        )

    def as_dict(self) -> dict:
        return {**msgspec.to_builtins(self), "ok": self.ok}

    def lines(self) -> list[str]:
        ms = lambda v: "-" if v is None else f"{v:.1f} ms"  # noqa: E731
        out = [
            f"users {self.users}, messages {self.messages}/{self.expected_messages}, answers {self.answers} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(self.outcomes.items()))}), {self.seconds:.1f} s",
            f"TTFT (message sent -> first text in Telegram): p50 {ms(self.ttft_p50_ms)}, p99 {ms(self.ttft_p99_ms)}",
            f"hot path (message.received appended -> request at the model): p50 {ms(self.hot_path_p50_ms)}, "
            f"p99 {ms(self.hot_path_p99_ms)}",
            f"redelivered update recorded once: {'yes' if self.redelivered_update_recorded_once else 'NO'}; "
            f"duplicated answers: {len(self.duplicated_answers)}",
            f"audit verify: {'ok' if self.audit_ok else 'FAILED'}; replay --verify: "
            f"{'equal' if self.replay_ok else 'DIFFERENT: ' + ', '.join(self.replay_differences)}",
            "",
            f"events by type ({self.events} in all):",
            *[f"  {k:<24} {v:>7,}" for k, v in self.events_by_type.items()],
            "",
            "Postgres rows per table:",
            *[f"  {k:<24} {v:>7,}" for k, v in self.postgres_rows.items()],
        ]
        out += [f"audit: {p}" for p in self.audit_problems[:10]]
        out += [f"error: {e}" for e in self.errors[:10]]
        out.append("")
        out.append("DEMO OK" if self.ok else "DEMO FAILED")
        return out


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return round(ordered[rank - 1], 2)
