"""The offline demo: fake Telegram and fake Claude, the real services, simulated users, then checks.

Everything runs in this process against real Redis and Postgres (found or
started by :mod:`eventbot.localdefaults`), in the demo's own namespace and
database, so the demo never touches a deployment's data.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry
from psycopg import sql
from redis.asyncio import Redis

from eventbot.connections import keys_for, redis_client
from eventbot.demo.observer import Observer
from eventbot.demo.scenario import STOP_MARKER, Conversation, Exchange
from eventbot.demo.summary import Summary, percentile
from eventbot.fakes.anthropic import FakeAnthropic
from eventbot.fakes.telegram import FakeTelegram, TgUser
from eventbot.keys import Keys
from eventbot.ledger import Ledger
from eventbot.services import NAMES, SERVICES
from eventbot.settings import Settings
from eventbot.status import collect
from events import default_codec

GROUPS = ("readmodel", "postgres", "agent")
FIRST_USER_ID = 500_001
DEMO_API_KEY = "demo-key-for-the-fake-anthropic"


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    users: int = 5
    messages: int = 4
    timeout_s: float = 120.0
    progress: bool = True


def demo_settings(settings: Settings, tg: FakeTelegram, claude: FakeAnthropic) -> Settings:
    return dataclasses.replace(
        settings,
        telegram_bot_token=tg.token,
        telegram_api_url=tg.base_url,
        telegram_webhook_url=None,
        anthropic_api_key=DEMO_API_KEY,
        anthropic_base_url=claude.base_url,
        # Snappier than production defaults, so a demo user isn't kept waiting.
        merge_window_ms=0,  # so the hot-path figure is the overhead alone (the window is a feature, not a cost)
        draft_interval_ms=250,
        block_ms=500,
        claim_idle_ms=5_000,
    )


async def run_demo(settings: Settings, options: DemoOptions) -> Summary:
    started = time.monotonic()
    codec = default_codec()
    stop_events: dict[int, asyncio.Event] = {}

    async def hold_long_answers(request_index: int, delta_index: int) -> None:
        # The "[long]" message is stopped by its user mid-answer: hold its second
        # delta until /stop went out, so the demo shows a real cancellation.
        if delta_index != 1:
            return
        texts = claude.requests[request_index].texts()
        if texts and STOP_MARKER in texts[-1]:
            user_id = int(texts[-1].split("#", 1)[0].removeprefix("[u"))
            event = stop_events.setdefault(user_id, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), 10)
            except asyncio.TimeoutError:
                pass

    async with FakeTelegram() as tg, FakeAnthropic(
        # thinking_chars: the default model thinks before it answers; the user sees only the answer.
        answer_chars=600, delta_chars=30, delta_delay_s=0.005, before_delta=hold_long_answers, thinking_chars=240,
    ) as claude:
        config = demo_settings(settings, tg, claude)
        keys = keys_for(config)
        redis = redis_client(config.redis_url or "", max_connections=32)
        try:
            await _clear(redis, keys)
            stop = asyncio.Event()
            services = [asyncio.create_task(SERVICES[n](config, CollectorRegistry(), stop), name=n) for n in NAMES]
            observer = Observer(redis, keys, codec)
            changed = asyncio.Condition()
            watcher = asyncio.create_task(_watch(observer, changed, services))
            ledger = Ledger(redis, keys, codec)
            conversations = [
                Conversation(
                    tg, observer, ledger, changed, TgUser(FIRST_USER_ID + i, first_name=f"Demo{i}"),
                    options.messages, redeliver_one=(i == 0), stop_requested=stop_events, timeout_s=options.timeout_s,
                )
                for i in range(options.users)
            ]
            expected = options.users * options.messages
            bar = asyncio.create_task(_progress(observer, conversations, expected)) if options.progress else None
            results = await asyncio.gather(*(c.run() for c in conversations), return_exceptions=True)
            errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
            await _caught_up(redis, keys, options.timeout_s)
            await observer.poll()
            if bar is not None:
                bar.cancel()
                sys.stderr.write("\n")
            audit_ok, audit_problems = await _audit(config, redis, keys)
            replay_ok, replay_differences = await _replay(config, redis, keys)
            rows = await _rows(config)
            stop.set()
            await asyncio.gather(*services, return_exceptions=True)
            watcher.cancel()
            return _summary(
                options, conversations, observer, claude, rows, audit_ok, audit_problems, replay_ok,
                replay_differences, errors, time.monotonic() - started,
            )
        finally:
            await redis.aclose()


async def _watch(observer: Observer, changed: asyncio.Condition, services: Sequence[asyncio.Task[None]]) -> None:
    while True:
        for task in services:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise RuntimeError(f"service {task.get_name()} died: {task.exception()!r}")
        await observer.poll()
        async with changed:
            changed.notify_all()
        await asyncio.sleep(0.05)


async def _progress(observer: Observer, conversations: Sequence[Conversation], expected: int) -> None:
    tty = sys.stderr.isatty()
    while True:
        answers = sum(1 for c in conversations for x in c.exchanges if x.outcome)
        done = int(30 * answers / max(expected, 1))
        line = (f"[{'#' * done}{'.' * (30 - done)}] answers {answers}/{expected}  "
                f"events {observer.total:,} ({observer.rate():,.0f}/s)")
        sys.stderr.write(("\r" + line) if tty else (line + "\n"))
        sys.stderr.flush()
        await asyncio.sleep(0.25 if tty else 2.0)


async def _caught_up(redis: Redis, keys: Keys, timeout_s: float) -> None:
    """Until every group has taken and acked everything appended so far."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = await collect(redis, keys)
        behind = [
            (s.stream, g.group) for s in status.streams for g in s.groups
            if g.group in GROUPS and (g.pending or (s.last_entry and g.last_delivered < s.last_entry and
                                                    _id(g.last_delivered) < _id(s.last_entry)))
        ]
        if not behind:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"projections still behind after {timeout_s:.0f}s: {behind[:3]}")
        await asyncio.sleep(0.1)


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def _audit(settings: Settings, redis: Redis, keys: Keys) -> tuple[bool, list[str]]:
    from services.projector.audit import Auditor
    from services.projector.pg_pool import open_pool

    pool = await open_pool(settings.database_url or "", max_size=2, name="demo-audit")
    try:
        auditor = Auditor(pool, redis, keys, default_codec(), settings.pg_schema)
        problems = []
        for user in await auditor.users():
            problems += [f"user {d.user_id} seq {d.seq} {d.check}: {d.detail}" for d in await auditor.verify(user)]
        return not problems, problems
    finally:
        await pool.close()


