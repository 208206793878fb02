import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import msgspec
import pytest

from eventbot.ids import derived_id, new_event_id
from events import ALL_EVENT_TYPES, CorruptEvent, EventCodec, ResponseCompleted, UnknownEventType, Usage, default_codec
from events.legacy import ResponseCompletedV1
from tests.factories import credit, message

ROOT = Path(__file__).resolve().parents[1]


def test_every_type_has_a_unique_dotted_tag() -> None:
    tags = [t.type_name() for t in ALL_EVENT_TYPES]
    assert len(tags) == len(set(tags))
    assert all("." in t for t in tags)


def test_msgpack_and_json_round_trip() -> None:
    codec = default_codec()
    for event in (message(3, "hi"), credit(5, 1_000)):
        assert codec.decode(event.type_name(), event.version, codec.encode(event)) == event
        assert codec.from_json(event.type_name(), event.version, codec.to_json(event)) == event


def test_v1_response_completed_reads_back_as_v2() -> None:
    codec = default_codec()
    v1 = ResponseCompletedV1(
        event_id=new_event_id(), occurred_at=datetime.now(UTC), partition_key="9", chat_id=9,
        response_id=uuid4(), user_id=9, text="answer", stop_reason="end_turn",
        input_tokens=120, output_tokens=45, ttft_ms=300, duration_ms=2_000,
    )
    wire = msgspec.msgpack.Encoder(uuid_format="bytes").encode(v1)
    v2 = codec.decode("response.completed", 1, wire)
    assert isinstance(v2, ResponseCompleted)
    assert v2.usage == Usage(input_tokens=120, output_tokens=45)
    assert (v2.text, v2.response_id, v2.event_id) == ("answer", v1.response_id, v1.event_id)
    assert codec.from_json("response.completed", 1, msgspec.json.encode(v1)) == v2


def test_unknown_type_and_future_version_are_reported_not_crashing() -> None:
    codec = default_codec()
    with pytest.raises(UnknownEventType):
        codec.decode("nobody.knows", 1, b"\x80")
    with pytest.raises(UnknownEventType):
        codec.decode("message.received", 99, b"\x80")


@pytest.mark.parametrize("payload", [b"", b"\xc1", b"\x81\xa1x\x01", msgspec.msgpack.encode({"type": "message.received"})])
def test_corrupt_payload_is_a_typed_error(payload: bytes) -> None:
    with pytest.raises(CorruptEvent):
        default_codec().decode("message.received", 1, payload)


def test_upcast_without_a_path_is_unknown() -> None:
    codec = EventCodec(ALL_EVENT_TYPES, upcasters={})
    with pytest.raises(UnknownEventType):
        codec.decode("response.completed", 1, msgspec.msgpack.encode({"type": "response.completed"}))


def test_derived_ids_are_deterministic_v7() -> None:
    at = datetime(2026, 1, 2, tzinfo=UTC)
    a, b = derived_id("bot1:update:42", at), derived_id("bot1:update:42", at)
    assert a == b and a.version == 7
    assert derived_id("bot1:update:43", at) != a
    assert new_event_id().version == 7


def test_schema_files_match_the_code() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "eventbot.cli", "schemas", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_schema_check_fails_on_drift(tmp_path) -> None:
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "eventbot.cli", "schemas", "--dir", str(tmp_path), *a], capture_output=True, text=True
    )
    assert run().returncode == 0
    target = next(tmp_path.glob("message.received.v1.json"))
    target.write_text(target.read_text().replace('"chat_id"', '"chat"', 1))
    result = run("--check")
    assert result.returncode == 1
    assert "message.received.v1.json" in result.stderr
