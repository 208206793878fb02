"""The command list shown in Telegram's menu, registered with setMyCommands at start."""

from __future__ import annotations

from aiogram import Bot
from aiogram.types import BotCommand, BotCommandScopeChat, BotCommandScopeDefault

from eventbot.settings import Settings

COMMANDS = [
    BotCommand(command="new", description="Start a new conversation"),
    BotCommand(command="model", description="Choose the model"),
    BotCommand(command="prompt", description="Set or clear your system prompt"),
    BotCommand(command="balance", description="Balance and last operations"),
    BotCommand(command="pay", description="Top up with Telegram Stars"),
    BotCommand(command="refund", description="Refund a Stars payment"),
    BotCommand(command="stop", description="Stop the current answer"),
    BotCommand(command="help", description="What I can do"),
]
ADMIN_COMMANDS = [*COMMANDS, BotCommand(command="topup", description="Credit a user (admin)")]


async def register_commands(bot: Bot, settings: Settings) -> None:
    await bot.set_my_commands(COMMANDS, scope=BotCommandScopeDefault())
    # Admins see /topup in their private chat with the bot; nobody else does.
    for admin_id in sorted(settings.admin_ids):
        await bot.set_my_commands(ADMIN_COMMANDS, scope=BotCommandScopeChat(chat_id=admin_id))
