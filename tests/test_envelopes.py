from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from batchbridge.core import envelopes
from batchbridge.core.errors import (
    ConfigError,
    InputError,
    MalformedPayloadError,
    PayloadTooLargeError,
    UnrecognizedFormatError,
    UnsupportedEventError,
)
from batchbridge.core.normalizing import normalize
from vendor_payloads import (
    alibaba_job,
    aws_event,
    azure_records,
    b64,
    cmq_push,
    compact,
    gcp_message,
    mns_json,
    mns_xml,
    pubsub_data,
    pubsub_push,
    sample_bytes,
    tencent_element,
    tencent_message,
    validate_event,
)

NODE = sample_bytes("tencent-cmq-node-created.json")
ALIBABA = compact(alibaba_job("OnJobFinished"))


def ids(payload: Any, **kwargs: Any) -> list[str]:
    events = normalize(payload, **kwargs)
    for event in events:
        validate_event(event)
    return [event["id"] for event in events]


NODE_IDS = ids(NODE)
ALIBABA_IDS = ids(ALIBABA)


# --- each envelope unwraps to the same events ------------------------------------------------------------


def test_raw_json_of_any_form() -> None:
    assert ids(NODE.decode()) == NODE_IDS
    assert ids(json.loads(NODE)) == NODE_IDS
    assert ids(b"\xef\xbb\xbf  " + NODE + b"\n") == NODE_IDS  # BOM and whitespace


@pytest.mark.parametrize(
    "encode",
    [
        base64.b64encode,
        base64.urlsafe_b64encode,
        lambda d: base64.b64encode(d).rstrip(b"="),
        lambda d: base64.encodebytes(d),  # wrapped at 76 columns
        lambda d: base64.b64encode(base64.b64encode(d)),  # twice
    ],
)
def test_base64_bodies(encode: Any) -> None:
    assert ids(encode(NODE)) == NODE_IDS


@pytest.mark.parametrize("camel_case", [False, True])
def test_cmq_http_push_json(camel_case: bool) -> None:
    assert ids(compact(cmq_push(NODE.decode(), camel_case=camel_case))) == NODE_IDS
    # the console-style Base64 body inside the push
    assert ids(compact(cmq_push(b64(NODE), camel_case=camel_case))) == NODE_IDS


def test_cmq_sample_push_with_two_events() -> None:
    events = normalize(sample_bytes("tencent-cmq-http-push-job-failed.json"))
    assert len(events) == 2


def test_mns_xml_push() -> None:
    assert ids(mns_xml(ALIBABA.decode())) == ALIBABA_IDS
    # an MNS publisher may Base64-encode the message
    assert ids(mns_xml(b64(ALIBABA))) == ALIBABA_IDS


def test_mns_json_push() -> None:
    assert ids(compact(mns_json(ALIBABA.decode()))) == ALIBABA_IDS


def test_mns_simplified_push_is_the_message_itself() -> None:
    assert ids(ALIBABA) == ALIBABA_IDS


def test_mns_queue_message_xml() -> None:
    xml = f"<Message><MessageId>1</MessageId><MessageBody>{b64(ALIBABA)}</MessageBody></Message>".encode()
    assert ids(xml) == ALIBABA_IDS


def test_eventbridge_native_and_custom_bus() -> None:
    event = aws_event("RUNNING")
    native = ids(compact(event))
    assert len(native) == 1
    # a custom bus carrying a Tencent message as its detail
    custom = {"detail-type": "relay", "source": "com.example.relay", "detail": json.loads(NODE)}
    assert ids(compact(custom)) == NODE_IDS


def test_sns_notification() -> None:
    sns = {"Type": "Notification", "MessageId": "m", "TopicArn": "arn:aws:sns:us-east-1:1:t", "Message": NODE.decode()}
    assert ids(compact(sns)) == NODE_IDS
    sns["Type"] = "SubscriptionConfirmation"
    with pytest.raises(UnsupportedEventError):
        normalize(compact(sns))


def test_pubsub_push_and_pulled_gcp_notification_are_one_event() -> None:
    message = gcp_message("job", "RUNNING")
    pushed = ids(compact(pubsub_push(message)))
    assert ids(compact(message)) == pushed
    assert ids(compact({"ackId": "a1", "message": message})) == pushed


def test_pubsub_carrying_another_vendors_event() -> None:
    assert ids(compact(pubsub_push(pubsub_data(NODE)))) == NODE_IDS
    assert ids(compact(pubsub_data(NODE, origin="relay"))) == NODE_IDS


def test_azure_records_export() -> None:
    assert len(ids(compact(azure_records()))) == 2


def test_json_string_holding_a_payload() -> None:
    assert ids(json.dumps(NODE.decode()).encode()) == NODE_IDS
    assert ids(json.dumps(b64(NODE)).encode()) == NODE_IDS


def test_nested_envelopes_compose() -> None:
    inner = compact(cmq_push(b64(NODE)))
    outer = compact(pubsub_push(pubsub_data(b64(inner).encode())))
    assert ids(outer) == NODE_IDS


# --- forcing a provider ------------------------------------------------------------------------------------


