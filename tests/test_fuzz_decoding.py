"""Bad bytes on the wire: decoding never crashes, it raises a typed error (or reads an event)."""

from __future__ import annotations

import random

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from eventbot.appender import Appender
from eventbot.keys import Keys
from events import ALL_EVENT_TYPES, Event, EventDecodeError, default_codec
from tests.factories import credit, message
from tests.test_consumer import Recorder, _zero, eventually, make, pending_total, running

CODEC = default_codec()
TYPE_NAMES = [t.type_name() for t in ALL_EVENT_TYPES] + ["nobody.knows", ""]
SAMPLES = [CODEC.encode(message(1, "hello")), CODEC.encode(credit(2, 10))]


def decode_or_typed_error(type_name: str, version: int, data: bytes) -> None:
    try:
        event = CODEC.decode(type_name, version, data)
    except EventDecodeError:
        return
    assert isinstance(event, Event) and event.type_name() == type_name


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(TYPE_NAMES), st.integers(-3, 5), st.binary(max_size=300))
def test_random_bytes(type_name: str, version: int, data: bytes) -> None:
    decode_or_typed_error(type_name, version, data)


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(SAMPLES), st.data())
def test_truncated_and_bit_flipped_payloads(sample: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(sample)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(sample) - 1), st.integers(1, 255)), max_size=4))
    mutated = bytearray(sample[:cut] if data.draw(st.booleans()) else sample)
    for pos, mask in flips:
        if pos < len(mutated):
            mutated[pos] ^= mask
    for type_name in ("message.received", "balance.credited", "response.completed"):
        for version in (1, 2):
            decode_or_typed_error(type_name, version, bytes(mutated))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=800, deadline=None)
@given(st.sampled_from(TYPE_NAMES), st.integers(1, 2), st.dictionaries(st.text(max_size=15), json_values, max_size=8))
def test_well_formed_maps_of_the_wrong_shape(type_name: str, version: int, payload: dict) -> None:
    decode_or_typed_error(type_name, version, msgspec.msgpack.encode(payload))
    try:
        CODEC.from_json(type_name, version, msgspec.json.encode(payload))
    except EventDecodeError:
        pass


async def test_a_consumer_fed_garbage_loses_none_of_the_good_entries(redis: Redis, keys: Keys, appender: Appender) -> None:
    rng = random.Random(20261122)
    stream = keys.stream("conv", 0)
    good = [message(0, f"good-{i}") for i in range(20)]
    garbage = 0
    for event in good:
        await appender.append(event)
        for _ in range(rng.randrange(0, 8)):
            sample = bytearray(rng.choice(SAMPLES))
            for _ in range(rng.randrange(1, 4)):
                sample[rng.randrange(len(sample))] ^= rng.randrange(1, 256)
            data = bytes(sample[: rng.randrange(len(sample) + 1)]) if rng.random() < 0.5 else bytes(sample)
            await redis.xadd(stream, {"t": rng.choice(TYPE_NAMES), "v": rng.randrange(0, 4), "d": data})
            garbage += 1
    recorder = Recorder()
    consumer = make(redis, keys, CODEC, recorder, "fuzz")
    async with running(consumer):
        await eventually(lambda: {str(e.event_id) for e in good} <= set(recorder.applied))
        await eventually(lambda: _zero(pending_total(redis, keys)))
    handled_garbage = len(recorder.calls) - len(good)
    dead = await redis.xlen(keys.dead_letters("g", "conv", 0))
    unknown = consumer.metrics.unknown.labels("g", stream)._value.get()
    # Every garbage entry is accounted for: decoded by luck, dead-lettered, or skipped as unknown.
    assert handled_garbage + dead + unknown == garbage
