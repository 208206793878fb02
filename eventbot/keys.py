"""Redis key names: every key of one partition shares the hash tag ``{p}``.

So a partition's stream, its dedupe markers, its ledger heads and its read-model
position live in one Redis Cluster slot, and one Lua script may touch them all.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from uuid import UUID

from events import Event, Family

FAMILIES: tuple[Family, ...] = ("conv", "ledger", "tokens")


@dataclass(frozen=True)
class Keys:
    namespace: str
    partitions: int

    def partition_of(self, partition_key: str) -> int:
        # crc32 is stable across processes and Python versions (hash() is not).
        return zlib.crc32(partition_key.encode()) % self.partitions

    def stream(self, family: Family, partition: int) -> str:
        return f"{self.namespace}:{family}:{{{partition}}}"

    def stream_for(self, event: Event) -> str:
        return self.stream(event.family, self.partition_of(event.partition_key))

    def streams(self, family: Family) -> list[str]:
        return [self.stream(family, p) for p in range(self.partitions)]

    def seen(self, partition: int, event_id: UUID | str) -> str:
        return f"{self.namespace}:seen:{{{partition}}}:{event_id}"

    def ledger_head(self, partition: int, user_id: int) -> str:
        return f"{self.namespace}:ledger-head:{{{partition}}}:{user_id}"

    def dead_letters(self, group: str, family: Family, partition: int) -> str:
        return f"{self.namespace}:dlq:{group}:{family}:{{{partition}}}"

    def rejected_updates(self) -> str:
        """Telegram updates ingest could not turn into events, kept aside for an operator."""
        return f"{self.namespace}:ingest:rejected"

    def prefix(self) -> str:
        return f"{self.namespace}:"


def parse_stream(name: str) -> tuple[Family, int]:
    """``ns:conv:{3}`` -> ("conv", 3)."""
    head, _, tag = name.rpartition(":")
    family = head.rpartition(":")[2]
    if family not in FAMILIES or not (tag.startswith("{") and tag.endswith("}")):
        raise ValueError(f"not an eventbot stream: {name!r}")
    return family, int(tag[1:-1])  # type: ignore[return-value]
