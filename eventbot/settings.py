"""Settings: read from the environment once, at start, into one frozen object.

A missing or malformed value raises :class:`SettingsError` naming the variable,
so a misconfigured deployment fails before it touches Redis or Telegram.
Secrets may come from a file named by ``<NAME>_FILE`` (Docker secrets).

``REDIS_URL`` names a single Redis (``redis://``, ``rediss://``, ``unix://``) or a
Redis Cluster: ``redis+cluster://host:port[,host:port...]`` (``rediss+cluster://``
with TLS), listing one or more startup nodes; the rest of the cluster is discovered.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_NAMESPACE_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    redis_url: str | None = None
    database_url: str | None = None
    namespace: str = "eventbot"
    partitions: int = 8

    telegram_bot_token: str | None = field(default=None, repr=False)
    telegram_api_url: str | None = None
    telegram_webhook_url: str | None = None
    telegram_webhook_secret: str | None = field(default=None, repr=False)
    anthropic_api_key: str | None = field(default=None, repr=False)
    anthropic_base_url: str | None = None
    metrics_port: int = 9100

    admin_ids: frozenset[int] = frozenset()
    models: tuple[str, ...] = ("claude-sonnet-5-5", "claude-haiku-4-5", "claude-opus-5-5")
    default_model: str = "claude-sonnet-5-5"
    max_tokens: int = 2048

    dedupe_window_s: int = 7 * 24 * 3600
    tokens_maxlen: int = 100_000
    batch_size: int = 256
    # The Postgres projector's batch: one transaction each (rows, archive, checkpoint). In a
    # backlog, 2,000 against 500 cuts Postgres's CPU per event by about 30 % (statements
    # parsed and planned, staging truncated, a commit: once per batch);
    # a live stream's batches stay as small as what has arrived.
    projector_batch_size: int = 2_000
    block_ms: int = 2_000
    claim_idle_ms: int = 30_000
    max_deliveries: int = 5
    history_turns: int = 20
    merge_window_ms: int = 1_000
    draft_interval_ms: int = 1_000
    on_new_message: str = "cancel"
    rate_limit_per_minute: int = 20
    max_file_bytes: int = 20 * 1024 * 1024
    file_cache_ttl_s: int = 3600
    # Stars packages offered by /pay, and what one Star buys in micro-USD of credit.
    stars_packages: tuple[int, ...] = (50, 100, 250, 500, 1000)
    micro_usd_per_star: int = 10_000
    webhook_host: str = "127.0.0.1"
    webhook_port: int = 8080
    log_level: str = "INFO"
    # Projections: the live Postgres schema, how many ledger ops the user view keeps,
    # and how old a tokens entry may get before the trimmer drops it.
    pg_schema: str = "eventbot"
    recent_ops: int = 10
    tokens_max_age_s: int = 3600
    trim_keep_recent_s: int = 3600

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        return _Reader(os.environ if env is None else env).settings()


class _Reader:
    """Parses each variable with a named converter so errors can name it."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def raw(self, name: str) -> str | None:
        value = self.env.get(name)
        return value if value not in (None, "") else None

    def secret(self, name: str) -> str | None:
        value = self.raw(name)
        path = self.raw(f"{name}_FILE")
        if value is not None and path is not None:
            raise SettingsError(f"{name} and {name}_FILE are both set; set one")
        if path is None:
            return value
        try:
            return Path(path).read_text().strip() or None
        except OSError as e:
            raise SettingsError(f"{name}_FILE: cannot read {path!r}: {e.strerror}") from e

    def get(self, name: str, convert: Callable[[str], T], default: T) -> T:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return convert(value)
        except (TypeError, ValueError) as e:
            raise SettingsError(f"{name}={value!r} is malformed: {e}") from e

    def settings(self) -> Settings:
        d = Settings()
        models = self.get("EVENTBOT_MODELS", _csv, d.models)
        default_model = self.get("EVENTBOT_DEFAULT_MODEL", str, models[0] if models else d.default_model)
        if default_model not in models:
            raise SettingsError(f"EVENTBOT_DEFAULT_MODEL={default_model!r} is not one of EVENTBOT_MODELS")
        return Settings(
            redis_url=self.get("REDIS_URL", _redis_url, None),
            database_url=self.get("DATABASE_URL", _url(("postgres", "postgresql")), None),
            namespace=self.get("EVENTBOT_NAMESPACE", _namespace, d.namespace),
            partitions=self.get("EVENTBOT_PARTITIONS", _int_in(1, 1024), d.partitions),
            telegram_bot_token=self.secret("TELEGRAM_BOT_TOKEN"),
            telegram_api_url=self.get("TELEGRAM_API_URL", _url(("http", "https")), None),
            telegram_webhook_url=self.get("TELEGRAM_WEBHOOK_URL", _url(("https", "http")), None),
            telegram_webhook_secret=self._webhook_secret(),
            anthropic_api_key=self.secret("ANTHROPIC_API_KEY"),
            anthropic_base_url=self.get("ANTHROPIC_BASE_URL", _url(("http", "https")), None),
            metrics_port=self.get("METRICS_PORT", _int_in(0, 65535), d.metrics_port),
            admin_ids=self.get("EVENTBOT_ADMIN_IDS", _int_set, d.admin_ids),
            models=models,
            default_model=default_model,
            max_tokens=self.get("EVENTBOT_MAX_TOKENS", _int_in(16, 128_000), d.max_tokens),
            dedupe_window_s=self.get("EVENTBOT_DEDUPE_WINDOW_S", _int_in(60, 365 * 86400), d.dedupe_window_s),
            tokens_maxlen=self.get("EVENTBOT_TOKENS_MAXLEN", _int_in(100, 10**9), d.tokens_maxlen),
            batch_size=self.get("EVENTBOT_BATCH_SIZE", _int_in(1, 10_000), d.batch_size),
            projector_batch_size=self.get("EVENTBOT_PROJECTOR_BATCH_SIZE", _int_in(1, 10_000), d.projector_batch_size),
            block_ms=self.get("EVENTBOT_BLOCK_MS", _int_in(1, 60_000), d.block_ms),
            claim_idle_ms=self.get("EVENTBOT_CLAIM_IDLE_MS", _int_in(100, 3_600_000), d.claim_idle_ms),
            max_deliveries=self.get("EVENTBOT_MAX_DELIVERIES", _int_in(1, 1000), d.max_deliveries),
            history_turns=self.get("EVENTBOT_HISTORY_TURNS", _int_in(1, 1000), d.history_turns),
            merge_window_ms=self.get("EVENTBOT_MERGE_WINDOW_MS", _int_in(0, 60_000), d.merge_window_ms),
            draft_interval_ms=self.get("EVENTBOT_DRAFT_INTERVAL_MS", _int_in(50, 60_000), d.draft_interval_ms),
            on_new_message=self.get("EVENTBOT_ON_NEW_MESSAGE", _choice("cancel", "queue"), d.on_new_message),
            rate_limit_per_minute=self.get("EVENTBOT_RATE_LIMIT_PER_MINUTE", _int_in(1, 100_000), d.rate_limit_per_minute),
            max_file_bytes=self.get("EVENTBOT_MAX_FILE_BYTES", _int_in(1, 2 * 1024**3), d.max_file_bytes),
            file_cache_ttl_s=self.get("EVENTBOT_FILE_CACHE_TTL_S", _int_in(1, 30 * 86400), d.file_cache_ttl_s),
            stars_packages=self.get("EVENTBOT_STARS_PACKAGES", _int_tuple(1, 10_000), d.stars_packages),
            micro_usd_per_star=self.get("EVENTBOT_MICRO_USD_PER_STAR", _int_in(1, 10**9), d.micro_usd_per_star),
            webhook_host=self.get("EVENTBOT_WEBHOOK_HOST", str, d.webhook_host),
            webhook_port=self.get("EVENTBOT_WEBHOOK_PORT", _int_in(0, 65535), d.webhook_port),
            log_level=self.get("EVENTBOT_LOG_LEVEL", _choice("DEBUG", "INFO", "WARNING", "ERROR"), d.log_level),
            pg_schema=self.get("EVENTBOT_PG_SCHEMA", _namespace, d.pg_schema),
            recent_ops=self.get("EVENTBOT_RECENT_OPS", _int_in(0, 1000), d.recent_ops),
            tokens_max_age_s=self.get("EVENTBOT_TOKENS_MAX_AGE_S", _int_in(60, 365 * 86400), d.tokens_max_age_s),
            trim_keep_recent_s=self.get("EVENTBOT_TRIM_KEEP_RECENT_S", _int_in(0, 30 * 86400), d.trim_keep_recent_s),
        )

    def _webhook_secret(self) -> str | None:
        secret = self.secret("TELEGRAM_WEBHOOK_SECRET")
        # Telegram accepts 1-256 characters of A-Z, a-z, 0-9, _ and -.
        if secret is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", secret):
            raise SettingsError("TELEGRAM_WEBHOOK_SECRET must be 1-256 characters of A-Z, a-z, 0-9, _ or -")
        if self.raw("TELEGRAM_WEBHOOK_URL") is not None and secret is None:
            raise SettingsError("TELEGRAM_WEBHOOK_SECRET is required when TELEGRAM_WEBHOOK_URL is set")
        return secret


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    def convert(value: str) -> int:
        n = int(value.strip())
        if not lo <= n <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return n

    return convert


