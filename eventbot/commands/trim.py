"""``eventbot trim``: drop stream entries that are archived and acked by every group (tokens by length/age)."""

from __future__ import annotations

import argparse
import sys

import msgspec

from eventbot.commands._shared import load_settings, redis_url, run
from eventbot.connections import keys_for, redis_client
from services.projector.pg_pool import open_pool
from services.projector.trimmer import Trimmed, Trimmer


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trim", help="trim streams below what is archived and acked by every group")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    settings = load_settings()
    if not settings.database_url:
        print("DATABASE_URL is not set (trimming needs to know what is archived)", file=sys.stderr)
        return 2

    async def go() -> list[Trimmed]:
        redis = redis_client(redis_url(settings), max_connections=4)
        pool = await open_pool(settings.database_url, max_size=2, name="trim")  # type: ignore[arg-type]
        try:
            return await Trimmer(redis, keys_for(settings), pool, settings.pg_schema, tokens_maxlen=settings.tokens_maxlen,
                                 tokens_max_age_s=settings.tokens_max_age_s).trim()
        finally:
            await pool.close()
            await redis.aclose()

    done = run(go())
    if args.json:
        sys.stdout.write(msgspec.json.encode(done).decode() + "\n")
    else:
        for t in done:
            print(f"{t.stream:<32} floor {t.floor or '-':<24} removed {t.removed:,}")
    return 0
