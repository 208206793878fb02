"""aiogram handlers of the ingest bot, registered fresh per dispatcher (a router has one parent)."""

from __future__ import annotations

from aiogram import Dispatcher

from services.ingest.handlers import commands, messages, payments


def register(dp: Dispatcher) -> None:
    # Plain messages are most updates: they are handled on the dispatcher itself, before any
    # router or command filter is entered. Commands and payments next; whatever they leave
    # (an unknown /command, one for another bot) is recorded as a message by the fallback.
    messages.register(dp)
    dp.include_routers(commands.router(), payments.router(), messages.fallback_router())
