"""``eventbot audit ledger|verify``: a user's ledger with causes, and the checks that every cent adds up."""

from __future__ import annotations

import argparse
import csv
import sys
from datetime import datetime

import msgspec

from eventbot.commands._shared import load_settings, redis_url, run
from eventbot.connections import keys_for, redis_client
from events import default_codec
from services.projector.audit import Auditor, Discrepancy, Operation, ledger
from services.projector.pg_pool import open_pool


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="the balance history of a user, and cross-checks of the ledger")
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    led = what.add_parser("ledger", help="every ledger event of a user with its running balance and cause")
    led.add_argument("--user", type=int, required=True)
    led.add_argument("--since", type=_time, help="list from this time (ISO 8601)")
    led.add_argument("--at", type=_time, help="the balance as of this time (ISO 8601)")
    led.add_argument("--format", choices=("table", "json", "csv"), default="table")
    led.set_defaults(func=_ledger)
    ver = what.add_parser("verify", help="seq, hash chain, fold, Postgres, Redis and ledger head agree; exit 1 if not")
    who = ver.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", type=int)
    who.add_argument("--all", action="store_true")
    ver.add_argument("--json", action="store_true")
    ver.set_defaults(func=_verify)


def _time(value: str) -> datetime:
    t = datetime.fromisoformat(value)
    if t.tzinfo is None:
        raise argparse.ArgumentTypeError("give a time zone, e.g. 2026-01-31T12:00:00+00:00")
    return t


def _ledger(args: argparse.Namespace) -> int:
    settings = load_settings()

    async def go() -> tuple[list[Operation], int]:
        pool = await open_pool(settings.database_url, max_size=1, name="audit")  # type: ignore[arg-type]
        try:
            return await ledger(pool, settings.pg_schema, args.user, since=args.since, at=args.at)
        finally:
            await pool.close()

    ops, balance = run(go())
    if args.format == "json":
        sys.stdout.write(msgspec.json.encode({"user_id": args.user, "balance": balance, "operations": ops}).decode() + "\n")
    elif args.format == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(["seq", "occurred_at", "type", "amount", "balance_after", "held_after", "cause", "hash"])
        for o in ops:
            w.writerow([o.seq, o.occurred_at.isoformat(), o.type, o.amount, o.balance_after, o.held_after, o.cause, o.hash])
    else:
        print(f"{'seq':>6}  {'occurred_at':<25} {'type':<18} {'amount':>12} {'balance':>12} {'held':>10}  cause")
        for o in ops:
            print(f"{o.seq:>6}  {o.occurred_at.isoformat(timespec='seconds'):<25} {o.type:<18} {o.amount:>12,} "
                  f"{o.balance_after:>12,} {o.held_after:>10,}  {o.cause}")
        when = f"as of {args.at.isoformat()}" if args.at else "now"
        print(f"balance of user {args.user} {when}: {balance:,} micro-USD")
    return 0


def _verify(args: argparse.Namespace) -> int:
    settings = load_settings()

    async def go() -> tuple[int, list[Discrepancy]]:
        redis = redis_client(redis_url(settings), max_connections=4)
        pool = await open_pool(settings.database_url, max_size=2, name="audit")  # type: ignore[arg-type]
        try:
            auditor = Auditor(pool, redis, keys_for(settings), default_codec(), settings.pg_schema)
            users = await auditor.users() if args.all else [args.user]
            found: list[Discrepancy] = []
            for user in users:
                found += await auditor.verify(user)
            return len(users), found
        finally:
            await pool.close()
            await redis.aclose()

    checked, found = run(go())
    if args.json:
        sys.stdout.write(msgspec.json.encode({"users_checked": checked, "ok": not found, "discrepancies": found}).decode() + "\n")
    else:
        for d in found:
            print(f"user {d.user_id} seq {d.seq}: {d.check}: {d.detail}")
        print(f"{checked} user(s) checked: " + ("every balance is explained" if not found else f"{len(found)} discrepancy(ies)"))
    return 1 if found else 0