async def _replay(settings: Settings, redis: Redis, keys: Keys) -> tuple[bool, list[str]]:
    from services.projector.pg_pool import open_pool
    from services.projector.replay import replay_postgres

    class Quiet:
        def __init__(self, label: str, total: int) -> None:
            self.done = 0

        def add(self, n: int) -> None:
            self.done += n

        def finish(self) -> None:
            pass

    pool = await open_pool(settings.database_url or "", max_size=2, name="demo-replay")
    try:
        report = await replay_postgres(
            pool, redis, keys, default_codec(), live=settings.pg_schema, shadow=f"{settings.pg_schema}_demo_shadow",
            verify=True, progress=Quiet,  # type: ignore[arg-type]
        )
        differences = [d.table for d in report.differences if not d.equal]
        return bool(report.equal), differences
    finally:
        await pool.close()


async def _rows(settings: Settings) -> dict[str, int]:
    from services.projector.pg_pool import open_pool

    pool = await open_pool(settings.database_url or "", max_size=1, name="demo-rows")
    try:
        async with pool.connection() as conn:
            tables = [r[0] for r in await (await conn.execute(
                "select table_name from information_schema.tables where table_schema = %s and table_type = 'BASE TABLE'"
                " order by 1", (settings.pg_schema,))).fetchall()]
            counts = {}
            for t in tables:
                query = sql.SQL("select count(*) from {}.{}").format(sql.Identifier(settings.pg_schema), sql.Identifier(t))
                counts[t] = (await (await conn.execute(query)).fetchone())[0]
            return counts
    finally:
        await pool.close()


async def _clear(redis: Redis, keys: Keys) -> None:
    async for key in redis.scan_iter(match=f"{keys.prefix()}*", count=1000):
        await redis.unlink(key)


def _summary(
    options: DemoOptions, conversations: Sequence[Conversation], observer: Observer, claude: FakeAnthropic,
    rows: dict[str, int], audit_ok: bool, audit_problems: list[str], replay_ok: bool, replay_differences: list[str],
    errors: list[str], seconds: float,
) -> Summary:
    exchanges: list[Exchange] = [x for c in conversations for x in c.exchanges]
    ttft = [(x.first_visible_at - x.sent_at) * 1000 for x in exchanges if x.first_visible_at is not None]
    # Hot path: message.received appended (its entry id, Redis's clock) -> the request at the model.
    offset = time.time() - time.perf_counter()
    hot = []
    for x in exchanges:
        appended = observer.received_at_ms.get((x.chat_id, x.message_id))
        # The first request that mentions the marker is the one answering this message.
        request = next((r for r in claude.requests if any(x.marker in t for t in r.texts())), None)
        if appended is not None and request is not None:
            hot.append((request.received_at + offset) * 1000 - appended)
    outcomes: dict[str, int] = {}
    for x in exchanges:
        outcomes[x.outcome or "missing"] = outcomes.get(x.outcome or "missing", 0) + 1
    duplicates = [f"{x.chat_id}/{x.message_id}" for x in exchanges if len(observer.terminal_outcomes(x.chat_id, x.message_id)) > 1]
    redelivered = [c.redelivered for c in conversations if c.redelivered]
    redelivered_once = all(observer.received_count[r] == 1 for r in redelivered)  # type: ignore[index]
    answers = sum(1 for x in exchanges if x.outcome in ("completed", "cancelled"))
    return Summary(
        users=options.users, messages=len(exchanges), answers=answers, events=observer.total,
        events_by_type=dict(sorted(observer.by_type.items())), outcomes=outcomes, postgres_rows=rows,
        ttft_p50_ms=percentile(ttft, 50), ttft_p99_ms=percentile(ttft, 99),
        hot_path_p50_ms=percentile(hot, 50), hot_path_p99_ms=percentile(hot, 99),
        audit_ok=audit_ok, audit_problems=audit_problems, replay_ok=replay_ok, replay_differences=replay_differences,
        duplicated_answers=duplicates, redelivered_update_recorded_once=redelivered_once,
        errors=errors, seconds=round(seconds, 1),
        expected_messages=options.users * options.messages,
    )


__all__ = ["DemoOptions", "run_demo", "Summary"]
