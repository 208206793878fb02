"""Simulated users chatting until told to stop: the demo's ``Conversation``, run as a steady stream.

Half the users top up with Stars (/pay, pre-checkout, payment), the other half
are credited by an admin's /topup; then each sends messages one after the
other (text, now and then a file or a /stop mid-answer) until the test stops
the traffic, waiting for each answer the way a user would.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

from eventbot.demo.scenario import TOPICS, Conversation, Exchange, Kind
from eventbot.fakes.telegram import FakeTelegram, TgUser
from tests.e2e.system import ADMIN_ID, System

ADMIN = TgUser(ADMIN_ID, first_name="Admin")
TOPUP_USD = "5"


@dataclass
class ChatUser(Conversation):
    """A user who keeps chatting while ``until`` is unset; ``messages`` is unused (no fixed count)."""

    until: asyncio.Event = field(default_factory=asyncio.Event)
    rng: random.Random = field(default_factory=random.Random)
    admin_topup: bool = False
    stop_ratio: float = 0.06  # share of messages the user stops mid-answer
    pay_retries: int = 0
    answered_at: dict[int, float] = field(default_factory=dict)  # message id -> perf_counter when the user saw the end

    async def run(self) -> None:
        self.fake.send_text(self.user, "/start")
        await (self._admin_credit() if self.admin_topup else self._stars())
        i = 0
        while not self.until.is_set():
            kind: Kind = "text"
            roll = self.rng.random()
            if roll < 0.08:
                kind = "file"
            elif roll < 0.08 + self.stop_ratio:
                kind = "stop"
            marker = f"[u{self.user.id}#{i}]"
            await self._say(kind, marker, f"{marker} {TOPICS[(self.user.id + i) % len(TOPICS)]}")
            i += 1

    async def _outcome(self, exchange: Exchange) -> str:
        outcome = await super()._outcome(exchange)
        self.answered_at[exchange.message_id] = time.perf_counter()
        return outcome

    async def _stars(self) -> None:
        # An invoice is a command reply, so it can be lost to a kill: a user asks again.
        while True:
            before = len(self.fake.invoices(self.chat_id))
            self.fake.send_text(self.user, "/pay 100")
            try:
                await self.fake.wait_for(lambda: len(self.fake.invoices(self.chat_id)) > before, 20)
                break
            except asyncio.TimeoutError:
                self.pay_retries += 1
        await self._pay_and_wait()

    async def _pay_and_wait(self) -> None:
        charge = await self.fake.pay(self.user, self.fake.invoices(self.chat_id)[-1], timeout=self.timeout_s)
        if charge is None:
            raise RuntimeError(f"user {self.user.id}: the bot refused a Stars payment it issued")
        await self._credited()

    async def _admin_credit(self) -> None:
        # The credit is recorded once even if ingest dies around it: Telegram redelivers the update.
        self.fake.send_text(ADMIN, f"/topup {self.user.id} {TOPUP_USD}")
        await self._credited()

    async def _credited(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                if (await self.ledger.head(self.user.id)).balance > 0:
                    return
            except Exception:  # noqa: BLE001 - Redis restarting under an infrastructure test
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"user {self.user.id}: never credited")
            await asyncio.sleep(0.1)


@dataclass
class Traffic:
    system: System
    users: int
    seed: int
    first_user_id: int = 600_001
    timeout_s: float = 180.0
    stop_ratio: float = 0.06
    conversations: list[ChatUser] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    until: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> None:
        s = self.system
        for i in range(self.users):
            user = ChatUser(
                s.telegram, s.observer, s.ledger, s.changed, TgUser(self.first_user_id + i, first_name=f"User{i}"),
                messages=0, timeout_s=self.timeout_s, until=self.until, rng=random.Random(self.seed * 1000 + i),
                admin_topup=bool(i % 2), stop_ratio=self.stop_ratio,
            )
            self.conversations.append(user)
            self._tasks.append(asyncio.create_task(user.run(), name=f"user-{user.user.id}"))

    async def stop(self) -> list[BaseException]:
        """Let every user finish the exchange in hand; the errors users met (a timeout is a missing answer)."""
        self.until.set()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        return [r for r in results if isinstance(r, BaseException)]

    def cancel(self) -> None:
        for t in self._tasks:
            t.cancel()

    @property
    def exchanges(self) -> list[Exchange]:
        return [x for c in self.conversations for x in c.exchanges]

    def answered(self) -> int:
        return sum(1 for x in self.exchanges if x.outcome)

    def answered_between(self, t0: float, t1: float) -> int:
        """Answers whose outcome the user saw between two ``time.perf_counter()`` instants."""
        return sum(1 for c in self.conversations for t in c.answered_at.values() if t0 <= t <= t1)


def chat_ids(traffic: Traffic) -> list[int]:
    return [c.chat_id for c in traffic.conversations]


__all__ = ["ChatUser", "Traffic", "FakeTelegram", "chat_ids"]