def test_forced_provider_still_unwraps_envelopes() -> None:
    assert ids(compact(cmq_push(b64(NODE))), provider="tencent") == NODE_IDS
    assert ids(mns_xml(ALIBABA.decode()), provider="ALIBABA") == ALIBABA_IDS


def test_forced_provider_reads_an_event_autodetection_would_not_claim() -> None:
    element = tencent_element("JOB_RUNNING")
    element.pop("Batch")
    element["Batch"] = None  # no Batch object: detection does not claim it, the forced vendor judges it
    with pytest.raises(UnrecognizedFormatError):
        normalize(compact(element))
    with pytest.raises(MalformedPayloadError) as info:
        normalize(compact(element), provider="tencent")
    assert info.value.provider == "tencent"


def test_forced_provider_refuses_another_vendors_event() -> None:
    with pytest.raises(InputError):
        normalize(ALIBABA, provider="aws")
    with pytest.raises(InputError):
        normalize(NODE, provider="alibaba")


def test_unknown_provider_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        normalize(NODE, provider="oracle")


# --- refusing what is not recognised -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"hello world",
        b"just some text",
        b"[1, 2, 3]",
        b"[]",
        b"42",
        b'"plain string"',
        b'{"hello": "world"}',
        b"{}",
        b"<html><body>hi</body></html>",
        b64(b"\x00\x01\x02\x03binary").encode(),
        b"null",
        compact({"message": {"attributes": {"a": "b"}}, "subscription": "s"}),
    ],
)
def test_unrecognised_payloads(payload: bytes) -> None:
    with pytest.raises(UnrecognizedFormatError):
        normalize(payload)


def test_unrecognised_layer_is_located() -> None:
    with pytest.raises(UnrecognizedFormatError) as info:
        normalize(compact(cmq_push("test message")))
    assert info.value.where == "$.msgBody"


def test_malformed_inner_event_is_located_through_layers() -> None:
    element = tencent_element("JOB_FAILED")
    del element["Batch"]["JobId"]
    payload = compact(cmq_push(b64(compact(tencent_message(element)))))
    with pytest.raises(MalformedPayloadError) as info:
        normalize(payload)
    assert info.value.where == "$.msgBody / base64 / $.Events[0]"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"   \n",
        b'{"Events": [',
        b"\xff\xfe{}",
        b'{"Events": [{"EventName": "JOB_RUNNING", "Batch": {"JobId": "\xff"}}]}',
        b"<Notification><Message>",
        b"eyJ",  # truncated Base64
    ],
)
def test_broken_payloads_are_malformed_or_unrecognised(payload: bytes) -> None:
    with pytest.raises((MalformedPayloadError, UnrecognizedFormatError)):
        normalize(payload)


def test_xml_entity_expansion_is_refused() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
        b"<Notification><MessageId>1</MessageId><Message>&lol2;</Message></Notification>"
    )
    with pytest.raises(MalformedPayloadError):
        normalize(bomb)


def test_xml_external_entities_are_refused() -> None:
    xxe = (
        b'<?xml version="1.0"?><!DOCTYPE n [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b"<Notification><Message>&x;</Message></Notification>"
    )
    with pytest.raises(MalformedPayloadError):
        normalize(xxe)


def test_deeply_nested_json_never_raises_recursion_error() -> None:
    for depth in (70, 1000, 100_000):
        with pytest.raises(MalformedPayloadError):
            normalize(b"[" * depth + b"]" * depth)
        nested: Any = json.loads(NODE)
        holder = nested["Events"][0]
        for _ in range(min(depth, 200)):
            holder["x"] = {}
            holder = holder["x"]
        with pytest.raises(MalformedPayloadError):
            normalize(compact(nested))


def test_deeply_nested_mapping_input_is_malformed() -> None:
    nested: dict[str, Any] = json.loads(NODE)
    holder = nested
    for _ in range(5000):
        holder["x"] = {}
        holder = holder["x"]
    with pytest.raises(MalformedPayloadError):
        normalize(nested)


def test_cyclic_or_non_json_mapping_input_is_malformed() -> None:
    cyclic: dict[str, Any] = json.loads(NODE)
    cyclic["self"] = cyclic
    with pytest.raises(MalformedPayloadError):
        normalize(cyclic)
    with pytest.raises(MalformedPayloadError):
        normalize({**json.loads(NODE), "x": object()})
    with pytest.raises(MalformedPayloadError):
        normalize({1: "non-string key"})  # type: ignore[dict-item]


def test_lone_surrogates_in_text_input_are_malformed() -> None:
    with pytest.raises(MalformedPayloadError):
        normalize(NODE.decode().replace("batch-env", "\ud800"))


def test_too_many_envelope_layers_are_refused() -> None:
    payload = NODE
    for _ in range(envelopes.MAX_UNWRAP_DEPTH + 2):
        payload = b64(payload).encode()
    with pytest.raises(MalformedPayloadError):
        normalize(payload)


