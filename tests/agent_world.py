"""A little world for agent tests: both fakes, the read-model projector, agents, and users.

Users "write" by registering the message with the fake Bot API (so the chat
exists and message ids are Telegram's) and appending the ``message.received``
event ingest would have appended. The projector's ``readmodel`` group runs on
the same consumer runtime as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timezone
from typing import Any

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from eventbot.appender import Appender
from eventbot.consumer import Consumer, ConsumerConfig
from eventbot.fakes.anthropic import FakeAnthropic
from eventbot.fakes.telegram import FakeTelegram, SentMessage, TgChat, TgUser
from eventbot.ids import new_event_id
from eventbot.keys import Keys
from eventbot.ledger import Ledger
from eventbot.metrics import ConsumerMetrics
from eventbot.readmodels import ReadModelBuilder, StreamLog, limits_for
from eventbot.settings import Settings
from events import BalanceCredited, CommandIssued, EventCodec, MessageReceived, UserSeen, chat_key, user_key
from services.agent.config import AgentConfig
from services.agent.main import run_agent
from services.agent.model import RetryPolicy
from services.projector.handlers import READMODEL_GROUP, ReadModelHandler


def forbid_postgres(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Make any Postgres connection attempt in this process fail loudly: the agent must never try."""
    import psycopg

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the agent opened a Postgres connection")

    async def refuse_async(*args: Any, **kwargs: Any) -> Any:
        refuse()

    monkeypatch.setattr(psycopg, "connect", refuse)
    monkeypatch.setattr(psycopg.Connection, "connect", classmethod(refuse))
    monkeypatch.setattr(psycopg.AsyncConnection, "connect", classmethod(refuse_async))