def _choice(*options: str) -> Callable[[str], str]:
    def convert(value: str) -> str:
        v = value.strip()
        if v.upper() in options:
            return v.upper()
        if v.lower() in options:
            return v.lower()
        raise ValueError(f"must be one of {', '.join(options)}")

    return convert


def _url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def convert(value: str) -> str:
        scheme, sep, rest = value.strip().partition("://")
        if not sep or scheme not in schemes or not rest:
            raise ValueError(f"must be a URL with scheme {' or '.join(schemes)}")
        return value.strip()

    return convert


def _redis_url(value: str) -> str:
    url = _url(("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"))(value)
    if "+cluster://" in url:
        from eventbot.redisclient import parse_cluster_url

        parse_cluster_url(url)  # every startup node must be host:port
    return url


def _namespace(value: str) -> str:
    # Braces would change the Redis Cluster hash tag of every key.
    if not _NAMESPACE_RE.fullmatch(value):
        raise ValueError("must be 1-63 characters of a-z, 0-9, '_', '.', '-' (no braces)")
    return value


def _csv(value: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise ValueError("must name at least one value")
    return items


def _int_tuple(lo: int, hi: int) -> Callable[[str], tuple[int, ...]]:
    def convert(value: str) -> tuple[int, ...]:
        items = tuple(_int_in(lo, hi)(v) for v in _csv(value))
        if len(set(items)) != len(items):
            raise ValueError("must not repeat a value")
        return items

    return convert


def _int_set(value: str) -> frozenset[int]:
    return frozenset(int(v) for v in _csv(value))
