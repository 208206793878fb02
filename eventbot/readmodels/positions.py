"""Stream entry ids as comparable positions."""

from __future__ import annotations

from typing import NamedTuple


class Position(NamedTuple):
    ms: int
    seq: int

    @classmethod
    def parse(cls, entry_id: str) -> Position:
        ms, _, seq = entry_id.partition("-")
        return cls(int(ms), int(seq or 0))

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"

    def next(self) -> Position:
        """The smallest id after this one (XTRIM MINID keeps ids >= it)."""
        return Position(self.ms, self.seq + 1)


    def previous(self) -> Position:
        """The largest id before this one (XRANGE is inclusive)."""
        return Position(self.ms, self.seq - 1) if self.seq else Position(self.ms - 1, MAX_SEQ)


MAX_SEQ = 2**63 - 1
ZERO = Position(0, 0)
