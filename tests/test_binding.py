"""The CloudEvents bindings: structured and binary, every attribute prefix, refusals."""

from __future__ import annotations

import orjson
import pytest
from batchbridge.core.binding import STRUCTURED_CONTENT_TYPE, from_message, to_message
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
    assert "ce-specversion" in msg.attributes
    assert from_message(msg.body, msg.attributes, None) == event


_TRACE = {"traceparent": f"00-{'a' * 32}-{'b' * 16}-01", "tracestate": "k=v"}


def test_sequence_and_partitionkey_are_attributes_within_the_sqs_budget() -> None:
    event = make_event("job-s", 5, state="succeeded")
    msg = to_message(event, max_attributes=9)
    assert msg.attributes["ce-sequence"] == event["sequence"] == "01704067205000000.90"
    assert msg.attributes["ce-partitionkey"] == "job-s"
    assert len(msg.attributes) == 9


def test_structured_mode_gives_the_derived_extensions_last_claim() -> None:
    event = {**make_event("job-t", 1), **_TRACE}
    msg = to_message(event, max_attributes=9)
    assert msg.attributes["ce-traceparent"] == _TRACE["traceparent"]
    assert "ce-sequence" not in msg.attributes and "ce-partitionkey" not in msg.attributes
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
