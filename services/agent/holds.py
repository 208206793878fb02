"""How much to hold before calling Claude, and how many tokens that buys.

The hold is the most a request can cost: its estimated input at the highest
input rate plus ``max_tokens`` of output. If the user's available balance is
short, ``max_tokens`` is lowered to what it covers; below a useful minimum the
request is refused. So a charge can exceed its hold only by the error of the
input estimate, never by the output.
"""

from __future__ import annotations

import msgspec

from services.agent.pricing import PER, ModelPrice

# Below this many output tokens an answer is rarely useful: better to ask for a top-up.
MIN_USEFUL_TOKENS = 64


class HoldPlan(msgspec.Struct, frozen=True):
    amount: int
    max_tokens: int
    estimated_input_tokens: int


class InsufficientBalance(Exception):
    """The available balance can't cover the input and a useful answer."""

    def __init__(self, available: int, needed: int) -> None:
        super().__init__(f"available {available} micro-USD, a useful answer needs {needed}")
        self.available = available
        self.needed = needed


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def hold_for(price: ModelPrice, input_tokens: int, max_tokens: int) -> int:
    return _ceil_div(input_tokens * price.max_input + max_tokens * price.output, PER)


def plan_hold(
    price: ModelPrice,
    available: int,
    estimated_input_tokens: int,
    max_tokens: int,
    *,
    min_useful_tokens: int = MIN_USEFUL_TOKENS,
) -> HoldPlan:
    """The hold and the (possibly lowered) ``max_tokens``; raises :class:`InsufficientBalance`."""
    full = hold_for(price, estimated_input_tokens, max_tokens)
    if full <= available:
        return HoldPlan(full, max_tokens, estimated_input_tokens)
    input_cost = estimated_input_tokens * price.max_input
    affordable = (available * PER - input_cost) // price.output if available > 0 else 0
    floor = min(min_useful_tokens, max_tokens)
    if affordable < floor:
        raise InsufficientBalance(available, hold_for(price, estimated_input_tokens, floor))
    tokens = min(affordable, max_tokens)
    return HoldPlan(hold_for(price, estimated_input_tokens, tokens), tokens, estimated_input_tokens)
