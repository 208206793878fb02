"""Applying a stream's entries to Postgres: rows, archive and checkpoint in one transaction.

The live projector and a replay both call :meth:`PostgresProjection.apply`; only
the schema differs. Entries at or below the stream's checkpoint are skipped;
the checkpoint moves first in the transaction (locking it), so a concurrent or
stale writer of the same stream fails before writing anything, and a crash
before the commit leaves nothing behind. Rows reach the tables by binary COPY
into temporary staging tables and one set-based upsert per table (all upserts in
one pipeline); ``event_log`` rows, which are only ever inserted, are copied
straight into the table (so are the ledger's, equally immutable), and a batch that
meets one already written (a re-driven dead letter) is applied again through
staging and ``DO NOTHING``.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg_pool import AsyncConnectionPool

from eventbot.errors import TransientError
from events import Event, EventCodec
from eventbot.readmodels.positions import ZERO, Position
from services.projector.pg_errors import postgres_errors
from services.projector.pg_rows import patches
from services.projector.pg_tables import (
    ALL_TABLES,
    BY_NAME,
    EVENT_LOG,
    TABLES,
    copy_into_stage,
    copy_into_table,
    create_stage,
    merge,
    upsert_from_stage,
)

log = logging.getLogger("eventbot.projector.postgres")

Entry = tuple[str, Event]  # (entry id, event)
Todo = tuple[Position, str, Event, "str | bytes | None"]  # (position, entry id, event, its JSON if known)
CHECKPOINT_MOVED = "EB409"
# Rows that never change once written (the archive, the ledger): entries past the checkpoint
# are new, so they are copied straight into their table, not staged and upserted. A unique
# violation says one was there already (a re-driven dead letter): the batch is then applied
# again through staging, where they are DO NOTHING.
INSERT_ONLY = frozenset(t.name for t in ALL_TABLES if t.immutable)
JSONB_OID = 3802
assert EVENT_LOG.columns == (
    "event_id", "stream", "entry_id", "entry_ms", "entry_seq", "family", "type", "version", "partition_key", "user_id",
    "occurred_at", "payload",
), "PostgresProjection._rows builds event_log rows in this order"


class CheckpointMoved(TransientError):
    """Another writer advanced this stream's checkpoint; reload it and try again."""


