"""Bad input from Telegram: random Bot API update shapes through the real ingest dispatcher and webhook.

No update may crash ingest or vanish: each one becomes its events (readable by
every consumer), is refused with a reply or a 400, or is kept aside in
``<ns>:ingest:rejected``. The only updates allowed to leave no trace are those
ingest has decided to ignore and says so (other bots, channel posts, service
messages, kinds it never subscribed to). The seed is printed, and
``FUZZ_SEED=<n>`` replays a run; so is the number of cases tried.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiogram.types import Update
from aiohttp import web
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from eventbot.connections import redis_client
from eventbot.fakes.telegram import FakeTelegram, TgChat
from eventbot.keys import FAMILIES, Keys
from eventbot.localservices import free_port
from eventbot.readmodels import reader_for
from eventbot.redisclient import RedisClient
from events import EventCodec, EventDecodeError, default_codec
from services.ingest.feeding import feed_one
from services.ingest.main import Ingest
from services.ingest.pricing import InvoiceSigner
from tests.ingest_env import ingest_settings

SEED = int(os.environ.get("FUZZ_SEED") or random.SystemRandom().randrange(2**32))
DISPATCHER_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1200"))
WEBHOOK_EXAMPLES = DISPATCHER_EXAMPLES // 2
SECRET = "fuzz-webhook-secret"
BOT_USERNAME = "eventbot_test_bot"

# ----- strategies: updates as Telegram might send them, and as it never would ---------------------

ints = st.one_of(st.integers(-(2**31), 2**31), st.sampled_from([0, -1, 1, 2**53, -(2**53), 2**63 - 1, -(2**63)]))
short_text = st.text(max_size=12)
# JSON has no NaN or Infinity: Python's json.dumps writes them anyway, Telegram never does, and
# the webhook's strict parser answers such a body 400 (while pydantic's lenient one reads an update).
json_scalar = st.none() | st.booleans() | ints | st.floats(allow_nan=False, allow_infinity=False) | short_text
json_value = st.recursive(
    json_scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(short_text, inner, max_size=3), max_leaves=6
)
COMMANDS = ["start", "help", "new", "model", "prompt", "balance", "stop", "topup", "pay", "refund", "nope", "START"]


@st.composite
def texts(draw: st.DrawFn) -> str:
    """Empty, huge, unicode-heavy, commands with garbage arguments, mentions of the bot or others."""
    kind = draw(st.sampled_from(["plain", "empty", "huge", "command", "mention", "astral"]))
    if kind == "empty":
        return draw(st.sampled_from(["", " ", "\n", "\u200b"]))
    if kind == "huge":
        return draw(st.sampled_from(["x", "я", "😀", "\u0000", "a b "])) * draw(st.integers(4_000, 70_000))
    if kind == "command":
        name = draw(st.sampled_from(COMMANDS))
        to = draw(st.sampled_from(["", f"@{BOT_USERNAME}", "@other_bot", "@"]))
        args = draw(st.sampled_from(["", " 100", " -5", " 1 2", " abc", " 0", " 99999999999999999999", " clear",
                                     " " + "p" * 5000, " stxforged", " 1 -3.5", " 1 1e309"]))
        return f"/{name}{to}{args}"
    if kind == "mention":
        return draw(st.sampled_from([f"@{BOT_USERNAME} ", "@someone ", f"hey @{BOT_USERNAME.upper()}"])) + draw(short_text)
    if kind == "astral":
        return draw(st.text(st.characters(min_codepoint=0x1F000, max_codepoint=0x1FAFF), min_size=1, max_size=20))
    return draw(st.text(max_size=200))


def entities(length_hint: int) -> st.SearchStrategy[list[dict[str, Any]]]:
    """Entities that may point anywhere: past the end, negative, zero-length, of unknown types."""
    entity = st.fixed_dictionaries(
        {"type": st.sampled_from(["mention", "bot_command", "text_mention", "url", "bold", "hashtag", "weird"]),
         "offset": st.integers(-5, length_hint + 50), "length": st.integers(-5, length_hint + 50)},
        optional={"user": users(), "url": short_text, "language": short_text},
    )
    return st.lists(entity, max_size=4)


def users() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"id": ints, "is_bot": st.integers(0, 5).map(lambda n: n == 0), "first_name": st.text(max_size=70)},
        optional={"last_name": short_text, "username": st.sampled_from(["ada", BOT_USERNAME, "", "x" * 300]),
                  "language_code": st.sampled_from(["en", "", "zz-ZZ", "x" * 40]), "is_premium": st.booleans()},
    )


def chats() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"id": ints, "type": st.sampled_from(["private", "group", "supergroup", "channel", "sender", "", "secret"])},
        optional={"title": short_text, "is_forum": st.booleans(), "username": short_text, "first_name": short_text},
    )


def file_meta(with_name: bool = True) -> st.SearchStrategy[dict[str, Any]]:
    optional: dict[str, st.SearchStrategy[Any]] = {
        "file_size": st.one_of(ints, st.just(2**40)),
        "mime_type": st.sampled_from(["text/plain", "", "application/x-\u0000", "image/jpeg", "x" * 300]),
        "width": ints, "height": ints, "duration": ints,
    }
    if with_name:
        optional["file_name"] = st.sampled_from(["notes.txt", "", "../../etc/passwd", "a" * 1000, "\u202ecod.exe"])
    return st.fixed_dictionaries({"file_id": st.text(max_size=80), "file_unique_id": st.text(max_size=20)},
                                 optional=optional)


def media() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.builds(lambda sizes: {"photo": sizes}, st.lists(file_meta(False), max_size=3)),  # [] too: no sizes at all
        *(st.builds(lambda meta, k=kind: {k: meta}, file_meta())
          for kind in ("document", "voice", "audio", "video", "video_note", "animation", "sticker")),
    )


@st.composite
def messages(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    msg: dict[str, Any] = {"message_id": draw(ints), "date": draw(st.integers(-(2**31), 2**33)), "chat": draw(chats())}
    if draw(st.integers(0, 9)):
        msg["from"] = draw(users())
    body = draw(st.sampled_from(["text", "text", "text", "media", "payment", "service", "nothing"]))
    if body == "text":
        msg["text"] = draw(texts())
        if draw(st.booleans()):
            msg["entities"] = draw(entities(len(msg["text"])))
    elif body == "media":
        msg |= draw(media())
        if draw(st.booleans()):
            msg["caption"] = draw(texts())
            msg["caption_entities"] = draw(entities(len(msg["caption"])))
    elif body == "payment":
        msg["successful_payment"] = draw(st.fixed_dictionaries({
            "currency": st.sampled_from(["XTR", "USD", ""]), "total_amount": ints,
            "invoice_payload": st.one_of(short_text, st.just("forged:payload"), st.just("signed")),
            "telegram_payment_charge_id": st.text(max_size=40), "provider_payment_charge_id": short_text,
        }))
    elif body == "service":
        msg[draw(st.sampled_from(["new_chat_members", "pinned_message", "forum_topic_created", "left_chat_member"]))] = \
            draw(json_value)
    if draw(st.booleans()):
        msg["message_thread_id"] = draw(ints)
        msg["is_topic_message"] = draw(st.booleans())
    if depth == 0 and draw(st.integers(0, 4)) == 0:
        msg["reply_to_message"] = draw(messages(depth=1))
    if draw(st.integers(0, 5)) == 0:
        msg["edit_date"] = draw(ints)
    return msg


UNSUBSCRIBED = ["channel_post", "edited_channel_post", "inline_query", "chosen_inline_result", "shipping_query",
                "poll", "poll_answer", "my_chat_member", "chat_member", "chat_join_request", "message_reaction",
                "business_message", "purchased_paid_media", "brand_new_kind_2030"]


@st.composite
def updates(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["message"] * 5 + ["edited_message"] * 2 + ["callback_query"] * 2
                                + ["pre_checkout_query"] * 2 + ["other", "empty"]))
    if kind in ("message", "edited_message"):
        msg = draw(messages())
        if kind == "edited_message":
            msg.setdefault("edit_date", draw(ints))  # often of a message ingest never saw
        body: dict[str, Any] = {kind: msg}
    elif kind == "callback_query":
        query: dict[str, Any] = {"id": draw(st.text(max_size=20)), "from": draw(users()),
                                 "chat_instance": draw(short_text)}
        query["data"] = draw(st.one_of(
            st.text(max_size=80), st.sampled_from(["model:", "model:claude-haiku-4-5", "model:gpt", "pay:", "pay:100",
                                                   "pay:-1", "pay:1e9", "pay:50", "\u0000"])))
        if draw(st.booleans()):
            # An inaccessible message has date 0; a real one a date.
            query["message"] = draw(messages(depth=1)) if draw(st.booleans()) else \
                {"chat": draw(chats()), "message_id": draw(ints), "date": 0}
        body = {"callback_query": query}
    elif kind == "pre_checkout_query":
        body = {"pre_checkout_query": draw(st.fixed_dictionaries({
            "id": st.text(max_size=20), "from": users(), "currency": st.sampled_from(["XTR", "USD", "", "xtr"]),
            "total_amount": ints, "invoice_payload": st.one_of(short_text, st.just("signed"), st.just("x" * 500)),
        }))}
    elif kind == "other":
        body = {draw(st.sampled_from(UNSUBSCRIBED)): draw(json_value)}
    else:
        body = {}
    update = {"update_id": 0, **body}
    # Mutations: fields dropped, replaced by nonsense, or added, anywhere in the tree.
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
        _mutate(update, draw)
    return update


def _mutate(tree: dict[str, Any], draw: st.DrawFn) -> None:
    node: Any = tree
    while True:
        keys = [k for k in node if k != "update_id"] if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            return
        key = draw(st.sampled_from(keys))
        child = node[key]
        if isinstance(child, (dict, list)) and child and draw(st.booleans()):
            node = child
            continue
        action = draw(st.sampled_from(["drop", "replace", "add"]))
        if action == "drop" and isinstance(node, dict):
            del node[key]
        elif action == "replace":
            node[key] = draw(json_value)
        elif isinstance(node, dict):
            node[draw(st.text(min_size=1, max_size=12))] = draw(json_value)
        return


# ----- the world: real Redis, the fake Bot API, ingest wired as in production -------------------------


@dataclass
class Outcome:
    events: list[str]  # event types appended for this update
    rejected: str | None  # the error type it was kept aside with
    replies: list[str]  # Bot API methods ingest called for it
    status: int | None = None  # the webhook's answer


@dataclass(repr=False)
class World:
    runner: asyncio.Runner
    redis: RedisClient
    fake: FakeTelegram
    app: Ingest
    keys: Keys
    codec: EventCodec
    signer: InvoiceSigner
    tried: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    rejections: Counter[str] = field(default_factory=Counter)
    samples: dict[str, Any] = field(default_factory=dict)  # one update per error it was kept aside with
    _next_update_id: int = 1
    _cursors: dict[str, str] = field(default_factory=dict)
    _rejected_cursor: str = "0"
    http: aiohttp.ClientSession | None = None
    webhook_url: str = ""

    def prepare(self, raw: dict[str, Any], negative: bool) -> dict[str, Any]:
        """A unique update_id (so no two cases dedupe into one), signed payloads, chats and queries known to the fake."""
        self._next_update_id += 1
        raw["update_id"] = -self._next_update_id if negative else self._next_update_id
        text = json.dumps(raw)
        if '"signed"' in text:
            signed = self.signer.issue(package="p100", user_id=1001, stars=100, credit=1_000_000)
            raw = json.loads(text.replace('"signed"', json.dumps(signed)))
        for body in raw.values():
            if not isinstance(body, dict):
                continue
            inner = body.get("message")
            for chat in (body.get("chat"), inner.get("chat") if isinstance(inner, dict) else None):
                if isinstance(chat, dict) and isinstance(chat.get("id"), int):
                    t = chat.get("type") if chat.get("type") in ("private", "group", "supergroup", "channel") else "group"
                    self.fake._chats[chat["id"]] = TgChat(chat["id"], t)  # so replies reach a chat the fake knows
            paid = body.get("successful_payment")
            if isinstance(paid, dict) and isinstance(paid.get("telegram_payment_charge_id"), str):
                # A charge id is credited once whatever update carries it: unique here, so each case must record.
                paid["telegram_payment_charge_id"] += f"#{raw['update_id']}"
            if isinstance(body.get("id"), str):
                body["id"] = f"{body['id']}#{raw['update_id']}"  # Telegram's query ids are unique
                self.fake._callbacks[body["id"]] = body
                self.fake._pre_checkout[body["id"]] = None
        return raw

    async def new_entries(self) -> list[tuple[str | None, str]]:
        """(correlation_id, type) of every entry appended since the last call; each must decode."""
        out = []
        for family in FAMILIES:
            for stream in self.keys.streams(family):
                start = self._cursors.get(stream)
                for entry_id, fields in await self.redis.xrange(stream, min=f"({start}" if start else "-"):
                    self._cursors[stream] = entry_id.decode()
                    try:
                        event = self.codec.decode(fields[b"t"].decode(), int(fields[b"v"]), fields[b"d"])
                    except EventDecodeError as e:
                        raise AssertionError(f"ingest appended an event no consumer can read: {e}") from e
                    out.append((event.correlation_id, event.type_name()))
        return out

    async def new_rejections(self) -> dict[int, str]:
        stream = self.keys.rejected_updates()
        found = {}
        for entry_id, fields in await self.redis.xrange(stream, min=f"({self._rejected_cursor}"):
            self._rejected_cursor = entry_id.decode()
            found[int(fields[b"update_id"])] = fields[b"error"].decode()
        return found

    async def outcome_of(self, update_id: int, calls_before: int, status: int | None = None) -> Outcome:
        correlation = f"tg:{self.fake.bot_id}:{update_id}"
        entries = await self.new_entries()
        rejected = (await self.new_rejections()).get(update_id)
        replies = [c.method for c in self.fake.calls()[calls_before:] if c.method != "getMe"]
        return Outcome([t for c, t in entries if c == correlation], rejected, replies, status)

    async def feed(self, raw: dict[str, Any]) -> tuple[Update | None, Outcome]:
        calls = len(self.fake.calls())
        try:
            update = Update.model_validate(raw, context={"bot": self.app.bot})
        except ValidationError:
            return None, Outcome([], None, [])  # not an update: the webhook answers 400 (tested below)
        await feed_one(self.app.dp, self.app.bot, update)  # raises only if Redis is down: it is up
        return update, await self.outcome_of(update.update_id, calls)

    async def post(self, body: bytes, secret: str | None = SECRET) -> int:
        assert self.http is not None
        headers = {"Content-Type": "application/json"} | ({"X-Telegram-Bot-Api-Secret-Token": secret} if secret else {})
        async with self.http.post(self.webhook_url, data=body, headers=headers) as resp:
            await resp.read()
            return resp.status


def judge(world: World, raw: dict[str, Any], update: Update | None, outcome: Outcome) -> None:
    """Every update leaves a trace, unless it is one ingest chose to ignore."""
    world.tried[_kind(update)] += 1
    if outcome.rejected:
        world.rejections[outcome.rejected] += 1
        world.samples.setdefault(outcome.rejected, _shape(raw))
    if update is None:
        label = "refused (not an update)"
    elif outcome.rejected:
        label = "kept aside"
    elif outcome.events:
        label = "events"
    elif outcome.replies:
        label = "reply only"
    else:
        label = "ignored"
    world.outcomes[label] += 1
    if update is not None and update.pre_checkout_query is not None:
        # Unanswered within 10 s, the user's payment fails with no word from the bot: keeping it aside is not enough.
        assert "answerPreCheckoutQuery" in outcome.replies, f"a pre-checkout query went unanswered: {_shape(raw)}"
    if update is None or outcome.rejected:
        return
    message = update.message or update.edited_message
    if message is not None:
        user = message.from_user
        has_content = (message.text is not None or message.caption is not None or message.successful_payment
                       or message.photo or any(getattr(message, k) is not None for k in
                                               ("document", "voice", "audio", "video", "video_note", "animation",
                                                "sticker")))
        if user is not None and not user.is_bot and (has_content or update.edited_message is not None):
            assert outcome.events, f"a user's message left no event and was not kept aside: {_shape(raw)}"
    elif update.callback_query is not None:
        assert outcome.events or "answerCallbackQuery" in outcome.replies, \
            f"a button press was neither recorded nor answered (its spinner turns forever): {_shape(raw)}"


def _kind(update: Update | None) -> str:
    if update is None:
        return "invalid update"
    try:
        return update.event_type
    except Exception:  # noqa: BLE001 - aiogram's UpdateTypeLookupError: a kind it does not know
        return "unknown kind"


def _shape(raw: Any, depth: int = 0) -> Any:
    """The update's structure without long strings, for a readable failure."""
    if isinstance(raw, dict):
        return {k: _shape(v, depth + 1) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_shape(v, depth + 1) for v in raw[:3]]
    if isinstance(raw, str) and len(raw) > 40:
        return raw[:20] + f"...({len(raw)} chars)"
    return raw


