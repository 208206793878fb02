"""Structured (JSON) logs with correlation ids, and no secrets in them.

Message bodies are never passed to the logger by our code; secrets that a
library might print (a bot token in a URL, an API key) are masked by a filter
that knows this process's secret values and the shapes of Telegram and
Anthropic credentials.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from contextvars import ContextVar
from datetime import UTC, datetime

import orjson

correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)

_SECRET_SHAPES = re.compile(
    r"(?<![0-9])\d{5,}:[A-Za-z0-9_-]{30,}"  # Telegram bot token, also inside /bot<token>/
    r"|sk-ant-[A-Za-z0-9_-]{10,}"  # Anthropic API key
)


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 6]

    def redact(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "***")
        return _SECRET_SHAPES.sub("***", text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        cid = correlation_id.get()
        if cid:
            entry["correlation_id"] = cid
        for key in ("service", "group", "stream", "event_type", "event_id", "chat_id", "user_id", "response_id"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_text:
            entry["exc"] = record.exc_text
        elif record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


QUIETED = ("aiohttp.access", "aiogram.event", "httpx", "httpcore", "httpx2", "httpcore2", "anthropic")


def configure_logging(level: str = "INFO", secrets: Iterable[str | None] = (), stream=None) -> logging.Handler:  # type: ignore[no-untyped-def]
    """Route every logger (ours and the libraries') through one JSON handler with redaction."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # These libraries log URLs (with the bot token), update text or whole request
    # bodies (the conversation) at INFO/DEBUG: never below WARNING, whatever the level.
    # The Anthropic SDK's HTTP stack logs as httpx2 and httpcore2.
    for name in QUIETED:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    return handler
