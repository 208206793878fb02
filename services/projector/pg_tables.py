"""The projected tables: columns and how a newer patch combines with a row.

Each rule is used twice from this one description: as the ``ON CONFLICT DO
UPDATE`` clause that folds a patch into a stored row, and as the Python merge
that folds a batch's patches of one row together first (one row per key per
statement). Every rule is associative, so applying a batch merged or entry by
entry gives the same row: live projection, redelivery and replay agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import msgspec
from psycopg import sql

Kind = Literal["new", "first", "least", "greatest", "lww", "progress"]


class Rule(msgspec.Struct, frozen=True):
    """How ``columns`` combine; ``lww`` groups take the side with the newer ``version``."""

    kind: Kind
    columns: tuple[str, ...]
    version: str = ""


class Table(msgspec.Struct, frozen=True):
    name: str
    key: tuple[str, ...]
    rules: tuple[Rule, ...]
    immutable: bool = False  # rows never change once written (the ledger)

    @property
    def columns(self) -> tuple[str, ...]:
        found = _COLUMNS.get(self)
        if found is None:
            cols: list[str] = list(self.key)
            for r in self.rules:
                cols += [c for c in (*r.columns, *((r.version,) if r.version else ())) if c not in cols]
            found = _COLUMNS[self] = tuple(cols)
        return found


_COLUMNS: dict[Table, tuple[str, ...]] = {}  # computed once per table, asked for every batch


def new(*cols: str) -> Rule:
    return Rule("new", cols)


TABLES: tuple[Table, ...] = (
    Table("users", ("user_id",), (
        Rule("lww", ("username", "first_name", "last_name", "language_code"), "names_at"),
        Rule("lww", ("model",), "model_at"),
        Rule("lww", ("prompt",), "prompt_at"),
        Rule("lww", ("balance", "held"), "ledger_seq"),
        new("is_premium"),
        Rule("least", ("first_seen_at",)),
    )),
    Table("chats", ("chat_id",), (
        new("chat_type"), Rule("least", ("first_seen_at",)), Rule("greatest", ("last_message_at",)),
    )),
    Table("threads", ("thread_id",), (
        new("chat_id", "topic_id", "user_id", "created_at"), Rule("lww", ("title",), "title_at"),
    )),
    Table("messages", ("message_key",), (
        new("role", "chat_id", "topic_id", "message_id", "user_id", "response_id", "text", "caption",
            "attachments", "disposition", "model", "input_tokens", "output_tokens", "cache_read_tokens",
            "cache_write_tokens", "cost", "occurred_at"),
        Rule("lww", ("edited_text", "edited_caption"), "edited_at"),
    )),
    Table("files", ("file_key",), (
        new("chat_id", "topic_id", "message_id", "user_id", "kind", "file_id", "file_unique_id", "mime_type",
            "size", "name", "status", "reason", "occurred_at"),
    )),
    Table("responses", ("response_id",), (
        new("chat_id", "topic_id", "user_id", "thread_id", "model", "max_tokens", "attempt", "message_ids",
            "started_at", "finished_at", "stop_reason", "cause", "ttft_ms", "duration_ms", "input_tokens",
            "output_tokens", "cache_read_tokens", "cache_write_tokens", "cost", "telegram_message_ids"),
        Rule("progress", ("state",)),
    )),
    Table("balance_operations", ("user_id", "seq"), (
        new("event_id", "type", "amount", "balance_after", "held_after", "prev_hash", "hash", "occurred_at",
            "source", "reference", "charge_id", "hold_id", "hold_settled", "model", "input_tokens",
            "output_tokens", "cache_read_tokens", "cache_write_tokens", "price_version",
            "telegram_payment_charge_id"),
    ), immutable=True),
    Table("payments", ("telegram_payment_charge_id",), (
        new("user_id", "stars", "currency", "payload", "provider_payment_charge_id", "credited", "received_at",
            "refunded_stars", "debited", "refunded_at"),
    )),
)
EVENT_LOG = Table("event_log", ("event_id",), (
    new("stream", "entry_id", "entry_ms", "entry_seq", "family", "type", "version", "partition_key", "user_id",
        "occurred_at", "payload"),
), immutable=True)
ALL_TABLES: tuple[Table, ...] = (EVENT_LOG, *TABLES)
BY_NAME = {t.name: t for t in ALL_TABLES}


# --- the Python side: fold two patches of one row -------------------------------------------------

def _rank(state: str | None) -> int:
    return -1 if state is None else (0 if state == "started" else 1)


def merge(table: Table, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``a`` then ``b``, exactly as the upsert would fold ``b`` into a row holding ``a``.

    Only ``b``'s columns can change anything (every rule keeps ``a``'s value against
    a missing one), so only they are looked at: this runs for most rows of a batch.
    """
    if table.immutable:
        return a
    plain, versions = _PLANS[table.name]
    out = dict(a)
    for c, y in b.items():
        kind = plain.get(c)
        if kind is not None:
            out[c] = _combine(kind, a.get(c), y)
            continue
        group = versions.get(c)
        if group is not None and y is not None:
            av = a.get(c)
            if av is None or y >= av:
                for g in group:
                    out[g] = b.get(g)
    return out