def test_payload_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envelopes, "MAX_PAYLOAD_BYTES", 1024)
    with pytest.raises(PayloadTooLargeError):
        normalize(NODE + b" " * 2000)
    with pytest.raises(PayloadTooLargeError):
        normalize((NODE + b" " * 2000).decode())
    with pytest.raises(PayloadTooLargeError):
        normalize({**json.loads(NODE), "pad": "x" * 2000})


def test_real_size_limit_is_enforced() -> None:
    with pytest.raises(PayloadTooLargeError):
        normalize(b" " * (envelopes.MAX_PAYLOAD_BYTES + 1))


def test_unsupported_input_type() -> None:
    with pytest.raises(UnrecognizedFormatError):
        normalize(12345)  # type: ignore[arg-type]


# --- AWS Lambda event shapes ------------------------------------------------------------------------------

AWS_BARE = aws_event("RUNNING")
AWS_IDS = ids(compact(AWS_BARE))
TOPIC = "arn:aws:sns:us-east-1:123456789012:batch-events"


def sqs_record(body: str, n: int = 1) -> dict[str, Any]:
    """One record of Lambda's SQS event, in the shape Lambda's event source mapping delivers."""
    return {
        "messageId": f"059f36b4-87a3-44ab-83d2-66197516123{n}",
        "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a...",
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": "1545082649183",
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": "1545082649185",
        },
        "messageAttributes": {},
        "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:batch-queue",
        "awsRegion": "us-east-1",
    }


def sns_notification(message: str) -> dict[str, Any]:
    return {
        "Type": "Notification",
        "MessageId": "95df01b4-ee98-5cb9-9903-4c221d41eb5e",
        "TopicArn": TOPIC,
        "Subject": None,
        "Message": message,
        "Timestamp": "2022-01-11T23:45:32.000Z",
        "SignatureVersion": "1",
        "Signature": "tcc6faL2yUC6dgZdmrwh1Y4cGa/ebXEkAi6RibDsvpi+tE/1+82j...65r==",
        "SigningCertUrl": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-ac565b8b1a6c5d002d285f9598aa1d9b.pem",
        "UnsubscribeUrl": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=" + TOPIC + ":1",
        "MessageAttributes": {"origin": {"Type": "String", "Value": "batch"}},
    }


def sns_record(message: str) -> dict[str, Any]:
    """One record of Lambda's SNS event."""
    return {
        "EventVersion": "1.0",
        "EventSubscriptionArn": f"{TOPIC}:2bcfbf39-05c3-41de-beaa-fcfcc21c8f55",
        "EventSource": "aws:sns",
        "Sns": sns_notification(message),
    }


def test_lambda_sqs_event_of_eventbridge_events() -> None:
    child = compact(aws_event("FAILED", jobId="7b5d3c40:3")).decode()
    event = {"Records": [sqs_record(compact(AWS_BARE).decode(), 1), sqs_record(child, 2)]}
    assert ids(compact(event)) == AWS_IDS + ids(child)


def test_lambda_sns_event() -> None:
    assert ids(compact({"Records": [sns_record(compact(AWS_BARE).decode())]})) == AWS_IDS


def test_lambda_sqs_event_of_sns_notifications() -> None:
    """EventBridge -> SNS -> SQS (no raw delivery) -> Lambda: three layers, one event."""
    body = compact(sns_notification(compact(AWS_BARE).decode())).decode()
    assert ids(compact({"Records": [sqs_record(body)]})) == AWS_IDS


def test_lambda_records_carry_any_vendor_and_locate_errors() -> None:
    assert ids(compact({"Records": [sqs_record(NODE.decode())]})) == NODE_IDS
    broken = {"Records": [sqs_record(compact(AWS_BARE).decode()), sqs_record("{not json", 2)]}
    with pytest.raises(MalformedPayloadError) as info:
        normalize(compact(broken))
    assert info.value.where == "$.Records[1].body"


@pytest.mark.parametrize(
    "records",
    [
        [{"eventSource": "aws:sqs", "messageId": "1"}],
        [{"EventSource": "aws:sns", "Sns": "not an object"}],
    ],
)
def test_broken_lambda_records_are_malformed(records: list[dict[str, Any]]) -> None:
    with pytest.raises(MalformedPayloadError):
        normalize(compact({"Records": records}))


def test_records_of_other_event_sources_are_unrecognised() -> None:
    s3 = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {}}]}
    with pytest.raises(UnrecognizedFormatError):
        normalize(compact(s3))


def test_sns_notification_parsing_is_the_one_place_for_every_reader() -> None:
    body = compact(sns_notification(compact(AWS_BARE).decode()))
    parsed = envelopes.parse_sns_notification(body)
    assert parsed is not None
    assert parsed.message == compact(AWS_BARE).decode()
    assert parsed.attributes == {"origin": "batch"}
    assert parsed.meta["TopicArn"] == TOPIC
    assert envelopes.parse_sns_notification(body.decode()) == parsed
    for other in (compact(AWS_BARE), b"{not json", b'{"Type": "Notification"}', b"plain text"):
        assert envelopes.parse_sns_notification(other) is None
    confirmation = compact({**sns_notification("x"), "Type": "SubscriptionConfirmation"})
    assert envelopes.parse_sns_notification(confirmation) is None
