"""A whole demo run as a script sees it: its JSON summary, and all its logs at DEBUG

(no token, no API key, no message text, no error).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from eventbot.demo.runner import DEMO_API_KEY
from eventbot.demo.scenario import TOPICS

TOKEN_SHAPE = re.compile(r"\d{5,}:[A-Za-z0-9_-]{30,}")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_demo_run_logs_no_secret_and_no_message_text(redis_server_url: str, database_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "eventbot.cli", "demo", "--users", "2", "--messages", "3", "--log-level", "DEBUG", "--json"],
        env={"PATH": os.environ["PATH"], "REDIS_URL": redis_server_url, "DATABASE_URL": database_url},
        capture_output=True, text=True, timeout=280,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    # What a script reads of the run: one JSON object, every check true.
    summary = json.loads(result.stdout)
    assert {"users", "messages", "answers", "events", "ttft_p50_ms", "ttft_p99_ms", "audit_ok", "replay_ok"} <= summary.keys()
    assert (summary["users"], summary["messages"], summary["answers"]) == (2, 6, 6)
    assert summary["audit_ok"] is True and summary["replay_ok"] is True and summary["ok"] is True
    assert summary["events"] == sum(summary["events_by_type"].values()) > 6 and summary["ttft_p50_ms"] > 0
    logs = result.stderr
    # The checks below look at what the run logged at DEBUG, eventbot's own lines among them
    # (the HTTP libraries stay at WARNING: tests/test_logs.py).
    records = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert any(r["level"] == "DEBUG" and r["logger"].startswith("eventbot.") for r in records), records[:5]
    assert not TOKEN_SHAPE.search(logs)
    assert DEMO_API_KEY not in logs
    for topic in TOPICS:
        assert topic not in logs, f"message text in the logs: {topic!r}"
    assert "You said:" not in logs, "answer text in the logs"
    assert "eventbot demo notes" not in logs, "file content in the logs"
    # Everything a demo does is expected (a /stop cuts a stream, an update comes twice): no error logged.
    errors = [line for line in logs.splitlines() if '"level":"ERROR"' in line or '"level":"CRITICAL"' in line]
    assert errors == [], errors[:3]
