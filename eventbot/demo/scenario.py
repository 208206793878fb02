"""One simulated user: start, top up with Stars, chat, send a file, stop an answer.

The user plays Telegram's side through the fake Bot API, and watches the
conversation the way a user would: a message is answered when its response ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from eventbot.demo.observer import Observer
from eventbot.fakes.telegram import FakeTelegram, TgUser
from eventbot.ledger import Ledger
from eventbot.redisclient import STORE_DOWN
from eventbot.tasks import wait_until
from services.ingest.rejected import RejectedUpdates

Kind = Literal["text", "file", "stop"]
STOP_MARKER = "[long]"
TOPICS = (
    "how event sourcing keeps a ledger honest",
    "why consumer groups need acknowledgements",
    "a haiku about Redis streams",
    "the difference between at-least-once and exactly-once",
    "how to replay a projection without downtime",
    "what a hash chain proves to an auditor",
)


@dataclass
class Exchange:
    """One message the user sent and what became of it."""

    user_id: int
    chat_id: int
    message_id: int
    kind: Kind
    marker: str  # "[u<user>#<n>]": starts the text, so requests to the model can be matched to it
    sent_at: float  # perf_counter
    update: dict = field(default_factory=dict, repr=False)
    outcome: str | None = None
    first_visible_at: float | None = None


@dataclass
class Conversation:
    fake: FakeTelegram
    observer: Observer
    ledger: Ledger
    changed: asyncio.Condition
    user: TgUser
    messages: int
    redeliver_one: bool = False
    stop_requested: dict[int, asyncio.Event] = field(default_factory=dict)
    exchanges: list[Exchange] = field(default_factory=list)
    redelivered: tuple[int, int] | None = None
    timeout_s: float = 60.0

    @property
    def chat_id(self) -> int:
        return self.user.id  # private chat

    async def run(self) -> None:
        await self._command("/start")
        await self._top_up(stars=100)
        for i in range(self.messages):
            kind: Kind = "file" if i == 1 else "stop" if i == 2 else "text"
            marker = f"[u{self.user.id}#{i}]"
            exchange = await self._say(kind, marker, f"{marker} {TOPICS[(self.user.id + i) % len(TOPICS)]}")
            if self.redeliver_one and i == 0:
                # Telegram, unsure the update arrived, sends it again after it was answered.
                self.fake.redeliver(exchange.update)
                self.redelivered = (exchange.chat_id, exchange.message_id)

    @contextlib.asynccontextmanager
    async def _waiting(self, what: str, update: dict) -> AsyncIterator[None]:
        """A wait that runs out says for what, and where the update that should have done it is."""
        try:
            yield
        except TimeoutError:
            raise TimeoutError(await self._why(what, update["update_id"])) from None

    async def _why(self, what: str, update_id: int) -> str:
        why = f"user {self.user.id}: {what} within {self.timeout_s:g}s; {self.fake.whereabouts(update_id)}"
        with contextlib.suppress(*STORE_DOWN):  # the store being down is then the likelier story
            kept = dict(await RejectedUpdates(self.ledger.redis, self.ledger.keys).latest(count=100))
            if update_id in kept:
                why += f"; ingest kept it aside on {kept[update_id]}"
        return why

    async def _command(self, text: str) -> None:
        before = len(self.fake.messages(self.chat_id))
        update = self.fake.send_text(self.user, text)
        async with self._waiting(f"no reply to {text}", update):
            await self.fake.wait_for(lambda: len(self.fake.messages(self.chat_id)) > before, self.timeout_s)

    async def _top_up(self, stars: int) -> None:
        asked = self.fake.send_text(self.user, f"/pay {stars}")
        async with self._waiting("no invoice", asked):
            await self.fake.wait_for(lambda: bool(self.fake.invoices(self.chat_id)), self.timeout_s)
        charge_id = await self.fake.pay(self.user, self.fake.invoices(self.chat_id)[-1], timeout=self.timeout_s)
        charge = self.fake.charge(charge_id) if charge_id is not None else None
        if charge is None:
            raise RuntimeError(f"user {self.user.id}: the bot refused a Stars payment it issued")
        deadline = time.monotonic() + self.timeout_s
        while (await self.ledger.head(self.user.id)).balance <= 0:
            if time.monotonic() > deadline:
                raise TimeoutError(await self._why("Stars payment never credited", charge.update_id))
            await asyncio.sleep(0.05)

    async def _say(self, kind: Kind, marker: str, text: str) -> Exchange:
        sent_at = time.perf_counter()
        if kind == "file":
            update = self.fake.send_file(
                self.user, "document", b"eventbot demo notes\n" * 40, name="notes.txt", mime_type="text/plain",
                caption=f"{text} (see the attached notes)",
            )
        else:
            update = self.fake.send_text(self.user, f"{text} {STOP_MARKER}" if kind == "stop" else text)
        message = update["message"]
        exchange = Exchange(self.user.id, self.chat_id, message["message_id"], kind, marker, sent_at, update)
        self.exchanges.append(exchange)
        if kind == "stop":
            async with self._waiting("no answer shown to stop", update):
                await self.fake.wait_for(lambda: self._visible_since(sent_at) is not None, self.timeout_s)
            self.fake.send_text(self.user, "/stop")
            self.stop_requested.setdefault(self.user.id, asyncio.Event()).set()
        exchange.outcome = await self._outcome(exchange)
        exchange.first_visible_at = self._visible_since(sent_at)
        return exchange

    async def _outcome(self, exchange: Exchange) -> str:
        async with self._waiting(f"message {exchange.message_id} not answered", exchange.update):
            await wait_until(
                self.changed, lambda: self.observer.answered(exchange.chat_id, exchange.message_id) is not None,
                self.timeout_s,
            )
        return self.observer.answered(exchange.chat_id, exchange.message_id) or "missing"

    def _visible_since(self, t0: float) -> float | None:
        """When the bot first showed text in this chat after ``t0`` (draft, message or edit)."""
        for call in self.fake.calls():
            if call.at >= t0 and call.ok and call.method in ("sendMessageDraft", "sendMessage", "editMessageText") \
                    and str(call.params.get("chat_id")) == str(self.chat_id):
                return call.at
        return None