@pytest.fixture
def world(redis_server_url: str, capsys: pytest.CaptureFixture[str]) -> Iterator[World]:
    """One ingest for all examples of a test (hypothesis reuses function fixtures), on a loop of its own."""
    import uuid

    namespace = f"fuzz{uuid.uuid4().hex[:10]}"
    with capsys.disabled():
        print(f"\n[fuzz] seed {SEED} (replay: FUZZ_SEED={SEED})")
    with asyncio.Runner() as runner:
        fake = FakeTelegram(username=BOT_USERNAME)
        runner.run(fake.start())
        redis = redis_client(redis_server_url)
        port = free_port()
        config = ingest_settings(namespace, fake, telegram_webhook_url=f"http://127.0.0.1:{port}/hook",
                                 telegram_webhook_secret=SECRET, webhook_port=port)
        codec = default_codec()
        app = Ingest.build(config, redis=redis, read_models=reader_for(redis, config, codec), codec=codec)
        w = World(runner, redis, fake, app, Keys(namespace, config.partitions), codec, InvoiceSigner.for_bot(fake.token),
                  webhook_url=config.telegram_webhook_url or "")
        site = web.AppRunner(app.webhook_app(), access_log=None, handle_signals=False)

        async def open_webhook() -> None:
            await site.setup()
            await web.TCPSite(site, "127.0.0.1", port).start()
            w.http = aiohttp.ClientSession()

        runner.run(open_webhook())
        try:
            yield w
        finally:
            with capsys.disabled():
                print(f"[fuzz] cases tried: {sum(w.tried.values())} {dict(w.tried)}")
                print(f"[fuzz] outcomes: {dict(w.outcomes)}; kept aside by error: {dict(w.rejections)}")
                for error, shape in w.samples.items():
                    print(f"[fuzz]   e.g. {error}: {json.dumps(shape)[:400]}")

            async def close() -> None:
                assert w.http is not None
                await w.http.close()
                await site.cleanup()
                await app.bot.session.close()
                await fake.stop()
                async for key in redis.scan_iter(match=f"{namespace}:*", count=1000):
                    await redis.unlink(key)
                await redis.aclose()

            runner.run(close())


