"""The fake Anthropic server, seen through the real SDK: what the agent relies on it for."""

from __future__ import annotations

import anthropic
import httpx2
import pytest

from eventbot.fakes.anthropic import FakeAnthropic, Fault, answer_text, count_tokens


@pytest.fixture
async def fake():
    async with FakeAnthropic(answer_chars=300, delta_chars=20) as server:
        yield server


def client(fake: FakeAnthropic) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key="test-key", base_url=fake.base_url, max_retries=0)


async def test_stream_yields_the_deterministic_text_and_usage(fake: FakeAnthropic) -> None:
    body = {"model": "claude-haiku-4-5", "max_tokens": 1000, "messages": [{"role": "user", "content": "hello there"}]}
    async with client(fake) as c, c.messages.stream(**body) as stream:
        texts = [t async for t in stream.text_stream]
        final = await stream.get_final_message()
    expected = answer_text({**body, "stream": True}, 300)
    assert "".join(texts) == expected == final.content[0].text
    assert expected.startswith("You said: hello there.")
    assert len(texts) == len(fake.deltas_of(0)) == -(-300 // 20)
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == count_tokens(expected)
    assert final.usage.input_tokens > 0
    assert fake.requests[0].texts() == ["hello there"]
    assert "x-api-key" not in fake.requests[0].headers  # the secret is not recorded


async def test_cache_control_writes_then_reads_the_prefix(fake: FakeAnthropic) -> None:
    system = [{"type": "text", "text": "be brief " * 100, "cache_control": {"type": "ephemeral"}}]
    body = {"model": "m", "max_tokens": 50, "system": system, "messages": [{"role": "user", "content": "hi"}]}
    async with client(fake) as c:
        first = await c.messages.create(**body)
        second = await c.messages.create(**body)
    assert first.usage.cache_creation_input_tokens and not first.usage.cache_read_input_tokens
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert second.usage.input_tokens == first.usage.input_tokens


async def test_roles_must_alternate(fake: FakeAnthropic) -> None:
    body = {"model": "m", "max_tokens": 1000, "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}
    async with client(fake) as c:
        with pytest.raises(anthropic.BadRequestError):
            await c.messages.create(**body)


@pytest.mark.parametrize(
    ("kind", "error"), [("http_429", anthropic.RateLimitError), ("http_529", anthropic.OverloadedError)]
)
async def test_http_faults_fail_before_the_stream(fake: FakeAnthropic, kind: str, error: type[Exception]) -> None:
    fake.fail_next(Fault(kind, retry_after_s=1))  # type: ignore[arg-type]
    body = {"model": "m", "max_tokens": 1000, "messages": [{"role": "user", "content": "a"}]}
    async with client(fake) as c:
        with pytest.raises(error) as info:
            async with c.messages.stream(**body) as stream:
                await stream.get_final_message()
        assert info.value.response.headers["retry-after"] == "1"
        # The fault is consumed: the next request streams normally.
        async with c.messages.stream(**body) as stream:
            assert (await stream.get_final_message()).stop_reason == "end_turn"


async def test_error_event_mid_stream_after_some_deltas(fake: FakeAnthropic) -> None:
    fake.fail_next(Fault("error_event", after_deltas=3))
    body = {"model": "m", "max_tokens": 1000, "messages": [{"role": "user", "content": "a"}]}
    got: list[str] = []
    async with client(fake) as c:
        with pytest.raises(anthropic.APIStatusError) as info:
            async with c.messages.stream(**body) as stream:
                async for t in stream.text_stream:
                    got.append(t)
    assert len(got) == 3
    assert info.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


async def test_dropped_connection_mid_stream(fake: FakeAnthropic) -> None:
    fake.fail_next(Fault("drop", after_deltas=2))
    body = {"model": "m", "max_tokens": 1000, "messages": [{"role": "user", "content": "a"}]}
    got: list[str] = []
    async with client(fake) as c:
        # The SDK lets a cut mid-body through as the transport's own error.
        with pytest.raises((anthropic.APIConnectionError, httpx2.TransportError)):
            async with c.messages.stream(**body) as stream:
                async for t in stream.text_stream:
                    got.append(t)
    assert len(got) == 2


async def test_before_delta_hook_holds_the_model(fake: FakeAnthropic) -> None:
    seen: list[tuple[int, int, int]] = []

    async def hook(request_index: int, index: int) -> None:
        seen.append((request_index, index, len(fake.deltas_of(request_index))))

    fake.before_delta = hook
    body = {"model": "m", "max_tokens": 1000, "messages": [{"role": "user", "content": "a"}]}
    async with client(fake) as c, c.messages.stream(**body) as stream:
        await stream.get_final_message()
    # The hook for delta n runs when exactly n deltas were produced.
    assert seen == [(0, n, n) for n in range(len(seen))] and len(seen) == 15


async def test_answer_ends_at_max_tokens(fake: FakeAnthropic) -> None:
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "a"}]}
    async with client(fake) as c, c.messages.stream(**body) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "max_tokens"
    assert len(final.content[0].text) == 40 and final.usage.output_tokens == 10
