"""``eventbot doctor``: check settings, Redis, Postgres, Telegram and Anthropic; say what to fix."""

from __future__ import annotations

import argparse
import sys

import msgspec

from eventbot.commands._shared import add_json_flag, print_json, print_table, redis_url, run
from eventbot.connections import redis_client
from eventbot.doctor import Check, run_checks
from eventbot.settings import Settings, SettingsError
from services.agent.pricing import DEFAULT_PRICES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check the deployment and say what to fix")
    add_json_flag(p)
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as e:
        checks = [Check("settings", "fail", str(e), "fix the variable it names")]
    else:
        url = redis_url(settings)
        checks = [Check("settings", "ok", "environment parsed")]
        checks += run(run_checks(settings, lambda: redis_client(url, max_connections=2), DEFAULT_PRICES))
    failed = any(c.level == "fail" for c in checks)
    if args.json:
        print_json({"ok": not failed, "checks": [msgspec.to_builtins(c) for c in checks]})
    else:
        print_table(["check", "result", "detail", "fix"], [(c.name, c.level.upper(), c.detail, c.fix) for c in checks])
        print("\n" + ("problems found: see FAIL rows" if failed else "no problems found"), file=sys.stderr)
    return 1 if failed else 0
