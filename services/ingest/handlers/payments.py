"""/pay, pre-checkout, successful payment and /refund: Telegram Stars in, credit out and back."""

from __future__ import annotations

from aiogram import Bot, Router
from aiogram.filters import Command, CommandObject
from aiogram.types import (
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    LabeledPrice,
    Message,
    PreCheckoutQuery,
)

from services.ingest.coalesce import Appends
from services.ingest import texts
from services.ingest.handlers.common import data_prefix, is_command, is_payment, log, record_command, say
from services.ingest.mapping import Origin
from services.ingest.payments import Payments, RefundOutcome
from services.ingest.pricing import MAX_STARS, MIN_STARS, InvoiceSigner, StarsPricing

REFUND_REPLIES = {
    RefundOutcome.REFUNDED: "Refunded: the Stars are on their way back and the credit was removed.",
    RefundOutcome.NOT_FOUND: "I found no payment of yours with that charge id.",
    RefundOutcome.ALREADY: "That payment was already refunded.",
    RefundOutcome.SPENT: "That payment's credit has been (partly) used, so it can't be refunded.",
    RefundOutcome.REFUSED: "Telegram refused this refund; your balance is unchanged.",
}


def router() -> Router:
    r = Router(name="payments")
    r.message.filter(is_command_or_payment)
    r.message.register(pay, Command("pay"))
    r.callback_query.register(package_chosen, data_prefix("pay:"))
    r.pre_checkout_query.register(pre_checkout)
    r.message.register(paid, is_payment)
    r.message.register(refund, Command("refund"))
    return r


async def is_command_or_payment(message: Message) -> bool:
    return await is_payment(message) or await is_command(message)


async def pay(
    message: Message, command: CommandObject, origin: Origin, appender: Appends, pricing: StarsPricing,
    signer: InvoiceSigner,
) -> None:
    assert message.from_user is not None
    if not await record_command(message, origin, appender, command):
        return
    args = (command.args or "").strip()
    if not args:
        keyboard = InlineKeyboardMarkup(inline_keyboard=[
            [InlineKeyboardButton(text=f"{stars} ⭐ = {texts.usd(pricing.credit_for(stars))}", callback_data=f"pay:{stars}")]
            for stars in pricing.packages
        ])
        await say(message, f"Choose a package, or send /pay <Stars> for another amount ({MIN_STARS}-{MAX_STARS}).",
                  reply_markup=keyboard)
        return
    try:
        stars = int(args)
        if not MIN_STARS <= stars <= MAX_STARS:
            raise ValueError
    except ValueError:
        await say(message, f"Usage: /pay <Stars>, a whole number from {MIN_STARS} to {MAX_STARS}.")
        return
    await _send_invoice(message, message.from_user.id, stars, pricing, signer)


async def package_chosen(query: CallbackQuery, pricing: StarsPricing, signer: InvoiceSigner) -> None:
    try:
        stars = int((query.data or "").removeprefix("pay:"))
    except ValueError:
        stars = 0
    if stars not in pricing.packages or not isinstance(query.message, Message):
        await query.answer("That package is no longer offered.")
        return
    await query.answer()
    await _send_invoice(query.message, query.from_user.id, stars, pricing, signer)


async def _send_invoice(
    where: Message, user_id: int, stars: int, pricing: StarsPricing, signer: InvoiceSigner
) -> None:
    credit = pricing.credit_for(stars)
    payload = signer.issue(package=pricing.package_name(stars), user_id=user_id, stars=stars, credit=credit)
    try:
        await where.answer_invoice(
            title=f"{texts.usd(credit)} of Claude credit",
            description=f"Adds {texts.usd(credit)} to your eventbot balance.",
            payload=payload, currency="XTR", prices=[LabeledPrice(label="Credit", amount=stars)],
        )
    except Exception as e:  # noqa: BLE001 - the user can ask again; the update must not be retried for this
        log.warning("invoice not sent: %s", type(e).__name__)


async def pre_checkout(query: PreCheckoutQuery, signer: InvoiceSigner) -> None:
    """Accept only what this bot issued, to this user, for this amount; answered within Telegram's 10 s."""
    issued = signer.verify(query.invoice_payload)
    ok = (issued is not None and issued.user_id == query.from_user.id and issued.stars == query.total_amount
          and query.currency == "XTR")
    if ok:
        await query.answer(ok=True)
    else:
        log.warning("pre-checkout refused: payload not issued by this bot for this user and amount")
        await query.answer(ok=False, error_message="This invoice is not valid. Please ask for a new one with /pay.")


async def paid(message: Message, bot: Bot, origin: Origin, payments: Payments, signer: InvoiceSigner) -> None:
    sp = message.successful_payment
    user = message.from_user
    assert sp is not None and user is not None
    issued = signer.verify(sp.invoice_payload)
    valid = issued is not None and issued.user_id == user.id and issued.stars == sp.total_amount
    if not valid:
        # Telegram only charges after our pre-checkout said yes, so this is an anomaly: keep the
        # record (credit 0) for the operator rather than inventing a price.
        log.error("successful_payment with a payload this bot did not issue; recorded without credit")
    fresh = await payments.credit(
        bot_id=bot.id, user_id=user.id, charge_id=sp.telegram_payment_charge_id, stars=sp.total_amount,
        credit=issued.credit if valid and issued else 0, payload=sp.invoice_payload,
        provider_charge_id=sp.provider_payment_charge_id or "", paid_at=origin.at,
        correlation_id=origin.correlation_id,
    )
    if fresh and issued is not None:
        await say(message, texts.receipt(issued.credit, sp.telegram_payment_charge_id))


async def refund(
    message: Message, command: CommandObject, bot: Bot, origin: Origin, appender: Appends, payments: Payments
) -> None:
    assert message.from_user is not None
    fresh = await record_command(message, origin, appender, command)
    charge_id = (command.args or "").strip()
    if not charge_id or " " in charge_id:
        if fresh:
            await say(message, texts.REFUND_USAGE)
        return
    outcome = await payments.refund(bot, user_id=message.from_user.id, charge_id=charge_id,
                                    correlation_id=origin.correlation_id)
    if fresh or outcome is not RefundOutcome.ALREADY:  # a redelivered /refund was answered the first time
        await say(message, REFUND_REPLIES[outcome])

