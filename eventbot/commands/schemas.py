"""``eventbot schemas [--check]``: write or check the JSON Schema of every event type."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from events import ALL_EVENT_TYPES
from events.schema import check_schemas, write_schemas

DEFAULT_DIR = Path("schemas/events")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("schemas", help="write (or --check) schemas/events/*.json from the event types")
    p.add_argument("--check", action="store_true", help="exit 1 if the files and the code disagree")
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="target folder (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.check:
        problems = check_schemas(args.dir, ALL_EVENT_TYPES)
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print("event schemas are out of date: run `eventbot schemas`", file=sys.stderr)
            return 1
        print(f"{len(ALL_EVENT_TYPES)} event schemas match the code")
        return 0
    written = write_schemas(args.dir, ALL_EVENT_TYPES)
    print(f"wrote {len(written)} schemas to {args.dir}")
    return 0