FUZZ = settings(max_examples=DISPATCHER_EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.large_base_example])


@pytest.mark.filterwarnings("ignore:Detected unknown update type:RuntimeWarning")  # aiogram's, then skipped
@seed(SEED)
@FUZZ
@given(raw=updates(), negative=st.integers(0, 9).map(lambda n: n == 0))
def test_random_updates_through_the_dispatcher_are_recorded_refused_or_kept_aside(
    world: World, raw: dict[str, Any], negative: bool
) -> None:
    raw = world.prepare(raw, negative)
    update, outcome = world.runner.run(world.feed(raw))
    judge(world, raw, update, outcome)


BODIES = st.one_of(
    st.binary(max_size=200),  # not even text
    st.text(max_size=100).map(str.encode),  # text, rarely JSON
    json_value.map(lambda v: json.dumps(v).encode()),  # JSON, rarely an object
    st.just(b'{"update_id": '), st.just(b"\xff\xfe{}"), st.just(b'{"update_id": 1e999}'),
)


@pytest.mark.filterwarnings("ignore:Detected unknown update type:RuntimeWarning")
@seed(SEED)
@settings(FUZZ, max_examples=WEBHOOK_EXAMPLES)
@given(raw=updates(), garbage=st.one_of(st.none(), BODIES), secret=st.sampled_from([SECRET] * 8 + [None, "wrong"]))
def test_random_webhook_bodies_get_200_400_or_401_never_an_error(
    world: World, raw: dict[str, Any], garbage: bytes | None, secret: str | None
) -> None:
    raw = world.prepare(raw, negative=False)
    body = garbage if garbage is not None else json.dumps(raw).encode()

    async def one() -> tuple[Update | None, Outcome]:
        calls = len(world.fake.calls())
        status = await world.post(body, secret)
        try:
            update = Update.model_validate_json(body, context={"bot": world.app.bot}) if garbage is None else None
        except ValidationError:
            update = None
        uid = update.update_id if update is not None else raw["update_id"]
        return update, await world.outcome_of(uid, calls, status)

    update, outcome = world.runner.run(one())
    if secret != SECRET:
        assert outcome.status == 401 and not outcome.events and outcome.rejected is None
        world.tried["unauthorized"] += 1
        return
    if update is None:
        assert outcome.status == 400, f"not an update, answered {outcome.status}: {body[:80]!r}"
        assert not outcome.events
        world.tried["not an update" if garbage is not None else "invalid update"] += 1
        world.outcomes["refused (400)"] += 1
        return
    assert outcome.status == 200, f"an update answered {outcome.status}: {_shape(raw)}"
    judge(world, raw, update, outcome)
