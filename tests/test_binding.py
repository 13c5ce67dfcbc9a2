"""The CloudEvents bindings: structured and binary, every attribute prefix, refusals."""

from __future__ import annotations

import datetime
import uuid

import orjson
import pytest
from batchbridge.core.binding import STRUCTURED_CONTENT_TYPE, amqp_properties, amqp_value, from_message, to_message
from batchbridge.core.errors import DecodeMessageError, MessageTooLargeError
from batchbridge.core.event import ordering_key
from conformance import make_event


@pytest.mark.parametrize("prefix", ["ce-", "cloudEvents_"])
def test_structured_round_trip(prefix: str) -> None:
    event = make_event("job-7", 3)
    msg = to_message(event, prefix=prefix, max_attributes=10)
    assert msg.content_type == STRUCTURED_CONTENT_TYPE
    assert orjson.loads(msg.body) == event
    assert msg.attributes[f"{prefix}id"] == event["id"] and msg.attributes[f"{prefix}type"] == event["type"]
    assert len(msg.attributes) <= 10
    assert (msg.ordering_key, msg.dedup_id, msg.event_type) == ("job-7", event["id"], event["type"])
    assert from_message(msg.body, msg.attributes, msg.content_type) == event


@pytest.mark.parametrize("prefix", ["ce-", "cloudEvents_", "cloudEvents:"])
def test_binary_round_trip_with_any_prefix(prefix: str) -> None:
    event = make_event("job-8", 4)
    msg = to_message(event, mode="binary", prefix=prefix)
    assert orjson.loads(msg.body) == event["data"]
    assert msg.content_type == "application/json"
    assert from_message(msg.body, msg.attributes, msg.content_type) == event


def test_structured_attributes_respect_the_slot_limit_routing_first() -> None:
    msg = to_message(make_event(), max_attributes=4)
    assert sorted(msg.attributes) == ["ce-id", "ce-source", "ce-subject", "ce-type"]


def test_binary_mode_beyond_the_attribute_limit_is_refused() -> None:
    with pytest.raises(MessageTooLargeError, match="attributes"):
        to_message(make_event(), mode="binary", max_attributes=3)


def test_ordering_key_prefers_job_then_environment() -> None:
    event = make_event("job-1")
    assert ordering_key(event) == "job-1"
    event["data"]["job"] = None
    event["data"]["environment"] = {"id": "env-9", "name": None}
    assert ordering_key(event) == "env-9"
    event["data"]["environment"] = None
    assert ordering_key(event) is None


@pytest.mark.parametrize(("body", "needle"), [
    (b"\xff\xfe\x00", "not UTF-8"),
    (b"<xml/>", "not JSON"),
    (b"[1, 2]", "not a CloudEvent object"),
    (b'{"specversion": "1.0", "id": "x"}', "missing source, type"),
])
def test_undecodable_bodies_give_typed_errors(body: bytes, needle: str) -> None:
    with pytest.raises(DecodeMessageError, match=needle):
        from_message(body, {})


def test_structured_body_without_content_type_is_not_mistaken_for_binary() -> None:
    event = make_event("job-9", 1)
    msg = to_message(event, prefix="ce-")
    assert "ce-specversion" not in msg.attributes
    assert from_message(msg.body, msg.attributes, None) == event


# --- the wire rules of the contract's "On the wire" --------------------------------------------------


@pytest.mark.parametrize("prefix", ["ce-", "cloudEvents_", "cloudEvents:"])
def test_structured_mode_never_carries_specversion_binary_mode_always_does(prefix: str) -> None:
    event = make_event("job-spec", 1)
    structured = to_message(event, prefix=prefix)
    assert f"{prefix}specversion" not in structured.attributes
    assert structured.attributes[f"{prefix}time"] == event["time"]
    binary = to_message(event, mode="binary", prefix=prefix)
    assert binary.attributes[f"{prefix}specversion"] == "1.0"


def test_structured_message_of_an_older_version_with_specversion_still_decodes() -> None:
    event = make_event("job-old", 1)
    msg = to_message(event)
    attributes = {**msg.attributes, "ce-specversion": "1.0"}
    assert from_message(msg.body, attributes, STRUCTURED_CONTENT_TYPE) == event
    assert from_message(msg.body, attributes, None) == event


def test_amqp_timestamp_is_rfc3339() -> None:
    # azure-servicebus hands an AMQP timestamp as epoch milliseconds
    assert amqp_value("time", 1735787045678) == "2025-01-02T03:04:05.678Z"
    assert amqp_value("time", 1735787045000) == "2025-01-02T03:04:05Z"
    moment = datetime.datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.timezone.utc)
    assert amqp_value("time", moment) == "2025-01-02T03:04:05.678Z"
    assert amqp_value("time", "2025-01-02T03:04:05.678Z") == "2025-01-02T03:04:05.678Z"
    # an integer attribute that is not a Timestamp stays a number
    assert amqp_value("attempt", 1735787045678) == "1735787045678"
    with pytest.raises(DecodeMessageError, match="out of range"):
        amqp_value("time", 10**18)


