"""What ingest says to users: short, plain text (no parse mode, so nothing needs escaping)."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

from eventbot.views import LedgerOp

MICRO = 1_000_000


def usd(micro: int) -> str:
    """Micro-USD as dollars and cents, rounded toward zero: $1.23, -$0.05."""
    sign = "-" if micro < 0 else ""
    dollars, rest = divmod(abs(micro), MICRO)
    return f"{sign}${dollars}.{rest // 10_000:02d}"


def parse_usd(text: str) -> int:
    """ "2.5" or "$2.50" -> 2_500_000 micro-USD; raises ValueError when not a positive amount."""
    try:
        value = Decimal(text.strip().lstrip("$"))
    except InvalidOperation:
        raise ValueError(f"not an amount: {text!r}") from None
    micro = value * MICRO
    if not value.is_finite() or micro <= 0 or micro != micro.to_integral_value():
        raise ValueError(f"not a positive amount with at most 6 decimals: {text!r}")
    return int(micro)


WELCOME = (
    "Hi! I'm a chat bot for Claude. Send me a message and I'll answer.\n"
    "Answers are paid from your balance: /balance shows it, /pay tops it up with Telegram Stars.\n"
    "/help lists everything I can do."
)

HELP = (
    "/new - start a new conversation\n"
    "/model - choose the model\n"
    "/prompt <text> - set your own system prompt (/prompt clear removes it)\n"
    "/balance - balance and last operations\n"
    "/pay - top up with Telegram Stars\n"
    "/refund <charge id> - refund a Stars payment\n"
    "/stop - stop the answer being written\n"
    "In groups, mention me or reply to me."
)

TOP_UP_HINT = "Your balance is empty, so I can't answer yet. Top up with /pay."
RATE_LIMITED = "You're sending messages faster than I can answer. Please wait a minute."
STALE_BUTTON = "This button is no longer available."
NOT_ADMIN = "This command is for admins."
TOPUP_USAGE = "Usage: /topup <user id> <amount in USD>"
REFUND_USAGE = "Usage: /refund <charge id> (the id is in your payment receipt)"
PROMPT_TOO_LONG = "That prompt is too long (at most {limit} characters)."


RECEIPT_OPENING = "Thank you!"


def receipt(credit_micro: int, charge_id: str) -> str:
    """The reply to a Stars payment, once it is credited."""
    return f"{RECEIPT_OPENING} {usd(credit_micro)} was added to your balance.\nCharge id (for /refund): {charge_id}"


def too_large(name: str, limit_bytes: int) -> str:
    return f"{name} is too large: I can read files up to {size(limit_bytes)}."


def size(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.0f} MB"
    return f"{n / 1024:.0f} KB" if n >= 1024 else f"{n} bytes"


def balance(balance_micro: int, held_micro: int, ops: Sequence[LedgerOp]) -> str:
    lines = [f"Balance: {usd(balance_micro)}"]
    if held_micro:
        lines.append(f"On hold for answers in progress: {usd(held_micro)}")
    if ops:
        lines.append("Last operations:")
        for op in ops:
            lines.append(f"{op.occurred_at:%Y-%m-%d %H:%M} {op.type} {usd(op.amount)}, balance {usd(op.balance_after)}")
    elif balance_micro == 0:
        lines.append("No operations yet. Top up with /pay.")
    return "\n".join(lines)