def _plan(table: Table) -> tuple[dict[str, Kind], dict[str, tuple[str, ...]]]:
    """(kind of each non-lww column, the columns of each lww group by its version column)."""
    plain = {c: r.kind for r in table.rules if r.kind != "lww" for c in r.columns}
    versions = {r.version: (*r.columns, r.version) for r in table.rules if r.kind == "lww"}
    return plain, versions


def _combine(kind: Kind, x: Any, y: Any) -> Any:
    if kind == "new":
        return y if y is not None else x
    if kind == "first":
        return x if x is not None else y
    if kind == "progress":
        return y if y is not None and _rank(y) >= _rank(x) else x
    if x is None or y is None:
        return y if x is None else x
    return min(x, y) if kind == "least" else max(x, y)


_PLANS = {t.name: _plan(t) for t in ALL_TABLES}


# --- the SQL side -------------------------------------------------------------------------------

def _sql_rule(r: Rule, t: sql.Identifier) -> list[sql.Composable]:
    ex = sql.SQL("EXCLUDED")
    if r.kind == "lww":
        v = sql.Identifier(r.version)
        newer = sql.SQL("{ex}.{v} IS NOT NULL AND ({t}.{v} IS NULL OR {ex}.{v} >= {t}.{v})").format(ex=ex, v=v, t=t)
        return [
            sql.SQL("{c} = CASE WHEN {newer} THEN {ex}.{c} ELSE {t}.{c} END").format(
                c=sql.Identifier(c), newer=newer, ex=ex, t=t)
            for c in (*r.columns, r.version)
        ]
    templates: dict[str, Callable[[sql.Identifier], sql.Composable]] = {
        "new": lambda c: sql.SQL("{c} = COALESCE({ex}.{c}, {t}.{c})").format(c=c, ex=ex, t=t),
        "first": lambda c: sql.SQL("{c} = COALESCE({t}.{c}, {ex}.{c})").format(c=c, ex=ex, t=t),
        "least": lambda c: sql.SQL("{c} = LEAST({t}.{c}, {ex}.{c})").format(c=c, ex=ex, t=t),
        "greatest": lambda c: sql.SQL("{c} = GREATEST({t}.{c}, {ex}.{c})").format(c=c, ex=ex, t=t),
        "progress": lambda c: sql.SQL(
            "{c} = CASE WHEN {ex}.{c} IS NOT NULL AND ({t}.{c} IS NULL OR {t}.{c} = 'started' OR {ex}.{c} <> 'started')"
            " THEN {ex}.{c} ELSE {t}.{c} END").format(c=c, ex=ex, t=t),
    }
    return [templates[r.kind](sql.Identifier(c)) for c in r.columns]


def stage_name(schema: str, table: Table) -> str:
    return f"stage_{schema}_{table.name}"


def create_stage(schema: str, table: Table) -> sql.Composed:
    return sql.SQL(
        "CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {s}.{t} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    ).format(stage=sql.Identifier(stage_name(schema, table)), s=sql.Identifier(schema), t=sql.Identifier(table.name))


def copy_into_stage(schema: str, table: Table) -> sql.Composed:
    return sql.SQL("COPY {stage} ({cols}) FROM STDIN (FORMAT BINARY)").format(
        stage=sql.Identifier(stage_name(schema, table)), cols=sql.SQL(", ").join(map(sql.Identifier, table.columns)))


def copy_into_table(schema: str, table: Table) -> sql.Composed:
    """Straight into the table: only for rows known to be new (a unique violation says otherwise)."""
    return sql.SQL("COPY {s}.{t} ({cols}) FROM STDIN (FORMAT BINARY)").format(
        s=sql.Identifier(schema), t=sql.Identifier(table.name), cols=sql.SQL(", ").join(map(sql.Identifier, table.columns)))


def upsert_from_stage(schema: str, table: Table) -> sql.Composed:
    t = sql.Identifier(table.name)
    cols = sql.SQL(", ").join(map(sql.Identifier, table.columns))
    return sql.SQL(
        "INSERT INTO {s}.{t} AS {t} ({cols}) SELECT {cols} FROM {stage} ORDER BY {key} ON CONFLICT ({key}) {action}"
    ).format(
        s=sql.Identifier(schema), t=t, cols=cols, stage=sql.Identifier(stage_name(schema, table)),
        key=sql.SQL(", ").join(map(sql.Identifier, table.key)), action=_on_conflict(table),
    )


def upsert_values(schema: str, table: Table) -> sql.Composed:
    """One row from parameters, folded in by the same rules (for row-at-a-time writers: the bench's peers)."""
    t = sql.Identifier(table.name)
    return sql.SQL("INSERT INTO {s}.{t} AS {t} ({cols}) VALUES ({params}) ON CONFLICT ({key}) {action}").format(
        s=sql.Identifier(schema), t=t, cols=sql.SQL(", ").join(map(sql.Identifier, table.columns)),
        params=sql.SQL(", ").join(sql.Placeholder() * len(table.columns)),
        key=sql.SQL(", ").join(map(sql.Identifier, table.key)), action=_on_conflict(table),
    )


def _on_conflict(table: Table) -> sql.Composable:
    if table.immutable:
        return sql.SQL("DO NOTHING")
    sets = [s for r in table.rules for s in _sql_rule(r, sql.Identifier(table.name))]
    return sql.SQL("DO UPDATE SET ") + sql.SQL(", ").join(sets)
