"""What Claude costs: a versioned price table per model, and the cost of a usage.

Rates are integers in micro-USD per *million* tokens: a per-token integer can't
express a cache read ($0.30/MTok is 0.3 micro-USD a token). A cost is the sum of
tokens × rate over the four kinds, divided by a million and rounded up once, so
an auditor recomputes every charge exactly from the counts and the version
recorded in it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from events import Usage

PER = 1_000_000


class ModelPrice(msgspec.Struct, frozen=True, kw_only=True):
    """micro-USD per million tokens (numerically: USD per billion tokens)."""

    input: int
    output: int
    cache_write: int
    cache_read: int

    @property
    def max_input(self) -> int:
        """The highest rate an input token can be billed at (a cache write costs more than plain input)."""
        return max(self.input, self.cache_write, self.cache_read)


class PriceTable(msgspec.Struct, frozen=True):
    version: str
    models: Mapping[str, ModelPrice]

    def price(self, model: str) -> ModelPrice:
        try:
            return self.models[model]
        except KeyError:
            raise UnknownModel(model, self.version) from None

    def cost(self, model: str, usage: Usage) -> int:
        return cost(self.price(model), usage)

    def unpriced(self, models: Iterable[str]) -> list[str]:
        """Those of ``models`` this table can't bill (in their order)."""
        return [m for m in models if m not in self.models]


class UnknownModel(LookupError):
    def __init__(self, model: str, version: str) -> None:
        super().__init__(f"model {model!r} has no price in table {version}")
        self.model = model


def cost(price: ModelPrice, usage: Usage) -> int:
    """micro-USD, rounded up: a fraction of a micro-dollar is never given away or lost."""
    total = (
        usage.input_tokens * price.input
        + usage.output_tokens * price.output
        + usage.cache_write_tokens * price.cache_write
        + usage.cache_read_tokens * price.cache_read
    )
    return -(-total // PER)


def _usd_per_mtok(input: float, output: float, cache_write: float, cache_read: float) -> ModelPrice:
    # USD/MTok × 1e6 = micro-USD/MTok; round() only absorbs float noise (3.75 -> 3750000).
    return ModelPrice(
        input=round(input * PER),
        output=round(output * PER),
        cache_write=round(cache_write * PER),
        cache_read=round(cache_read * PER),
    )


# Anthropic's list prices (platform.claude.com, model overviews, 2026-11); cache writes at
# the 5-minute TTL rate. Only models the API still serves: claude-sonnet-4-5 reaches its
# end of life on 2026-11-30 (the SDK's own deprecation table), claude-opus-4-1, -sonnet-4-0
# and -3-5-haiku are gone. A new table gets a new version: charges name the version they
# were computed with, so charges made under "anthropic-2025-10" keep meaning what they said.
DEFAULT_PRICES = PriceTable(
    "anthropic-2026-11",
    {
        "claude-sonnet-5-5": _usd_per_mtok(2, 10, 2.50, 0.20),
        "claude-opus-5-5": _usd_per_mtok(4, 20, 5, 0.20),  # cache reads at 0.05 × input, as listed (not 0.1 ×)
        "claude-haiku-4-5": _usd_per_mtok(1, 5, 1.25, 0.10),
        "claude-sonnet-5": _usd_per_mtok(2, 10, 2.50, 0.20),
        "claude-opus-5": _usd_per_mtok(5, 25, 6.25, 0.50),
        "claude-sonnet-4-6": _usd_per_mtok(3, 15, 3.75, 0.30),
        "claude-opus-4-6": _usd_per_mtok(5, 25, 6.25, 0.50),
        "claude-opus-4-5": _usd_per_mtok(5, 25, 6.25, 0.50),
    },
)
