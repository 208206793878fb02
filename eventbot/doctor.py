"""Checks of a deployment, each with what to fix: settings, Redis, Postgres, Telegram, Anthropic."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal

import msgspec
from redis.asyncio import Redis

from eventbot.settings import Settings

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

    from services.agent.pricing import PriceTable

Level = Literal["ok", "warn", "fail", "skip"]


class Check(msgspec.Struct, frozen=True):
    name: str
    level: Level
    detail: str
    fix: str = ""


# Policies that may evict keys without a TTL, i.e. the streams themselves.
EVICTS_STREAMS = {"allkeys-lru", "allkeys-lfu", "allkeys-random"}


async def check_redis(redis: Redis) -> list[Check]:
    try:
        info = await asyncio.wait_for(redis.info(), 3)
    except Exception as e:  # noqa: BLE001 - any failure to reach it is the finding
        return [Check("redis", "fail", f"unreachable: {type(e).__name__}",
                      "start Redis or set REDIS_URL (e.g. `docker compose up -d redis`)")]
    checks = [Check("redis", "ok", f"Redis {info.get('redis_version')} answers")]
    version = tuple(int(x) for x in str(info.get("redis_version", "0")).split(".")[:2])
    if version < (7, 0):
        checks.append(Check("redis.version", "fail", f"version {info.get('redis_version')}", "use Redis 7.0 or newer"))
    config = await redis.config_get("maxmemory-policy")
    policy = config.get("maxmemory-policy", "")
    if policy in EVICTS_STREAMS:
        checks.append(Check("redis.maxmemory-policy", "fail", f"{policy} can evict stream keys: events would be lost",
                            "CONFIG SET maxmemory-policy noeviction (and in redis.conf)"))
    elif policy != "noeviction":
        checks.append(Check("redis.maxmemory-policy", "warn", f"{policy} can evict dedupe markers (keys with a TTL)",
                            "use maxmemory-policy noeviction"))
    else:
        checks.append(Check("redis.maxmemory-policy", "ok", "noeviction"))
    aof = await redis.config_get("appendonly")
    if aof.get("appendonly") != "yes":
        checks.append(Check("redis.persistence", "fail", "AOF is off: a restart loses every event since the last RDB save",
                            "appendonly yes, appendfsync everysec (or always for the ledger)"))
    else:
        fsync = (await redis.config_get("appendfsync")).get("appendfsync")
        checks.append(Check("redis.persistence", "ok", f"AOF on, appendfsync {fsync}"))
    return checks


async def check_postgres(dsn: str | None, *, migrations_table: str = "schema_migrations") -> list[Check]:
    if not dsn:
        return [Check("postgres", "skip", "DATABASE_URL not set (the agent and ingest don't need it)",
                      "set DATABASE_URL for the projector")]
    import psycopg

    try:
        async with await psycopg.AsyncConnection.connect(dsn, connect_timeout=3) as conn:
            version = (await (await conn.execute("show server_version")).fetchone())[0]
            checks = [Check("postgres", "ok", f"PostgreSQL {version} answers")]
            exists = (await (await conn.execute("select to_regclass(%s)", (migrations_table,))).fetchone())[0]
            if exists is None:
                checks.append(Check("postgres.migrations", "fail", "no migrations applied", "run `eventbot migrate`"))
            else:
                n = (await (await conn.execute(f"select count(*) from {migrations_table}")).fetchone())[0]
                checks.append(Check("postgres.migrations", "ok", f"{n} migrations applied"))
            return checks
    except psycopg.Error as e:
        return [Check("postgres", "fail", f"unreachable: {type(e).__name__}", "start Postgres or fix DATABASE_URL")]


async def check_telegram(settings: Settings) -> list[Check]:
    if not settings.telegram_bot_token:
        return [Check("telegram", "skip", "TELEGRAM_BOT_TOKEN not set", "set it (or TELEGRAM_BOT_TOKEN_FILE) to run the bot")]
    from aiogram import Bot
    from aiogram.client.session.aiohttp import AiohttpSession
    from aiogram.client.telegram import TelegramAPIServer

    session = AiohttpSession(api=TelegramAPIServer.from_base(settings.telegram_api_url)) if settings.telegram_api_url else None
    bot = Bot(settings.telegram_bot_token, session=session)
    try:
        me = await asyncio.wait_for(bot.get_me(), 10)
        return [Check("telegram", "ok", f"bot @{me.username} answers")]
    except Exception as e:  # noqa: BLE001
        return [Check("telegram", "fail", f"getMe failed: {type(e).__name__}",
                      "check TELEGRAM_BOT_TOKEN and TELEGRAM_API_URL")]
    finally:
        await bot.session.close()


async def check_anthropic(settings: Settings) -> list[Check]:
    if not settings.anthropic_api_key:
        return [Check("anthropic", "skip", "ANTHROPIC_API_KEY not set", "set it (or ANTHROPIC_API_KEY_FILE) to answer")]
    import anthropic

    client = anthropic.AsyncAnthropic(api_key=settings.anthropic_api_key, base_url=settings.anthropic_base_url, max_retries=0)
    try:
        await asyncio.wait_for(client.models.list(limit=1), 10)
        return [Check("anthropic", "ok", "API answers"), *[await check_model(client, m) for m in settings.models]]
    except anthropic.AuthenticationError:
        return [Check("anthropic", "fail", "API key rejected", "check ANTHROPIC_API_KEY")]
    except Exception as e:  # noqa: BLE001
        return [Check("anthropic", "fail", f"unreachable: {type(e).__name__}", "check ANTHROPIC_BASE_URL and the network")]
    finally:
        await client.close()


async def check_model(client: AsyncAnthropic, model: str) -> Check:
    """A configured model as the API's catalogue has it: active, deprecated (retiring) or retired (fails)."""
    import anthropic

    name, fix = f"anthropic.model.{model}", "offer another model in EVENTBOT_MODELS"
    try:
        info = await asyncio.wait_for(client.models.retrieve(model), 10)
    except anthropic.NotFoundError:
        return Check(name, "fail", "not a model the API serves: every answer with it would fail", fix)
    except (anthropic.APIError, asyncio.TimeoutError) as e:
        # One lookup failing (a 403, a 529, a timeout) says nothing of the model, nor of the others.
        return Check(name, "warn", f"could not look it up: {type(e).__name__}", "run doctor again")
    if info.lifecycle == "retired":
        return Check(name, "fail", "retired: every answer with it fails", fix)
    if info.lifecycle == "deprecated":
        when = f"on {info.retires_at:%Y-%m-%d}" if info.retires_at else "at a date not yet set"
        return Check(name, "warn", f"deprecated, retiring {when}", fix)
    if info.lifecycle != "active":
        return Check(name, "warn", f"lifecycle {info.lifecycle!r}, unknown to this version", fix)
    return Check(name, "ok", f"{info.display_name}, active")


def check_prices(settings: Settings, prices: PriceTable) -> list[Check]:
    """Every offered model has a price: the agent bills by the table and refuses to start without one."""
    unpriced = prices.unpriced(settings.models)
    if unpriced:
        return [Check("prices", "fail", f"no price in table {prices.version} for {', '.join(unpriced)}",
                      "add them to services/agent/pricing.py or leave them out of EVENTBOT_MODELS")]
    return [Check("prices", "ok", f"table {prices.version} prices all {len(settings.models)} models")]


async def run_checks(settings: Settings, redis_factory: Callable[[], Redis], prices: PriceTable) -> list[Check]:
    redis = redis_factory()
    try:
        checks = await check_redis(redis)
    finally:
        await redis.aclose()
    checks += check_prices(settings, prices)
    parts: list[Awaitable[list[Check]]] = [
        check_postgres(settings.database_url), check_telegram(settings), check_anthropic(settings)
    ]
    for found in await asyncio.gather(*parts):
        checks += found
    return checks
