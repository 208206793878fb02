"""Dead letters: list, show, re-drive and drop what a group could not handle.

Re-driving appends the original entry to its stream again, marked ``only`` for
the group that failed it: the other groups, which applied it already, skip it,
and the failing group sees it with a new entry id (above any checkpoint).
The re-append and the removal from the dead-letter stream are one transaction.
"""

from __future__ import annotations

import msgspec
from eventbot.keys import FAMILIES, Keys
from eventbot.redisclient import RedisClient


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    dlq: str
    id: str
    group: str
    stream: str
    entry_id: str
    deliveries: int
    error: str
    failed_at: int
    type: str | None

    @property
    def ref(self) -> str:
        """How an operator names it: ``<dead-letter stream>/<id>``."""
        return f"{self.dlq}/{self.id}"


class DeadLetters:
    def __init__(self, redis: RedisClient, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def streams(self) -> list[str]:
        # On a cluster, scan_iter walks every primary in turn.
        found = [k.decode() async for k in self.redis.scan_iter(match=f"{self.keys.namespace}:dlq:*", count=1000)]
        return sorted(found)

    async def list(self, group: str | None = None, limit: int = 100) -> list[DeadLetter]:
        out: list[DeadLetter] = []
        for dlq in await self.streams():
            if group and f":dlq:{group}:" not in dlq:
                continue
            for entry_id, fields in await self.redis.xrange(dlq, count=limit - len(out)):
                out.append(_letter(dlq, entry_id, fields))
            if len(out) >= limit:
                break
        return out

    async def get(self, ref: str) -> tuple[DeadLetter, dict[bytes, bytes]]:
        dlq, _, entry_id = ref.rpartition("/")
        rows = await self.redis.xrange(dlq, entry_id, entry_id)
        if not rows:
            raise KeyError(f"no dead letter {ref}")
        return _letter(dlq, rows[0][0], rows[0][1]), rows[0][1]

    async def retry(self, ref: str) -> str:
        letter, fields = await self.get(ref)
        if b"d" not in fields:
            raise ValueError(f"{ref} has no payload to re-drive (it arrived without one); drop it")
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(letter.stream, {"t": fields[b"t"], "v": fields[b"v"], "d": fields[b"d"], "only": letter.group})
        pipe.xdel(letter.dlq, letter.id)
        new_id, _ = await pipe.execute()
        return new_id.decode()

    async def drop(self, ref: str) -> None:
        letter, _ = await self.get(ref)
        await self.redis.xdel(letter.dlq, letter.id)

    async def count(self) -> dict[str, int]:
        return {dlq: await self.redis.xlen(dlq) for dlq in await self.streams()}


def _letter(dlq: str, entry_id: bytes, f: dict[bytes, bytes]) -> DeadLetter:
    get = lambda k, d="": f.get(k, d.encode()).decode(errors="replace")  # noqa: E731
    return DeadLetter(
        dlq=dlq, id=entry_id.decode(), group=get(b"group"), stream=get(b"stream"), entry_id=get(b"entry_id"),
        deliveries=int(get(b"deliveries", "0")), error=get(b"error"), failed_at=int(get(b"failed_at", "0")),
        type=f[b"t"].decode() if b"t" in f else None,
    )


__all__ = ["DeadLetter", "DeadLetters", "FAMILIES"]
