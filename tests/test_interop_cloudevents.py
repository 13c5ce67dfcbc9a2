"""Readers nobody here wrote: the CloudEvents Python SDK (``cloudevents``) and Azure's
``azure.core.messaging.CloudEvent`` decode what batchbridge publishes on every backend, in both
modes, to the event ``normalize`` printed; and events the CloudEvents SDK writes, sent with each
cloud's plain SDK, come out of ``batchbridge consume`` as the same event.

Each message is received with the cloud's own SDK and handed to the reader the way its binding
says: the ``ce-`` attribute bindings (SNS/SQS, Pub/Sub, files) through the SDK's HTTP reader, whose
binary-mode test is the presence of ``ce-specversion``; Service Bus through the SDK's AMQP reader.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aws_servers import AwsServer
from batchbridge.core import normalize, open_publisher
from pubsub_servers import PubSubServer, admin
from servicebus_broker import ServiceBusEnv, servicebus_broker  # noqa: F401  (the session fixture)

ce_http = pytest.importorskip("cloudevents.v1.http")
from azure.core.messaging import CloudEvent as AzureCloudEvent  # noqa: E402
from cloudevents.core.bindings import amqp as ce_amqp  # noqa: E402
from cloudevents.core.bindings import http as ce_core_http  # noqa: E402
from cloudevents.core.v1.event import CloudEvent as CoreCloudEvent  # noqa: E402
from cloudevents.v1.conversion import to_binary, to_structured  # noqa: E402
from dateutil.parser import isoparse  # noqa: E402

CLI = str(Path(sys.executable).parent / "batchbridge")
SAMPLES = Path(__file__).resolve().parent.parent / "core" / "samples"
#: one event per vendor shape, Azure's with seven fractional digits in its time
EVENTS: list[dict[str, Any]] = [
    event
    for name in ("aws-eventbridge-job-succeeded.json", "azure-records-task-scheduling-events.json",
                 "tencent-cmq-node-created.json")
    for event in normalize((SAMPLES / name).read_bytes())
]
CONTEXT = ("specversion", "id", "source", "type", "subject", "datacontenttype", "dataschema")
MODES = ("structured", "binary")


def attributes_of(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != "data"}


# --- what each independent reader makes of one message ------------------------------------------------


def read_with_sdk_http(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The SDK's ``ce-`` reader (binary mode when ``ce-specversion`` and the other required headers
    are there), checked against its newer core reader, given the mode by the content type as the
    bindings say (that reader's own guess takes any ``ce-`` header for binary mode, and the contract
    has every structured message carry ``ce-id``, ``ce-type``, ... for broker-side filters)."""
    got = ce_http.from_http(headers, body)
    event = {**got.get_attributes(), "data": got.get_data()}
    message = ce_core_http.HTTPMessage(headers=headers, body=body)
    structured = headers.get("content-type", "").startswith("application/cloudevents")
    core = (ce_core_http.from_structured_event if structured else ce_core_http.from_binary_event)(message)
    core_event = {**core.get_attributes(), "data": core.get_data()}
    assert isoparse(event["time"]) == core_event.pop("time")
    assert {k: v for k, v in event.items() if k != "time"} == core_event
    return event


def read_with_sdk_amqp(content_type: str | None, properties: dict[str, Any], body: bytes) -> dict[str, Any]:
    got = ce_amqp.from_amqp_event(ce_amqp.AMQPMessage(
        properties={"content-type": content_type}, application_properties=properties, application_data=body))
    attributes = dict(got.get_attributes())
    return {**attributes, "data": got.get_data()}


def read_with_azure(body: bytes, attributes: dict[str, str], prefix: str) -> AzureCloudEvent[Any]:
    """``azure.core`` reads the JSON format only; a binary message is the attributes plus the body
    as data, which is all a consumer on azure.core has to go on."""
    if not any(k.startswith(prefix) for k in attributes) or f"{prefix}specversion" not in attributes:
        return AzureCloudEvent.from_dict(json.loads(body))
    context = {k[len(prefix):]: v for k, v in attributes.items() if k.startswith(prefix)}
    return AzureCloudEvent.from_dict({**context, "datacontenttype": attributes.get("content-type"),
                                      "data": json.loads(body)})


def assert_same_event(got: dict[str, Any], event: dict[str, Any]) -> None:
    time = got.pop("time", None)
    if isinstance(time, datetime.datetime):
        assert time == isoparse(event["time"])
    else:
        assert time == event["time"]
    assert got == {k: v for k, v in event.items() if k != "time"}


def assert_azure_reads(got: AzureCloudEvent[Any], event: dict[str, Any]) -> None:
    assert (got.id, got.source, got.type, got.subject) == (event["id"], event["source"], event["type"],
                                                          event["subject"])
    assert (got.specversion, got.dataschema, got.datacontenttype) == ("1.0", event["dataschema"],
                                                                      event["datacontenttype"])
    assert got.time == isoparse(event["time"])
    assert got.data == event["data"]
    # the contract's extensions (v1.1) and nothing else
    assert got.extensions == {k: event[k] for k in ("sequence", "partitionkey") if k in event}