class World:
    def __init__(self, redis: Redis, redis_url: str, keys: Keys, codec: EventCodec, appender: Appender, ledger: Ledger) -> None:
        self.redis = redis
        self.redis_url = redis_url
        self.keys = keys
        self.codec = codec
        self.appender = appender
        self.ledger = ledger
        self.telegram = FakeTelegram()
        self.claude = FakeAnthropic(answer_chars=120, delta_chars=10)
        self.registry = CollectorRegistry()
        self._tasks: list[tuple[asyncio.Task[None], asyncio.Event]] = []
        self._seen: set[int] = set()
        self._update_id = 0

    async def __aenter__(self) -> World:
        await self.telegram.start()
        await self.claude.start()
        # The limits the agent's reader folds with (as the projector service would build them).
        builder = ReadModelBuilder(self.redis, self.keys, limits_for(self.settings()), StreamLog(self.redis, self.keys, self.codec))
        projector = Consumer(
            self.redis, self.keys, self.codec, ReadModelHandler(builder),
            self.keys.streams("conv") + self.keys.streams("ledger"),
            ConsumerConfig(group=READMODEL_GROUP, block_ms=50, claim_idle_ms=1000),
            ConsumerMetrics(CollectorRegistry()),
        )
        stop = asyncio.Event()
        self._tasks.append((asyncio.create_task(_until(projector, stop)), stop))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for _, stop in self._tasks:
            stop.set()
        await asyncio.gather(*(t for t, _ in self._tasks), return_exceptions=True)
        await self.claude.stop()
        await self.telegram.stop()

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = dict(
            redis_url=self.redis_url, namespace=self.keys.namespace, partitions=self.keys.partitions,
            telegram_bot_token=self.telegram.token, telegram_api_url=self.telegram.base_url,
            anthropic_api_key="test-key", anthropic_base_url=self.claude.base_url,
            merge_window_ms=0, draft_interval_ms=50, block_ms=50, claim_idle_ms=1000,
            # The SDK warns on every call to a deprecated model (claude-sonnet-4-5 is, from 2026-11).
            models=("claude-haiku-4-5", "claude-opus-4-5"), default_model="claude-haiku-4-5",
        )
        values.update(overrides)
        return Settings(**values)

    async def start_agent(self, settings: Settings | None = None, **config: Any) -> asyncio.Event:
        """Run an agent in this process; returns the event that stops it."""
        settings = settings or self.settings()
        config.setdefault("retry", RetryPolicy(attempts=4, base_s=0.05, cap_s=0.2))
        stop, started = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_agent(
            settings, registry=self.registry, stop=stop, started=started,
            config=AgentConfig.from_settings(settings, **config),
        ))
        self._tasks.append((task, stop))
        waiting = asyncio.create_task(started.wait())
        await asyncio.wait({task, waiting}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        waiting.cancel()
        return stop

    async def credit(self, user: TgUser, amount: int) -> None:
        def decide(head):  # type: ignore[no-untyped-def]
            return [BalanceCredited(
                event_id=new_event_id(), occurred_at=_now(), partition_key=user_key(user.id), user_id=user.id,
                amount=amount, source="admin", reference="test",
            )]

        await self.ledger.transact(user.id, decide)

    async def says(self, user: TgUser, text: str, *, chat: TgChat | None = None, topic_id: int | None = None) -> MessageReceived:
        chat = chat or TgChat.private(user)
        update = self.telegram.send_text(user, text, chat=chat, topic_id=topic_id, deliver=False)
        message = update["message"]
        self._update_id += 1
        common = dict(occurred_at=_now(), partition_key=chat_key(chat.id, topic_id), chat_id=chat.id, topic_id=topic_id,
                      correlation_id=f"update:{update['update_id']}")
        events: list[Any] = []
        if user.id not in self._seen:
            self._seen.add(user.id)
            events.append(UserSeen(event_id=new_event_id(), user_id=user.id, first_name=user.first_name, **common))
        if text.startswith("/"):
            events.append(CommandIssued(
                event_id=new_event_id(), update_id=update["update_id"], message_id=message["message_id"],
                user_id=user.id, command=text[1:].split()[0], **common,
            ))
        else:
            events.append(MessageReceived(
                event_id=new_event_id(), update_id=update["update_id"], message_id=message["message_id"], user_id=user.id,
                chat_type=chat.type, text=text, **common,
            ))
        await self.appender.append_many(events)
        return events[-1]

    async def settled(self, user: TgUser, timeout: float = 15.0) -> None:
        """Until every hold of ``user`` is charged or released: settling follows an answer's terminal
        event, so right after that event the ledger may not have the charge yet."""
        deadline = asyncio.get_running_loop().time() + timeout
        while (await self.ledger.head(user.id)).held:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"user {user.id} still has money held after {timeout}s")
            await asyncio.sleep(0.02)

    def replies(self, chat_id: int) -> list[SentMessage]:
        return self.telegram.messages(chat_id)

    async def wait_replies(self, chat_id: int, n: int, timeout: float = 10.0) -> list[SentMessage]:
        await self.telegram.wait_for(lambda: len(self.replies(chat_id)) >= n, timeout)
        return self.replies(chat_id)

    async def ledger_events(self, user_id: int) -> list[Any]:
        stream = self.keys.stream("ledger", self.keys.partition_of(user_key(user_id)))
        rows = await self.redis.xrange(stream)
        events = [self.codec.decode(f[b"t"].decode(), int(f[b"v"]), f[b"d"]) for _, f in rows]
        return [e for e in events if getattr(e, "user_id", None) == user_id]

    async def conv_events(self, chat_id: int, topic_id: int | None = None) -> list[Any]:
        key = chat_key(chat_id, topic_id)
        rows = await self.redis.xrange(self.keys.stream("conv", self.keys.partition_of(key)))
        events = [self.codec.decode(f[b"t"].decode(), int(f[b"v"]), f[b"d"]) for _, f in rows]
        return [e for e in events if e.partition_key == key]

    async def wait_events(self, chat_id: int, type_name: str, n: int = 1, timeout: float = 10.0) -> list[Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            found = [e for e in await self.conv_events(chat_id) if e.type_name() == type_name]
            if len(found) >= n:
                return found
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{len(found)} {type_name} events in chat {chat_id}, wanted {n}")
            await asyncio.sleep(0.02)


async def _until(consumer: Consumer, stop: asyncio.Event) -> None:
    running = asyncio.create_task(consumer.run())
    await stop.wait()
    consumer.stop()
    with contextlib.suppress(asyncio.CancelledError):
        await running


def _now() -> datetime:
    return datetime.now(timezone.utc)
