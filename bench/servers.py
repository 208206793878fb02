"""Servers for benchmarks: REDIS_URL / DATABASE_URL, else the local defaults."""

from __future__ import annotations

import os

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def redis_url() -> str:
    return os.environ.get("REDIS_URL") or DEFAULT_REDIS


def postgres_dsn() -> str:
    return os.environ.get("DATABASE_URL") or DEFAULT_POSTGRES
