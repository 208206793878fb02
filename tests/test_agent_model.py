"""Calling Claude through the real SDK against the fake: retries, progress, warnings."""

from __future__ import annotations

import asyncio
import logging

import anthropic
import pytest

from eventbot.fakes.anthropic import FakeAnthropic, Fault
import services.agent.model as model_module
from services.agent.model import ModelError, Progress, RetryPolicy, stream_answer

FAST = RetryPolicy(attempts=3, base_s=0.01, cap_s=0.05)


@pytest.fixture
async def fake():
    async with FakeAnthropic(answer_chars=100, delta_chars=10) as server:
        yield server


def params(model: str = "claude-haiku-4-5") -> dict:
    return {"model": model, "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]}


async def test_a_deprecated_model_is_logged_not_raised(fake: FakeAnthropic, caplog: pytest.LogCaptureFixture) -> None:
    # Warnings are errors in this suite: a warning escaping the SDK call would fail the answer.
    progress = Progress()
    async with anthropic.AsyncAnthropic(api_key="k", base_url=fake.base_url, max_retries=0) as client:
        with caplog.at_level(logging.WARNING, "eventbot.agent.model"):
            await stream_answer(client, params("claude-sonnet-4-5"), progress, lambda d: None, retry=FAST)
            await stream_answer(client, params("claude-sonnet-4-5"), Progress(), lambda d: None, retry=FAST)
    assert progress.stop_reason == "end_turn" and len(progress.text) == 100
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "deprecated" in caplog.records[0].getMessage()


async def test_retries_are_bounded_and_only_before_the_first_delta(fake: FakeAnthropic) -> None:
    fake.fail_next(Fault("http_529"), Fault("drop", after_deltas=0), Fault("http_429"))
    progress, retried = Progress(), []
    async with anthropic.AsyncAnthropic(api_key="k", base_url=fake.base_url, max_retries=0) as client:
        with pytest.raises(ModelError) as info:
            await stream_answer(client, params(), progress, lambda d: None, retry=FAST, on_retry=retried.append)
    assert info.value.retryable and info.value.cause == "rate_limited"
    assert retried == ["overloaded", "connection"] and progress.attempts == 3 and progress.text == ""


async def test_the_caller_hears_when_the_model_accepted_the_request(fake: FakeAnthropic) -> None:
    # The agent's urgency lapses there: the wait for the first token is the model's, not ours to hurry.
    fake.fail_next(Fault("http_529"))
    progress, opened = Progress(), []
    async with anthropic.AsyncAnthropic(api_key="k", base_url=fake.base_url, max_retries=0) as client:
        await stream_answer(client, params(), progress, lambda d: None, retry=FAST,
                            on_open=lambda: opened.append((progress.attempts, progress.deltas)))
    assert opened == [(2, 0)]  # not for the refused attempt; before any delta of the accepted one


async def test_a_drop_after_text_is_not_retried_and_keeps_the_partial(fake: FakeAnthropic) -> None:
    fake.fail_next(Fault("drop", after_deltas=3))
    progress, seen = Progress(), []
    async with anthropic.AsyncAnthropic(api_key="k", base_url=fake.base_url, max_retries=0) as client:
        with pytest.raises(ModelError) as info:
            await stream_answer(client, params(), progress, seen.append, retry=FAST)
    assert info.value.cause == "connection" and progress.attempts == 1
    assert progress.text == "".join(seen) and progress.deltas == 3
    assert progress.usage.output_tokens == 8 and progress.usage.input_tokens > 0  # 30 chars, estimated


async def test_a_bad_request_is_not_retried(fake: FakeAnthropic) -> None:
    bad = {"model": "m", "max_tokens": 5, "messages": [{"role": "assistant", "content": "x"}]}
    async with anthropic.AsyncAnthropic(api_key="k", base_url=fake.base_url, max_retries=0) as client:
        with pytest.raises(ModelError) as info:
            await stream_answer(client, bad, Progress(), lambda d: None, retry=FAST)
    assert not info.value.retryable and info.value.cause == "invalid_request_error"
    assert len(fake.requests) == 1


async def test_a_burst_of_stream_events_leaves_the_event_loop_to_others(monkeypatch: pytest.MonkeyPatch) -> None:
    # A long answer at zero delay arrives in a few socket reads; parsed without a yield,
    # it would stall every other conversation on the agent's loop until its end.
    monkeypatch.setattr(model_module, "SLICE_S", 0.0)  # a slice per event: the count no longer depends on the CPU
    seen_at: list[int] = []
    paced_at: list[int] = []
    progress = Progress()

    async def other_conversation() -> None:
        while True:
            seen_at.append(progress.deltas)
            await asyncio.sleep(0)

    async def pace() -> None:
        paced_at.append(progress.deltas)
        await asyncio.sleep(0)

    async with FakeAnthropic(answer_chars=2_000, delta_chars=4) as server:
        async with anthropic.AsyncAnthropic(api_key="k", base_url=server.base_url, max_retries=0) as client:
            other = asyncio.create_task(other_conversation())
            try:
                await stream_answer(client, params(), progress, lambda d: None, retry=FAST, pace=pace)
            finally:
                other.cancel()
    assert progress.deltas == 500
    during = {d for d in seen_at if 0 < d < progress.deltas}
    assert len(during) >= progress.deltas - 1, len(during)
    # Up to the first text the answer is urgent itself: it yields a turn, never waits at the gate.
    assert paced_at and min(paced_at) == 1 and len(paced_at) >= progress.deltas - 1


async def test_thinking_before_the_text_is_not_shown_and_is_billed() -> None:
    # Current models think before they answer: a thinking block, then the text block.
    async with FakeAnthropic(answer_chars=100, delta_chars=10, thinking_chars=300) as fake:
        shown: list[str] = []
        progress = Progress()
        async with anthropic.AsyncAnthropic(api_key="k", base_url=fake.base_url, max_retries=0) as client:
            await stream_answer(client, params(), progress, shown.append, retry=FAST)
    assert progress.text == "".join(shown) == "".join(d.text for d in fake.deltas) and len(progress.text) == 100
    assert "Considering" not in progress.text and progress.deltas == 10
    assert progress.usage.output_tokens == 300 // 4 + 100 // 4  # the API's count: thinking and text


async def test_a_call_cut_off_while_thinking_is_charged_for_the_thinking() -> None:
    async with FakeAnthropic(answer_chars=100, delta_chars=10, thinking_chars=300) as fake:
        fake.fail_next(Fault("drop", after_deltas=0))  # after the thinking block, before the first text
        progress = Progress()
        async with anthropic.AsyncAnthropic(api_key="k", base_url=fake.base_url, max_retries=0) as client:
            with pytest.raises(ModelError):
                await stream_answer(client, params(), progress, lambda d: None, retry=RetryPolicy(attempts=1))
    assert progress.text == "" and progress.produced
    assert progress.usage.output_tokens == 300 // 4 and progress.usage.input_tokens > 0


async def test_a_call_cut_off_during_omitted_thinking_is_charged_its_input() -> None:
    # display "omitted": the thinking block streams no text, only a signature.
    async with FakeAnthropic(answer_chars=100, delta_chars=10, thinking_chars=300, thinking_shown=False) as fake:
        fake.fail_next(Fault("drop", after_deltas=0))
        progress = Progress()
        async with anthropic.AsyncAnthropic(api_key="k", base_url=fake.base_url, max_retries=0) as client:
            with pytest.raises(ModelError):
                await stream_answer(client, params(), progress, lambda d: None, retry=RetryPolicy(attempts=1))
    assert progress.text == "" and progress.thinking_chars == 0 and progress.produced
    assert progress.usage.input_tokens > 0 and progress.usage.output_tokens == 0


async def test_a_retried_call_is_charged_for_its_last_attempt_only() -> None:
    async with FakeAnthropic(answer_chars=100, delta_chars=10, thinking_chars=300) as fake:
        fake.fail_next(Fault("drop", after_deltas=0))  # the first attempt thinks, then is cut before any text
        progress = Progress()
        async with anthropic.AsyncAnthropic(api_key="k", base_url=fake.base_url, max_retries=0) as client:
            await stream_answer(client, params(), progress, lambda d: None, retry=FAST)
    assert progress.attempts == 2 and len(progress.text) == 100
    assert progress.thinking_chars == 300 and progress.usage.output_tokens == 300 // 4 + 100 // 4


async def test_the_warm_up_streams_a_canned_answer_without_touching_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent pays the SDK's first-use costs at start; that must never become a request to anyone."""
    import socket

    from services.agent.warmup import warm_up

    async def no_connection(*args: object, **kwargs: object) -> None:
        raise AssertionError("the warm-up opened a connection")

    def no_socket(*args: object, **kwargs: object) -> None:
        raise AssertionError("the warm-up connected a socket")

    monkeypatch.setattr(asyncio.BaseEventLoop, "create_connection", no_connection)
    monkeypatch.setattr(socket.socket, "connect", no_socket)
    progress = await warm_up("claude-haiku-4-5")
    # Parsed as a real answer is: the whole event sequence, through the same code.
    assert (progress.text, progress.stop_reason, progress.deltas, progress.message_id) == ("Ready.", "end_turn", 1, "msg_warmup")
    assert progress.usage.input_tokens == 12 and progress.usage.output_tokens == 3
