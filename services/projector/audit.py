"""The auditor's view of money: a user's ledger with causes, and the cross-checks that it adds up.

``verify`` trusts nothing it reads: it recomputes every hash from the archived
event (``event_log``), checks the ``balance_operations`` rows against those
events, folds the amounts, and checks the Postgres balance, the Redis read
model, the stream's unarchived tail and the ledger head against the fold.
"""

from __future__ import annotations

from datetime import datetime

import msgspec
from psycopg import sql
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from eventbot.keys import Keys
from eventbot.ledger import Ledger
from eventbot.readmodels import codec as rm_codec
from eventbot.readmodels.keys import ReadModelKeys
from events import GENESIS_HASH, EventCodec, LedgerEvent, user_key


class Operation(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    type: str
    amount: int
    balance_after: int
    held_after: int
    occurred_at: datetime
    cause: str
    hash: str


class Discrepancy(msgspec.Struct, frozen=True, kw_only=True):
    user_id: int
    seq: int
    check: str
    detail: str


_OPS = sql.SQL(
    "SELECT seq, type, amount, balance_after, held_after, occurred_at, source, reference, charge_id, model,"
    " input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, price_version,"
    " telegram_payment_charge_id, hold_id, hash, prev_hash FROM {}.balance_operations WHERE user_id = %s ORDER BY seq"
)


def _cause(row: tuple) -> str:
    (_, type_, _, _, _, _, source, reference, charge_id, model, tin, tout, cr, cw, price, tg, hold, *_rest) = row
    if type_ == "balance.credited":
        return f"{source} {reference}"
    if type_ == "balance.charged":
        return f"response {charge_id} {model} in={tin} out={tout} cache_r={cr} cache_w={cw} price={price}"
    if type_ == "balance.refunded":
        return f"stars refund {tg}"
    return f"hold {hold}"


async def ledger(pool: AsyncConnectionPool, schema: str, user_id: int, *, since: datetime | None = None,
                 at: datetime | None = None) -> tuple[list[Operation], int]:
    """The user's operations (occurred in [since, at]) and the balance as of ``at`` (or now)."""
    async with pool.connection() as conn:
        rows = await (await conn.execute(_OPS.format(sql.Identifier(schema)), (user_id,))).fetchall()
    ops = [
        Operation(seq=r[0], type=r[1], amount=r[2], balance_after=r[3], held_after=r[4], occurred_at=r[5],
                  cause=_cause(r), hash=r[17])
        for r in rows
    ]
    upto = [o for o in ops if at is None or o.occurred_at <= at]
    balance = upto[-1].balance_after if upto else 0
    shown = [o for o in upto if since is None or o.occurred_at >= since]
    return shown, balance


class Auditor:
    def __init__(self, pool: AsyncConnectionPool, redis: Redis, keys: Keys, codec: EventCodec, schema: str) -> None:
        self.pool = pool
        self.redis = redis
        self.keys = keys
        self.codec = codec
        self.schema = sql.Identifier(schema)
        self.ledger = Ledger(redis, keys, codec)
        self.rm = ReadModelKeys(keys)

    async def users(self) -> list[int]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(sql.SQL(
                "SELECT user_id FROM {s}.balance_operations UNION SELECT user_id FROM {s}.event_log"
                " WHERE family = 'ledger' AND user_id IS NOT NULL ORDER BY 1").format(s=self.schema))
            found = {r[0] for r in await cur.fetchall()}
        for stream in self.keys.streams("ledger"):
            for _, event in await self._tail(stream):
                found.add(event.user_id)
        return sorted(found)

    async def verify(self, user_id: int) -> list[Discrepancy]:
        out: list[Discrepancy] = []

        def bad(seq: int, check: str, detail: str) -> None:
            out.append(Discrepancy(user_id=user_id, seq=seq, check=check, detail=detail))

        archived, rows, pg_user = await self._postgres(user_id)
        tail = [e for _, e in await self._tail(self.keys.stream("ledger", self.keys.partition_of(user_key(user_id))))
                if e.user_id == user_id]
        # The whole ledger: archived events, then tail events past them; a tail event that
        # repeats an archived seq must be the very same event.
        chain: dict[int, LedgerEvent] = {e.seq: e for e in archived}
        for e in tail:
            known = chain.get(e.seq)
            if known is None:
                chain[e.seq] = e
            elif known.hash != e.hash or known.computed_hash() != e.computed_hash():
                bad(e.seq, "stream", "the stream entry differs from the archived event")
        events = [chain[s] for s in sorted(chain)]
        balance = held = 0
        previous = GENESIS_HASH
        for i, e in enumerate(events, start=1):
            if e.seq != i:
                bad(i, "seq", f"expected seq {i}, found {e.seq}")
                break
            if e.computed_hash() != e.hash:
                bad(e.seq, "hash", "the event's hash does not match its content")
            if e.prev_hash != previous:
                bad(e.seq, "hash", "prev_hash does not match the previous event's hash")
            d_balance, d_held = e.effect()
            balance, held = balance + d_balance, held + d_held
            if (balance, held) != (e.balance_after, e.held_after):
                bad(e.seq, "fold", f"amounts fold to {balance}/{held}, event says {e.balance_after}/{e.held_after}")
                balance, held = e.balance_after, e.held_after
            previous = e.hash
        by_seq = {e.seq: e for e in events}
        for row in rows:
            seq, amount, balance_after, held_after, prev_hash, hash_ = row
            e = by_seq.get(seq)
            if e is None:
                bad(seq, "row", "balance operation has no archived event")
            elif (amount, balance_after, held_after, prev_hash, hash_) != (e.amount, e.balance_after, e.held_after, e.prev_hash, e.hash):
                bad(seq, "row", "balance operation row differs from its event")
        if len(rows) != len(archived):
            bad(len(rows), "row", f"{len(rows)} balance operation rows for {len(archived)} archived events")
        if pg_user is not None:
            pg_balance, pg_held, pg_seq = pg_user
            e = by_seq.get(pg_seq)
            if e is None or (pg_balance, pg_held) != (e.balance_after, e.held_after):
                bad(pg_seq, "postgres_balance", f"users row says {pg_balance}/{pg_held} at seq {pg_seq}")
        await self._check_redis(user_id, by_seq, events, bad)
        return out

    async def _check_redis(self, user_id: int, by_seq: dict[int, LedgerEvent], events: list[LedgerEvent], bad) -> None:  # type: ignore[no-untyped-def]
        live = await self.redis.hget(self.rm.pointer, "live")
        if live is not None:
            raw = await self.redis.get(self.rm.user_ledger(int(live), user_id))
            state = rm_codec.decode(("ledger",), raw)
            if state is not None:
                e = by_seq.get(state.seq)
                if e is None or (state.balance, state.held) != (e.balance_after, e.held_after):
                    bad(state.seq, "readmodel", f"Redis read model says {state.balance}/{state.held} at seq {state.seq}")
        head = await self.ledger.head(user_id)
        last = events[-1] if events else None
        if head.seq != (last.seq if last else 0) or (last and (head.hash, head.balance, head.held) != (last.hash, last.balance_after, last.held_after)):
            bad(head.seq, "head", f"ledger head at seq {head.seq} balance {head.balance} does not end the chain")

    async def _postgres(self, user_id: int) -> tuple[list[LedgerEvent], list[tuple], tuple | None]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(sql.SQL(
                "SELECT type, version, payload::text FROM {}.event_log WHERE family = 'ledger' AND user_id = %s"
                " AND type LIKE 'balance.%%' ORDER BY (payload->>'seq')::bigint").format(self.schema), (user_id,))
            archived = [self.codec.from_json(t, v, p) for t, v, p in await cur.fetchall()]
            cur = await conn.execute(sql.SQL(
                "SELECT seq, amount, balance_after, held_after, prev_hash, hash FROM {}.balance_operations"
                " WHERE user_id = %s ORDER BY seq").format(self.schema), (user_id,))
            rows = await cur.fetchall()
            cur = await conn.execute(sql.SQL(
                "SELECT balance, held, ledger_seq FROM {}.users WHERE user_id = %s AND ledger_seq IS NOT NULL"
            ).format(self.schema), (user_id,))
            pg_user = await cur.fetchone()
        return [e for e in archived if isinstance(e, LedgerEvent)], rows, pg_user

    async def _tail(self, stream: str) -> list[tuple[str, LedgerEvent]]:
        out = []
        for entry_id, fields in await self.redis.xrange(stream):
            try:
                event = self.codec.decode(fields[b"t"].decode(), int(fields[b"v"]), fields[b"d"])
            except Exception:  # noqa: BLE001 - an unreadable entry is not a ledger event we can check
                continue
            if isinstance(event, LedgerEvent):
                out.append((entry_id.decode(), event))
        return out


__all__ = ["Auditor", "Discrepancy", "Operation", "ledger"]
