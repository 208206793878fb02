"""Commands: each appends its event(s) first, then replies from read models (never Postgres)."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message

from eventbot.ledger import Ledger
from eventbot.settings import Settings
from eventbot.views import ReadModels
from events import BalanceCredited, ModelChanged, PromptChanged, ThreadCreated, user_key
from services.ingest.coalesce import Appends
from services.ingest import mapping, texts
from services.ingest.handlers.common import data_prefix, is_command, log, record_command, say
from services.ingest.mapping import Origin

MAX_PROMPT_CHARS = 4000
RECENT_OPS = 5


def router() -> Router:
    r = Router(name="commands")
    # Checked once per message, so plain text skips the command filters (a measurable cost on the hot path).
    r.message.filter(is_command)
    r.message.register(start, Command("start"))
    r.message.register(help_, Command("help"))
    r.message.register(new_thread, Command("new"))
    r.message.register(model, Command("model"))
    r.message.register(prompt, Command("prompt"))
    r.message.register(balance, Command("balance"))
    r.message.register(stop, Command("stop"))
    r.message.register(topup, Command("topup"))
    r.callback_query.register(model_chosen, data_prefix("model:"))
    return r


async def start(message: Message, command: CommandObject, origin: Origin, appender: Appends) -> None:
    if await record_command(message, origin, appender, command):
        await say(message, texts.WELCOME)


async def help_(message: Message, command: CommandObject, origin: Origin, appender: Appends) -> None:
    if await record_command(message, origin, appender, command):
        await say(message, texts.HELP)


async def new_thread(message: Message, command: CommandObject, origin: Origin, appender: Appends) -> None:
    assert message.from_user is not None
    title = (command.args or "").strip()[:128]
    created = ThreadCreated(
        event_id=origin.event_id("thread.created"), occurred_at=origin.at, partition_key=mapping.conv_key(message),
        correlation_id=origin.correlation_id, chat_id=message.chat.id, topic_id=mapping.topic_of(message),
        thread_id=origin.event_id("thread"), user_id=message.from_user.id, title=title,
    )
    if await record_command(message, origin, appender, command, [created]):
        await say(message, "New conversation started." + (f" Title: {title}" if title else ""))


async def model(
    message: Message, command: CommandObject, origin: Origin, appender: Appends, read_models: ReadModels,
    settings: Settings,
) -> None:
    assert message.from_user is not None
    if not await record_command(message, origin, appender, command):
        return
    view = await read_models.user(message.from_user.id)
    # A model no longer offered (retired since the user chose it) is not what answers: the default is.
    current = view.model if view is not None and view.model in settings.models else settings.default_model
    keyboard = InlineKeyboardMarkup(inline_keyboard=[
        [InlineKeyboardButton(text=("✓ " if m == current else "") + m, callback_data=f"model:{m}")]
        for m in settings.models
    ])
    await say(message, f"Current model: {current}. Choose one:", reply_markup=keyboard)


async def model_chosen(query: CallbackQuery, origin: Origin, appender: Appends, settings: Settings) -> None:
    name = (query.data or "").removeprefix("model:")
    message = query.message
    if name not in settings.models or not isinstance(message, Message):
        await query.answer("That model is not available.")
        return
    changed = ModelChanged(
        event_id=origin.event_id("model.changed"), occurred_at=origin.at, partition_key=mapping.conv_key(message),
        correlation_id=origin.correlation_id, chat_id=message.chat.id, topic_id=mapping.topic_of(message),
        user_id=query.from_user.id, model=name,
    )
    if (await appender.append(changed)).duplicate:
        return
    await query.answer(f"Model: {name}")
    try:
        await message.edit_text(f"Model set to {name}.")
    except Exception as e:  # noqa: BLE001 - cosmetic; the change is recorded
        log.info("could not update the model keyboard: %s", type(e).__name__)


async def prompt(
    message: Message, command: CommandObject, origin: Origin, appender: Appends, read_models: ReadModels
) -> None:
    assert message.from_user is not None
    args = (command.args or "").strip()
    if not args:
        if await record_command(message, origin, appender, command):
            view = await read_models.user(message.from_user.id)
            current = view.prompt if view else None
            await say(message, f"Your system prompt:\n{current}" if current else
                      "No custom system prompt. Set one with /prompt <text>.")
        return
    if len(args) > MAX_PROMPT_CHARS:
        if await record_command(message, origin, appender, command):
            await say(message, texts.PROMPT_TOO_LONG.format(limit=MAX_PROMPT_CHARS))
        return
    new_prompt = None if args.lower() == "clear" else args
    changed = PromptChanged(
        event_id=origin.event_id("prompt.changed"), occurred_at=origin.at, partition_key=mapping.conv_key(message),
        correlation_id=origin.correlation_id, chat_id=message.chat.id, topic_id=mapping.topic_of(message),
        user_id=message.from_user.id, prompt=new_prompt,
    )
    if await record_command(message, origin, appender, command, [changed]):
        await say(message, "System prompt cleared." if new_prompt is None else "System prompt saved.")


async def balance(
    message: Message, command: CommandObject, origin: Origin, appender: Appends, ledger: Ledger,
    read_models: ReadModels,
) -> None:
    assert message.from_user is not None
    if not await record_command(message, origin, appender, command):
        return
    # The ledger head is the authority on the amount; the read model adds the story.
    head = await ledger.head(message.from_user.id)
    view = await read_models.user(message.from_user.id)
    ops = view.recent_ops[-RECENT_OPS:] if view else ()
    await say(message, texts.balance(head.balance, head.held, ops))


async def stop(message: Message, command: CommandObject, origin: Origin, appender: Appends) -> None:
    # The agent consumes command.issued "stop", cancels, and says what it kept.
    await record_command(message, origin, appender, command)


async def topup(
    message: Message, command: CommandObject, origin: Origin, appender: Appends, ledger: Ledger,
    settings: Settings,
) -> None:
    admin = message.from_user
    assert admin is not None
    fresh = await record_command(message, origin, appender, command)
    if admin.id not in settings.admin_ids:
        if fresh:
            await say(message, texts.NOT_ADMIN)
        return
    try:
        target_raw, amount_raw = (command.args or "").split()
        target, amount = int(target_raw), texts.parse_usd(amount_raw)
    except ValueError:
        if fresh:
            await say(message, texts.TOPUP_USAGE)
        return
    credit = BalanceCredited(
        event_id=origin.event_id("balance.credited"), occurred_at=origin.at, partition_key=user_key(target),
        correlation_id=origin.correlation_id, user_id=target, amount=amount, source="admin", reference=str(admin.id),
    )
    appended = await ledger.transact(target, lambda head: [credit])
    if not appended.duplicate:
        await say(message, f"Credited {texts.usd(amount)} to {target}. Their balance: {texts.usd(appended.head.balance)}.")
