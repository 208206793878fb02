"""Comparing two schemas table by table: row counts, order-free checksums, sample differing keys."""

from __future__ import annotations

import msgspec
from psycopg import AsyncConnection, sql

from services.projector.pg_tables import ALL_TABLES, Table


class TableDiff(msgspec.Struct, frozen=True, kw_only=True):
    table: str
    live_rows: int
    shadow_rows: int
    live_checksum: str
    shadow_checksum: str
    only_live: list[str] = []
    only_shadow: list[str] = []

    @property
    def equal(self) -> bool:
        return self.live_rows == self.shadow_rows and self.live_checksum == self.shadow_checksum


async def checksum(conn: AsyncConnection, schema: str, table: Table) -> tuple[int, str]:
    # A sum of per-row hashes: independent of row order and of physical layout, cheap on 1M rows.
    cur = await conn.execute(
        sql.SQL(
            "SELECT count(*), coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint), 0)"
            " FROM {}.{} AS t"
        ).format(sql.Identifier(schema), sql.Identifier(table.name))
    )
    n, total = await cur.fetchone()  # type: ignore[misc]
    return int(n), format(int(total) & (2**64 - 1), "016x")


async def compare(conn: AsyncConnection, live: str, shadow: str, *, samples: int = 5) -> list[TableDiff]:
    out = []
    for table in ALL_TABLES:
        ln, lc = await checksum(conn, live, table)
        sn, sc = await checksum(conn, shadow, table)
        diff = TableDiff(table=table.name, live_rows=ln, shadow_rows=sn, live_checksum=lc, shadow_checksum=sc)
        if not diff.equal:
            diff = msgspec.structs.replace(
                diff,
                only_live=await _except(conn, table, live, shadow, samples),
                only_shadow=await _except(conn, table, shadow, live, samples),
            )
        out.append(diff)
    return out


async def _except(conn: AsyncConnection, table: Table, a: str, b: str, limit: int) -> list[str]:
    key = sql.SQL(", ").join(map(sql.Identifier, table.key))
    cur = await conn.execute(
        sql.SQL(
            "SELECT {key} FROM (SELECT * FROM {a}.{t} EXCEPT SELECT * FROM {b}.{t}) AS d ORDER BY {key} LIMIT %s"
        ).format(key=key, a=sql.Identifier(a), b=sql.Identifier(b), t=sql.Identifier(table.name)),
        (limit,),
    )
    return ["/".join(str(v) for v in row) for row in await cur.fetchall()]
