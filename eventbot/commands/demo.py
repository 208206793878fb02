"""``eventbot demo``: the whole bot offline, with simulated users, then the checks."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys

from eventbot.commands._shared import load_settings, print_json
from eventbot.demo.runner import DemoOptions, run_demo
from eventbot.localdefaults import local_services
from eventbot.localservices import ServiceUnavailable
from eventbot.logs import configure_logging


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run everything offline (fake Telegram, fake Claude) with simulated users, then audit and replay",
    )
    p.add_argument("--users", type=int, default=5, help="simulated users (default: %(default)s)")
    p.add_argument("--messages", type=int, default=4, help="messages per user, at least 3 (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for any one step")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="level of the services' logs on stderr (default: %(default)s)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    if args.users < 1 or args.messages < 3:
        print("--users must be >= 1 and --messages >= 3 (a file, a /stop and a redelivery are part of it)",
              file=sys.stderr)
        return 2
    settings = dataclasses.replace(load_settings(), namespace="eventbot-demo")
    # The services log as in production (JSON, no message text); the demo keeps them quiet.
    configure_logging(args.log_level)
    logging.getLogger("eventbot.demo").setLevel(logging.INFO)
    try:
        # Its own namespace and its own database, even on a deployment's servers.
        with local_services(settings, database="eventbot_demo", fresh_database=True, own_database=True) as resolved:
            summary = asyncio.run(run_demo(resolved, DemoOptions(args.users, args.messages, args.timeout)))
    except ServiceUnavailable as e:
        print(f"cannot run the demo: {e}", file=sys.stderr)
        return 2
    if args.json:
        print_json(summary.as_dict())
    else:
        print("\n".join(summary.lines()))
    return 0 if summary.ok else 1