# --- batchbridge publishes, the independent readers decode --------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_sqs_messages_read_by_both_sdks(moto_server: AwsServer, mode: str) -> None:
    queue = moto_server.queue()
    with open_publisher(moto_server.uri("sqs", queue.name, mode=mode)) as pub:
        assert all(r.ok for r in pub.publish(EVENTS))
    messages = moto_server.receive_all(queue, len(EVENTS))
    by_id = {e["id"]: e for e in EVENTS}
    seen = set()
    for m in messages:
        headers = {k: v["StringValue"] for k, v in m["MessageAttributes"].items()}
        got = read_with_sdk_http(headers, m["Body"].encode())
        event = by_id[got["id"]]
        assert_same_event(got, event)
        assert_azure_reads(read_with_azure(m["Body"].encode(), headers, "ce-"), event)
        seen.add(event["id"])
    assert seen == set(by_id)


@pytest.mark.parametrize("mode", MODES)
def test_sns_to_sqs_raw_delivery_read_by_both_sdks(moto_server: AwsServer, mode: str) -> None:
    topic, queue = moto_server.topic(), moto_server.queue()
    moto_server.subscribe(topic, queue, raw=True)
    event = EVENTS[0]
    with open_publisher(moto_server.uri("sns", topic.name, mode=mode)) as pub:
        assert pub.publish_one(event).ok
    [m] = moto_server.receive_all(queue, 1)
    headers = {k: v["StringValue"] for k, v in m["MessageAttributes"].items()}
    assert_same_event(read_with_sdk_http(headers, m["Body"].encode()), event)
    assert_azure_reads(read_with_azure(m["Body"].encode(), headers, "ce-"), event)


@pytest.fixture
def pubsub_topic(pubsub_emulator: PubSubServer) -> Iterator[tuple[Any, str, str]]:
    project, name = "batchbridge-interop", f"t-{uuid.uuid4().hex[:8]}"
    a = admin(pubsub_emulator.host, project)
    a.create_topic(name)
    a.create_subscription(name, name)
    try:
        yield a, project, name
    finally:
        a.delete(topic=name, subscription=name)
        a.close()


@pytest.mark.parametrize("mode", MODES)
def test_pubsub_messages_read_by_both_sdks(pubsub_emulator: PubSubServer, pubsub_topic: tuple[Any, str, str],
                                           mode: str) -> None:
    a, project, name = pubsub_topic
    with open_publisher(f"pubsub://{project}/{name}?emulator_host={pubsub_emulator.host}&mode={mode}") as pub:
        assert all(r.ok for r in pub.publish(EVENTS))
    received = a.pull(name, len(EVENTS))
    assert len(received) == len(EVENTS)
    by_id = {e["id"]: e for e in EVENTS}
    for r in received:
        headers = dict(r.message.attributes)
        got = read_with_sdk_http(headers, r.message.data)
        event = by_id.pop(got["id"])
        assert_same_event(got, event)
        assert_azure_reads(read_with_azure(r.message.data, headers, "ce-"), event)
    assert not by_id


@pytest.mark.parametrize("prefix", ["underscore", "colon"])
@pytest.mark.parametrize("mode", MODES)
def test_servicebus_messages_read_by_both_sdks(servicebus_broker: ServiceBusEnv, mode: str,  # noqa: F811
                                               prefix: str) -> None:
    from azure.servicebus import ServiceBusClient

    queue = servicebus_broker.queue()
    with open_publisher(servicebus_broker.uri(queue, mode=mode, amqp_prefix=prefix)) as pub:
        assert all(r.ok for r in pub.publish(EVENTS))
    with ServiceBusClient.from_connection_string(servicebus_broker.connection_string) as client, \
            client.get_queue_receiver(queue, max_wait_time=5) as receiver:
        messages: list[Any] = []
        while len(messages) < len(EVENTS):
            batch = receiver.receive_messages(max_message_count=10, max_wait_time=5)
            assert batch, "messages missing"
            for m in batch:
                receiver.complete_message(m)
            messages += batch
    by_id = {e["id"]: e for e in EVENTS}
    for m in messages:
        # azure-servicebus hands property names and string values as UTF-8 bytes
        properties = {k.decode(): (v.decode() if isinstance(v, bytes) else v)
                      for k, v in (m.application_properties or {}).items()}
        body = b"".join(m.body)
        got = read_with_sdk_amqp(m.content_type, properties, body)
        event = by_id.pop(got["id"])
        assert_same_event(got, event)
        assert_azure_reads(read_with_azure(body, {**properties, "content-type": m.content_type},
                                           "cloudEvents:" if prefix == "colon" else "cloudEvents_"), event)
    assert not by_id


