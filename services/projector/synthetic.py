"""Synthetic but realistic traffic: what users, the agent and payments append, for tests and benchmarks.

Sessions of a few users across private chats, groups and forum topics: users
seen, settings changed, threads, messages with files, responses that complete,
fail or get cancelled, and a hash-chained ledger (credits, holds, charges,
refunds) per user built with the real chaining code.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from uuid import UUID

from eventbot.ledger import LedgerHead, chain
from events import (
    Attachment,
    BalanceCharged,
    BalanceCredited,
    BalanceReleased,
    BalanceReserved,
    Event,
    FileUploaded,
    LedgerEvent,
    MessageEdited,
    MessageReceived,
    ModelChanged,
    PaymentReceived,
    PromptChanged,
    ResponseCancelled,
    ResponseCompleted,
    ResponseFailed,
    ResponseStarted,
    ThreadCreated,
    ThreadRenamed,
    Usage,
    UserSeen,
    chat_key,
    user_key,
)

_WORDS = "the quick brown fox jumps over lazy dogs while claude writes a careful answer about streams".split()


def _uuid(rng: random.Random) -> UUID:
    """A random UUID with the version 7 and RFC 4122 variant bits set (reproducible by seed)."""
    value = rng.getrandbits(128)
    value = (value & ~(0xF << 76)) | (0x7 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    return UUID(int=value)


class Traffic:
    """A deterministic generator (by seed) of valid event sequences."""

    def __init__(self, seed: int = 0, users: int = 50, start: datetime | None = None) -> None:
        self.rng = random.Random(seed)
        self.users = [1_000 + i for i in range(users)]
        self.now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self.heads: dict[int, LedgerHead] = {}
        self.message_ids = 0
        self.threads: dict[str, UUID] = {}

    def _tick(self) -> datetime:
        self.now += timedelta(milliseconds=self.rng.randint(1, 500))
        return self.now

    def _env(self, key: str) -> dict:
        return {"event_id": _uuid(self.rng), "occurred_at": self._tick(), "partition_key": key}

    def _text(self, lo: int = 3, hi: int = 40) -> str:
        return " ".join(self.rng.choice(_WORDS) for _ in range(self.rng.randint(lo, hi)))

    def ledger(self, user: int, events: list[LedgerEvent]) -> list[LedgerEvent]:
        chained, head = chain(events, self.heads.get(user, LedgerHead()))
        self.heads[user] = head
        return list(chained)

    def events(self, n: int) -> list[Event]:
        """At least ``n`` events, in whole turns (so ``heads`` matches what was returned)."""
        out: list[Event] = []
        while len(out) < n:
            out += self.turn()
        return out

    def turn(self) -> list[Event]:
        """One user interaction: settings, a message and its answer, and the money around it."""
        r = self.rng
        user = r.choice(self.users)
        chat_id, topic = (user, None) if r.random() < 0.7 else (-100 - r.randint(0, 9), r.choice([None, 3, 7]))
        key = chat_key(chat_id, topic)
        c = {"chat_id": chat_id, "topic_id": topic}
        out: list[Event] = []
        if user not in self.heads:
            out.append(UserSeen(**self._env(key), **c, user_id=user, username=f"u{user}", first_name=f"User {user}",
                                language_code=r.choice(["en", "de", None])))
            stars = r.choice([50, 100, 250])
            charge = f"ch-{_uuid(r).hex}"
            out.append(PaymentReceived(**self._env(user_key(user)), user_id=user, telegram_payment_charge_id=charge,
                                       stars=stars, payload=f"stars:{stars}", credited=stars * 13_000))
            out += self.ledger(user, [BalanceCredited(**self._env(user_key(user)), user_id=user, amount=stars * 13_000,
                                                      source="stars_payment", reference=charge)])
        if r.random() < 0.05:
            out.append(ModelChanged(**self._env(key), **c, user_id=user, model=r.choice(["claude-sonnet-5-5", "claude-haiku-4-5"])))
        if r.random() < 0.03:
            out.append(PromptChanged(**self._env(key), **c, user_id=user, prompt=r.choice([None, self._text(3, 10)])))
        if key not in self.threads or r.random() < 0.05:
            self.threads[key] = _uuid(r)
            out.append(ThreadCreated(**self._env(key), **c, thread_id=self.threads[key], user_id=user, title=self._text(1, 4)))
        elif r.random() < 0.02:
            out.append(ThreadRenamed(**self._env(key), **c, thread_id=self.threads[key], title=self._text(1, 4)))
        self.message_ids += 1
        mid = self.message_ids
        files = ()
        if r.random() < 0.1:
            files = (Attachment(kind="document", file_id=f"f{mid}", file_unique_id=f"u{mid}", mime_type="text/plain",
                                size=r.randint(10, 10_000), name=f"notes{mid}.txt"),)
        out.append(MessageReceived(**self._env(key), **c, update_id=mid, message_id=mid, user_id=user,
                                   chat_type="private" if topic is None and chat_id > 0 else "supergroup",
                                   text=self._text(), attachments=files))
        for f in files:
            out.append(FileUploaded(**self._env(key), **c, message_id=mid, user_id=user, file=f))
        if r.random() < 0.03:
            out.append(MessageEdited(**self._env(key), **c, update_id=mid, message_id=mid, user_id=user, text=self._text()))
        out += self._respond(user, key, c, mid)
        return out

    def _respond(self, user: int, key: str, c: dict, mid: int) -> list[Event]:
        r = self.rng
        rid, hold = _uuid(r), _uuid(r)
        held = 200_000
        ukey = user_key(user)
        out: list[Event] = [ResponseStarted(**self._env(key), **c, response_id=rid, user_id=user,
                                            thread_id=self.threads.get(key), message_ids=(mid,),
                                            model="claude-sonnet-5-5", max_tokens=1024)]
        out += self.ledger(user, [BalanceReserved(**self._env(ukey), user_id=user, amount=held, hold_id=hold)])
        usage = Usage(input_tokens=r.randint(10, 3000), output_tokens=r.randint(1, 800))
        cost = min(held, usage.input_tokens * 3 + usage.output_tokens * 15)
        fate = r.random()
        if fate < 0.9:
            out.append(ResponseCompleted(**self._env(key), **c, response_id=rid, user_id=user, text=self._text(10, 120),
                                         stop_reason="end_turn", usage=usage, ttft_ms=r.randint(200, 900),
                                         duration_ms=r.randint(1000, 9000), cost=cost, telegram_message_ids=(mid + 10**6,)))
        elif fate < 0.95:
            out.append(ResponseCancelled(**self._env(key), **c, response_id=rid, user_id=user, reason="stop",
                                         partial_text=self._text(1, 20), usage=usage, cost=cost))
        else:
            out.append(ResponseFailed(**self._env(key), **c, response_id=rid, user_id=user, cause="overloaded",
                                      retryable=False, usage=usage, cost=cost))
        out += self.ledger(user, [
            BalanceCharged(**self._env(ukey), user_id=user, amount=cost, charge_id=rid, hold_id=hold, hold_settled=cost,
                           model="claude-sonnet-5-5", input_tokens=usage.input_tokens,
                           output_tokens=usage.output_tokens, price_version="2026-01"),
            BalanceReleased(**self._env(ukey), user_id=user, amount=held - cost, hold_id=hold),
        ])
        return out


def batches(events: list[Event], rng: random.Random, lo: int = 1, hi: int = 64) -> Iterator[list[Event]]:
    i = 0
    while i < len(events):
        n = rng.randint(lo, hi)
        yield events[i:i + n]
        i += n