def test_amqp_binary_uuid_and_strings() -> None:
    assert amqp_value("x", b"\xff\x00\x01") == "/wAB"  # binary: Base64
    assert amqp_value("id", b"job-1") == "job-1"  # SDKs hand AMQP strings as UTF-8 bytes
    assert amqp_value("id", uuid.UUID("12345678-1234-5678-1234-567812345678")) == "12345678-1234-5678-1234-567812345678"
    assert amqp_value("flag", True) == "true"
    assert amqp_properties({b"cloudEvents:time": 1735787045678, b"origin": b"x", "empty": None}) == {
        "cloudEvents:time": "2025-01-02T03:04:05.678Z", "origin": "x"}


def test_binary_message_with_native_amqp_types_decodes_to_the_event() -> None:
    event = make_event("job-native", 2)
    event["time"] = "2025-01-02T03:04:05.678Z"
    msg = to_message(event, mode="binary", prefix="cloudEvents:")
    native: dict[object, object] = {k.encode(): v.encode() for k, v in msg.attributes.items()}
    native[b"cloudEvents:time"] = 1735787045678
    assert from_message(msg.body, amqp_properties(native), msg.content_type) == event


_TRACE = {"traceparent": f"00-{'a' * 32}-{'b' * 16}-01", "tracestate": "k=v"}


def test_sequence_and_partitionkey_are_attributes_within_the_sqs_budget() -> None:
    event = make_event("job-s", 5, state="succeeded")
    msg = to_message(event, max_attributes=9)
    assert msg.attributes["ce-sequence"] == event["sequence"] == "01704067205000000.90"
    assert msg.attributes["ce-partitionkey"] == "job-s"
    # structured mode: no specversion ("On the wire"), so the filter attributes and both extensions fit
    assert len(msg.attributes) == 8 and "ce-specversion" not in msg.attributes


def test_structured_mode_gives_the_derived_extensions_last_claim() -> None:
    event = {**make_event("job-t", 1), **_TRACE}
    msg = to_message(event, max_attributes=8)
    assert msg.attributes["ce-traceparent"] == _TRACE["traceparent"]
    assert "ce-sequence" not in msg.attributes and "ce-partitionkey" not in msg.attributes
    # one slot more goes to an extension, the partition key first
    assert "ce-partitionkey" in to_message(event, max_attributes=9).attributes
    assert from_message(msg.body, msg.attributes, msg.content_type) == event  # the body has them


@pytest.mark.parametrize("slots", [9, 10, 64])
def test_binary_mode_recomputes_the_extensions_it_had_no_slot_for(slots: int) -> None:
    event = {**make_event("job-u", 2), **_TRACE}
    msg = to_message(event, mode="binary", max_attributes=slots)
    assert len(msg.attributes) <= slots
    assert ("ce-sequence" in msg.attributes) == (slots >= 11)
    assert ("ce-partitionkey" in msg.attributes) == (slots >= 10)
    assert from_message(msg.body, msg.attributes, msg.content_type) == event


def test_binary_mode_still_refuses_what_cannot_be_recomputed() -> None:
    with pytest.raises(MessageTooLargeError, match="attributes"):
        to_message({**make_event(), **_TRACE}, mode="binary", max_attributes=8)


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_content_type_attribute_takes_one_of_the_backends_slots(mode: str) -> None:
    """A backend without a content-type field (SQS, SNS, Pub/Sub) states its whole attribute limit; the
    binding gives ``content-type`` one of the slots, before any binding attribute."""
    event = {**make_event("job-ct", 3), **_TRACE}
    msg = to_message(event, mode=mode, max_attributes=12, content_type_attribute=True)
    assert len(msg.attributes) <= 12
    assert msg.attributes["content-type"] == msg.content_type
    assert msg.content_type == (STRUCTURED_CONTENT_TYPE if mode == "structured" else "application/json")
    without = to_message(event, mode=mode, max_attributes=11)
    assert {k: v for k, v in msg.attributes.items() if k != "content-type"} == without.attributes
    # read back by attribute alone, as a driver without a content-type field hands it over
    assert from_message(msg.body, msg.attributes) == event


def test_content_type_attribute_counts_against_a_tight_limit() -> None:
    msg = to_message(make_event(), max_attributes=5, content_type_attribute=True)
    assert sorted(msg.attributes) == ["ce-id", "ce-source", "ce-subject", "ce-type", "content-type"]
    with pytest.raises(MessageTooLargeError, match="at most 3"):
        to_message(make_event(), mode="binary", max_attributes=4, content_type_attribute=True)
