"""``eventbot status``: streams, partitions, groups, consumers, lag, pending, dead letters."""

from __future__ import annotations

import argparse

import msgspec

from eventbot.commands._shared import add_json_flag, load_settings, print_json, print_table, run, with_redis
from eventbot.connections import keys_for
from eventbot.status import collect


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="streams, groups, lag, pending and dead letters")
    p.add_argument("--streams", action="store_true", help="one row per stream and group, not totals")
    add_json_flag(p)
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    settings = load_settings()
    keys = keys_for(settings)
    status = run(with_redis(settings, lambda redis: collect(redis, keys)))
    if args.json:
        print_json({**msgspec.to_builtins(status), "groups": status.totals()})
        return 0
    print(f"namespace {status.namespace}, {status.partitions} partitions, "
          f"read-model generation {status.readmodel_generation or '-'}")
    print()
    by_family = {f: sum(s.length for s in status.streams if s.family == f) for f in ("conv", "ledger", "tokens")}
    print_table(["family", "entries"], list(by_family.items()))
    print()
    print_table(
        ["group", "streams", "consumers", "pending", "lag"],
        [(g, t["streams"], t["consumers"], t["pending"], t["lag"]) for g, t in sorted(status.totals().items())],
    )
    if args.streams:
        print()
        print_table(
            ["stream", "length", "group", "consumers", "pending", "lag", "last delivered"],
            [
                (s.stream, s.length, g.group, g.consumers, g.pending, g.lag, g.last_delivered)
                for s in status.streams for g in (s.groups or [None]) if g is not None
            ],
        )
    print()
    dead = status.dead_letters
    print(f"dead letters: {sum(dead.values())}" + (f" in {len(dead)} streams (eventbot dlq list)" if dead else ""))
    if status.rejected_updates:
        print(f"rejected Telegram updates kept aside: {status.rejected_updates} "
              f"(XRANGE {status.namespace}:ingest:rejected)")
    return 0
