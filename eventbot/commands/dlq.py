"""``eventbot dlq list|show|retry|drop``: inspect and re-drive dead letters."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from eventbot.commands._shared import add_json_flag, load_settings, print_json, print_table, run, with_redis
from eventbot.connections import keys_for
from eventbot.deadletters import DeadLetters
from events import default_codec


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dlq", help="inspect and re-drive dead letters")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = actions.add_parser("list", help="list dead letters")
    ls.add_argument("--group", help="only this consumer group")
    ls.add_argument("--limit", type=int, default=100)
    add_json_flag(ls)
    ls.set_defaults(func=cmd_list)
    for name, func, text in (
        ("show", cmd_show, "show one dead letter and its decoded event"),
        ("retry", cmd_retry, "re-drive a dead letter to the group that failed it (after fixing the cause)"),
        ("drop", cmd_drop, "delete a dead letter for good"),
    ):
        a = actions.add_parser(name, help=text)
        a.add_argument("ref", help="<dead-letter stream>/<id>, as `eventbot dlq list` prints it")
        add_json_flag(a)
        a.set_defaults(func=func)


def _dead_letters(fn):  # type: ignore[no-untyped-def]
    settings = load_settings()
    return run(with_redis(settings, lambda redis: fn(DeadLetters(redis, keys_for(settings)))))


def cmd_list(args: argparse.Namespace) -> int:
    letters = _dead_letters(lambda d: d.list(args.group, args.limit))
    if args.json:
        print_json([{**_plain(x), "ref": x.ref} for x in letters])
    else:
        print_table(
            ["ref", "group", "type", "deliveries", "failed at", "error"],
            [(x.ref, x.group, x.type, x.deliveries, _when(x.failed_at), x.error[:60]) for x in letters],
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    try:
        letter, fields = _dead_letters(lambda d: d.get(args.ref))
    except KeyError as e:
        print(e.args[0], file=sys.stderr)
        return 1
    event = None
    if b"d" in fields:
        try:
            codec = default_codec()
            decoded = codec.decode(fields[b"t"].decode(), int(fields[b"v"]), fields[b"d"])
            event = codec.to_json(decoded).decode()
        except Exception as e:  # noqa: BLE001 - showing why it can't be decoded is the point
            event = f"<cannot decode: {type(e).__name__}: {e}>"
    if args.json:
        print_json({**_plain(letter), "ref": letter.ref, "event": event})
    else:
        for k, v in {**_plain(letter), "failed_at": _when(letter.failed_at), "event": event}.items():
            print(f"{k:>11}: {v}")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    try:
        new_id = _dead_letters(lambda d: d.retry(args.ref))
    except (KeyError, ValueError) as e:
        print(e.args[0], file=sys.stderr)
        return 1
    print_json({"ref": args.ref, "redriven_as": new_id}) if args.json else print(f"re-driven as {new_id}")
    return 0


def cmd_drop(args: argparse.Namespace) -> int:
    try:
        _dead_letters(lambda d: d.drop(args.ref))
    except KeyError as e:
        print(e.args[0], file=sys.stderr)
        return 1
    print_json({"ref": args.ref, "dropped": True}) if args.json else print("dropped")
    return 0


def _plain(letter) -> dict:  # type: ignore[no-untyped-def]
    import msgspec

    return msgspec.structs.asdict(letter)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds") if ms else ""