class PostgresProjection:
    """Applies entries to ``schema``'s tables; ``durable=False`` (a replay's shadow only) commits asynchronously.

    A shadow's commits need not wait for the WAL flush: a crash loses a suffix of
    its batches together with their checkpoints (so nothing is half-applied), and
    the swap that makes it live commits durably after all of them.
    """

    def __init__(self, pool: AsyncConnectionPool, codec: EventCodec, schema: str, group: str = "postgres",
                 *, durable: bool = True) -> None:
        self.pool = pool
        self.codec = codec
        self.schema = schema
        self.group = group
        self.durable = durable
        self._positions: dict[str, Position] = {}
        self._statements: dict[tuple[str, str], bytes] = {}
        self._types: dict[str, list[int]] = {}
        # Connections whose temporary staging tables exist (they live as long as the session).
        self._staged: weakref.WeakSet[psycopg.AsyncConnection] = weakref.WeakSet()

    async def position(self, stream: str) -> Position:
        async with postgres_errors(), self.pool.connection() as conn:
            cur = await conn.execute(
                sql.SQL("SELECT entry_ms, entry_seq FROM {}.checkpoints WHERE group_name = %s AND stream = %s").format(
                    sql.Identifier(self.schema)),
                (self.group, stream),
            )
            row = await cur.fetchone()
        pos = Position(*row) if row else ZERO
        self._positions[stream] = pos
        return pos

    async def apply(self, stream: str, entries: Sequence[Entry], *, archived_upto: Position | None = None) -> int:
        """Make ``entries`` (in stream order) durable; returns how many were new.

        ``archived_upto``: entries at or below it already have their ``event_log`` row
        in this schema (a replay copies the archive server-side, as it was written),
        so only their projected rows are written.
        """
        for _ in range(3):
            known = self._positions.get(stream)
            start = known if known is not None else await self.position(stream)
            todo = [(p, eid, ev, None) for eid, ev in entries if (p := Position.parse(eid)) > start]
            if not todo:
                return 0
            try:
                await self._commit(stream, start, todo, archived_upto)
            except CheckpointMoved:
                self._positions.pop(stream, None)
                continue
            self._positions[stream] = todo[-1][0]
            return len(todo)
        raise CheckpointMoved(f"{self.group} on {stream}: checkpoint keeps moving; another writer?")

    async def _commit(self, stream: str, start: Position, todo: list[Todo], archived_upto: Position | None) -> None:
        rows = self.rows(stream, todo, archived_upto)
        end, end_id = todo[-1][0], todo[-1][1]
        s = sql.Identifier(self.schema)
        async with postgres_errors(), self.pool.connection() as conn:
            await self._prepare(conn)
            for direct in (True, False):
                try:
                    async with conn.transaction():
                        if not self.durable:
                            await conn.execute("SET LOCAL synchronous_commit = off")
                        await conn.execute(
                            sql.SQL("SELECT {}.advance_checkpoint(%s, %s, %s, %s, %s, %s, %s, %s, %s)").format(s),
                            (self.schema, self.group, stream, start.ms, start.seq, end.ms, end.seq, end_id, len(todo)),
                        )
                        for name, values in rows.items():
                            straight = direct and name in INSERT_ONLY
                            await copy_rows(conn, self._sql("direct" if straight else "copy", name), self._types[name], values)
                        async with conn.pipeline():
                            for name in rows:
                                if not (direct and name in INSERT_ONLY):
                                    await conn.execute(self._sql("upsert", name))
                    return
                except psycopg.errors.UniqueViolation as e:
                    if not direct or e.diag.table_name not in INSERT_ONLY:
                        raise
                    log.info("%s on %s: a row of %s exists already; applying through staging",
                             self.group, stream, e.diag.table_name)
                except psycopg.Error as e:
                    if e.sqlstate == CHECKPOINT_MOVED:
                        raise CheckpointMoved(str(e)) from e
                    raise

    def _sql(self, kind: str, table: str) -> bytes:
        """Statements composed once per table (composing them is costlier than running them)."""
        key = (kind, table)
        found = self._statements.get(key)
        if found is None:
            make = {"copy": copy_into_stage, "direct": copy_into_table, "upsert": upsert_from_stage}[kind]
            found = self._statements[key] = make(self.schema, BY_NAME[table]).as_string().encode()
        return found

    def rows(self, stream: str, todo: Sequence[Todo], archived_upto: Position | None = None) -> dict[str, list[list[Any]]]:
        """Every table's rows for these entries (values in ``Table.columns`` order), one per key.

        Tables come in one fixed order and rows in first-touch order; tables without rows are left out.
        """
        archive, patched = self._rows(stream, todo, archived_upto)
        out = {EVENT_LOG.name: list(archive.values())} if archive else {}
        for table in TABLES:
            by_key = patched.get(table.name)
            if by_key:
                columns = table.columns
                out[table.name] = [list(map(row.get, columns)) for row in by_key.values()]
        return out

    def _rows(
        self, stream: str, todo: Sequence[Todo], archived_upto: Position | None = None,
    ) -> tuple[dict[Any, list[Any]], dict[str, dict[Any, dict[str, Any]]]]:
        """(``event_log`` rows by event id, but none at or below ``archived_upto``;
        every other table's patches merged per key in event order)."""
        family = stream.rsplit(":", 2)[-2]
        archive: dict[Any, list[Any]] = {}
        out: dict[str, dict[Any, dict[str, Any]]] = {}
        to_json = self.codec.to_json
        for pos, entry_id, event, payload in todo:
            # Archived once: the first stays, as ON CONFLICT DO NOTHING keeps it.
            if (archived_upto is None or pos > archived_upto) and event.event_id not in archive:
                archive[event.event_id] = [  # in EVENT_LOG.columns order
                    event.event_id, stream, entry_id, pos.ms, pos.seq, family, event.type_name(), event.version,
                    event.partition_key, getattr(event, "user_id", None), event.occurred_at,
                    payload if payload is not None else to_json(event),
                ]
            for name, key, patch in patches(event):
                by_key = out.get(name)
                if by_key is None:
                    by_key = out[name] = {}
                row = by_key.get(key)
                if row is None:
                    table = BY_NAME[name]
                    if len(table.key) == 1:
                        patch[table.key[0]] = key
                    else:
                        patch.update(zip(table.key, key))
                    by_key[key] = patch
                else:
                    by_key[key] = merge(BY_NAME[name], row, patch)
        return archive, out

    async def _prepare(self, conn: psycopg.AsyncConnection) -> None:
        """Once per connection: the staging tables; once per projection: the columns' types for binary COPY."""
        if not self._types:
            cur = await conn.execute(
                "SELECT c.relname, a.attname, a.atttypid::int FROM pg_attribute a"
                " JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped",
                (self.schema,),
            )
            found: dict[tuple[str, str], int] = {(t, c): oid for t, c, oid in await cur.fetchall()}
            self._types = {t.name: [found[(t.name, c)] for c in t.columns] for t in ALL_TABLES}
            await conn.rollback()
        if conn in self._staged:
            return
        async with conn.transaction():
            for table in ALL_TABLES:
                await conn.execute(create_stage(self.schema, table))
        self._staged.add(conn)


async def copy_rows(conn: psycopg.AsyncConnection, statement: bytes, types: Sequence[int], rows: Iterable[Sequence[Any]]) -> None:
    """Binary ``COPY ... FROM STDIN``: no text parsing of ids and timestamps on the server; JSON passes through."""
    cur = conn.cursor()
    cur.adapters.register_dumper(_JsonText, JsonTextDumper)
    async with cur.copy(statement) as copy:
        copy.set_types(types)
        # What copy.write_row does, without a coroutine per row (about 8 % of the COPY's own
        # CPU): the formatter fills its buffer and hands it over when full.
        format_row = copy.formatter.write_row
        for row in rows:
            if full := format_row(row):
                await copy.write(full)


class _JsonText:
    """Never instantiated: registering a dumper needs a Python type; ours is picked by the jsonb oid."""


class JsonTextDumper(Dumper):
    """JSON already encoded (``str`` or ``bytes``) into a binary ``jsonb`` field, without parsing it again here."""

    format = Format.BINARY
    oid = JSONB_OID

    def dump(self, obj: Any) -> bytes:
        return b"\x01" + (obj.encode() if isinstance(obj, str) else bytes(obj))