def test_file_lines_read_by_both_sdks(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with open_publisher(f"file://{path}") as pub:
        assert all(r.ok for r in pub.publish(EVENTS))
    lines = path.read_bytes().splitlines()
    assert len(lines) == len(EVENTS)
    for line, event in zip(lines, EVENTS, strict=True):
        assert_same_event(read_with_sdk_http({"content-type": "application/cloudevents+json"}, line), event)
        assert_azure_reads(AzureCloudEvent.from_json(line), event)


# --- the CloudEvents SDK writes, the plain cloud SDKs send, batchbridge consume reads ------------------


def consume(uri: str, want: int, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    done = subprocess.run([CLI, "consume", uri, "--max", str(want), "--idle", "10"], capture_output=True,
                          text=True, timeout=120, check=False, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def sdk_event(event: dict[str, Any]) -> Any:
    return ce_http.CloudEvent(attributes_of(event), event["data"])


def sdk_written(event: dict[str, Any], mode: str) -> tuple[dict[str, str], bytes]:
    convert: Callable[[Any], tuple[dict[str, str], bytes]] = to_binary if mode == "binary" else to_structured
    return convert(sdk_event(event))


def assert_consumed(got: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    by_id = {e["id"]: e for e in events}
    assert sorted(e["id"] for e in got) == sorted(by_id)
    for e in got:
        assert_same_event(dict(e), by_id[e["id"]])


@pytest.mark.parametrize("mode", MODES)
def test_sdk_events_sent_with_boto3_are_consumed(moto_server: AwsServer, mode: str) -> None:
    queue = moto_server.queue()
    sqs = moto_server.client("sqs")
    for event in EVENTS:
        headers, body = sdk_written(event, mode)
        sqs.send_message(QueueUrl=queue.url, MessageBody=body.decode(), MessageAttributes={
            k: {"DataType": "String", "StringValue": v} for k, v in headers.items()})
    assert_consumed(consume(moto_server.uri("sqs", queue.name), len(EVENTS)), EVENTS)


@pytest.mark.parametrize("mode", MODES)
def test_sdk_events_sent_with_google_cloud_pubsub_are_consumed(pubsub_emulator: PubSubServer,
                                                               pubsub_topic: tuple[Any, str, str], mode: str) -> None:
    a, project, name = pubsub_topic
    for event in EVENTS:
        headers, body = sdk_written(event, mode)
        a.publisher.publish(topic=a.topic(name), messages=[{"data": body, "attributes": headers}],
                            retry=None, timeout=10)
    got = consume(f"pubsub://{project}/subscriptions/{name}?emulator_host={pubsub_emulator.host}", len(EVENTS))
    assert_consumed(got, EVENTS)


@pytest.mark.parametrize("mode", MODES)
def test_sdk_events_sent_with_azure_servicebus_are_consumed(servicebus_broker: ServiceBusEnv,  # noqa: F811
                                                            mode: str) -> None:
    """The SDK's AMQP binding writes ``time`` as an AMQP timestamp in binary mode, and with
    microseconds in structured mode: both come back as the same instant."""
    from azure.servicebus import ServiceBusClient, ServiceBusMessage

    queue = servicebus_broker.queue()
    with ServiceBusClient.from_connection_string(servicebus_broker.connection_string) as client, \
            client.get_queue_sender(queue) as sender:
        for event in EVENTS:
            attributes = attributes_of(event)
            attributes["time"] = isoparse(event["time"])
            ce = CoreCloudEvent(attributes=attributes, data=event["data"])
            message = ce_amqp.to_binary_event(ce) if mode == "binary" else ce_amqp.to_structured_event(ce)
            properties: dict[str | bytes, Any] = {k: v for k, v in message.application_properties.items()}
            if "cloudEvents_time" in properties:
                # azure-servicebus writes a Python int as an AMQP int (32 bits), which the SDK's epoch
                # milliseconds overflow; as a datetime it goes out as the AMQP binding's native timestamp
                properties["cloudEvents_time"] = datetime.datetime.fromtimestamp(
                    properties["cloudEvents_time"] / 1000, tz=datetime.timezone.utc)
            sender.send_messages(ServiceBusMessage(body=message.application_data,
                                                   content_type=message.properties["content-type"],
                                                   application_properties=properties or None))
    got = consume(f"servicebus:///{queue}", len(EVENTS), env={
        "SERVICEBUS_CONNECTION_STRING": servicebus_broker.connection_string})
    by_id = {e["id"]: e for e in EVENTS}
    assert sorted(e["id"] for e in got) == sorted(by_id)
    for e in got:
        event = by_id[e["id"]]
        # AMQP timestamps and the SDK's own formatting keep milliseconds; the instant is the event's
        assert abs(isoparse(e.pop("time")) - isoparse(event["time"])) < datetime.timedelta(milliseconds=1)
        assert e == {k: v for k, v in event.items() if k != "time"}
        assert orjson.dumps(e["data"]) == orjson.dumps(event["data"])
