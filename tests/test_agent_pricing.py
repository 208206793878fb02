"""Price table, cost and hold planning: integer money an auditor can recompute."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventbot.settings import Settings, SettingsError
from events import Usage
from services.agent.holds import InsufficientBalance, hold_for, plan_hold
from services.agent.main import run_agent
from services.agent.pricing import DEFAULT_PRICES, ModelPrice, UnknownModel, cost

SONNET = DEFAULT_PRICES.price("claude-sonnet-4-6")


def test_rates_are_list_prices_in_micro_usd_per_million_tokens() -> None:
    assert SONNET == ModelPrice(input=3_000_000, output=15_000_000, cache_write=3_750_000, cache_read=300_000)
    assert DEFAULT_PRICES.price("claude-haiku-4-5").cache_read == 100_000


def test_cost_of_a_usage_rounds_up_once() -> None:
    usage = Usage(input_tokens=1000, output_tokens=500, cache_read_tokens=2000, cache_write_tokens=100)
    # 1000×3 + 500×15 + 2000×0.3 + 100×3.75 = 3000 + 7500 + 600 + 375 micro-USD
    assert cost(SONNET, usage) == 11_475
    assert cost(SONNET, Usage(cache_read_tokens=1)) == 1  # 0.3 micro-USD rounds up, never to zero
    assert cost(SONNET, Usage()) == 0


def test_unknown_model_is_an_error_not_free() -> None:
    with pytest.raises(UnknownModel):
        DEFAULT_PRICES.cost("gpt-4", Usage(input_tokens=1))


def test_the_default_models_are_priced_at_their_list_prices() -> None:
    # USD per million tokens (input, output, 5-minute cache write, cache read), Anthropic's model overviews.
    listed = {"claude-sonnet-5-5": (2, 10, 2.5, 0.2), "claude-haiku-4-5": (1, 5, 1.25, 0.1), "claude-opus-5-5": (4, 20, 5, 0.2)}
    for model, (i, o, w, r) in listed.items():
        assert DEFAULT_PRICES.price(model) == ModelPrice(input=round(i * 1e6), output=round(o * 1e6),
                                                         cache_write=round(w * 1e6), cache_read=round(r * 1e6)), model


def test_every_model_offered_by_default_has_a_price() -> None:
    defaults = Settings()
    assert defaults.default_model in defaults.models
    assert [m for m in defaults.models if m not in DEFAULT_PRICES.models] == []


async def test_the_agent_refuses_to_start_with_a_model_it_cannot_bill() -> None:
    # Refused before any connection is opened (nothing listens on port 1).
    settings = Settings(redis_url="redis://127.0.0.1:1", telegram_bot_token="1:x", anthropic_api_key="k",
                        models=("claude-haiku-4-5", "claude-sonnet-4-5"), default_model="claude-haiku-4-5")
    with pytest.raises(SettingsError, match="EVENTBOT_MODELS .* anthropic-2026-11: claude-sonnet-4-5$"):
        await run_agent(settings)


def test_full_hold_when_the_balance_covers_it() -> None:
    plan = plan_hold(SONNET, available=10**9, estimated_input_tokens=1000, max_tokens=2048)
    # input at the cache-write rate (the highest an input token can cost) + all of max_tokens
    assert plan.amount == 1000 * 3.75 + 2048 * 15 and plan.max_tokens == 2048


def test_short_balance_lowers_max_tokens_to_what_it_covers() -> None:
    plan = plan_hold(SONNET, available=5_000, estimated_input_tokens=400, max_tokens=2048)
    assert plan.max_tokens == (5_000 - 1_500) // 15 == 233
    assert plan.amount <= 5_000


def test_refuses_below_a_useful_answer() -> None:
    with pytest.raises(InsufficientBalance) as info:
        plan_hold(SONNET, available=1_000, estimated_input_tokens=400, max_tokens=2048)
    assert info.value.needed == hold_for(SONNET, 400, 64)
    with pytest.raises(InsufficientBalance):
        plan_hold(SONNET, available=-5, estimated_input_tokens=1, max_tokens=2048)


@given(
    available=st.integers(0, 10**7),
    est=st.integers(0, 20_000),
    actual_in=st.integers(0, 20_000),
    out=st.integers(0, 4096),
    max_tokens=st.integers(16, 4096),
)
def test_a_charge_exceeds_its_hold_only_by_the_input_misestimate(available, est, actual_in, out, max_tokens) -> None:
    try:
        plan = plan_hold(SONNET, available, est, max_tokens)
    except InsufficientBalance:
        return
    assert plan.amount <= available
    out = min(out, plan.max_tokens)  # the model never writes past max_tokens
    charge = cost(SONNET, Usage(input_tokens=actual_in, output_tokens=out))
    overshoot = max(0, actual_in - est) * SONNET.max_input
    assert charge - plan.amount <= -(-overshoot // 1_000_000) + 1
