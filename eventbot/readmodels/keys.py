"""Key names of the Redis read models.

Every key of a partition carries its hash tag ``{p}``, so a batch's writes and
the partition's applied position change in one script. Keys live under a
generation (``g<N>``): a rebuild fills a new generation while the old one
serves, then one pointer (``<ns>:rm:gen``, a hash: live, next) switches.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from eventbot.keys import Keys


@dataclass(frozen=True)
class ReadModelKeys:
    keys: Keys

    @property
    def pointer(self) -> str:
        return f"{self.keys.namespace}:rm:gen"

    def prefix(self, gen: int) -> str:
        return f"{self.keys.namespace}:rm:g{gen}:"

    def position(self, gen: int, partition: int) -> str:
        """Hash: stream name -> last applied entry id."""
        return f"{self.prefix(gen)}{{{partition}}}:pos"

    def user_ledger(self, gen: int, user_id: int) -> str:
        return f"{self.prefix(gen)}{{{self.keys.partition_of(str(user_id))}}}:ul:{user_id}"

    def user_profile(self, gen: int, user_id: int) -> str:
        return f"{self.prefix(gen)}{{{self.keys.partition_of(str(user_id))}}}:up:{user_id}"

    def chat(self, gen: int, partition_key: str) -> str:
        return f"{self.prefix(gen)}{{{self.keys.partition_of(partition_key)}}}:chat:{partition_key}"

    def response(self, gen: int, partition_key: str, response_id: UUID) -> str:
        return f"{self.prefix(gen)}{{{self.keys.partition_of(partition_key)}}}:resp:{response_id}"
