"""The contract's AMQP wire rules on Service Bus (the stand-in broker, the unmodified SDK): native
AMQP property types decoded as the binding maps them, either prefix read, ``?amqp_prefix=colon``
written, and what ``batchbridge consume`` prints for a message another producer sent."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from batchbridge.core.backends import open_publisher, open_subscriber
from batchbridge.core.registry import options_table
from batchbridge.core.sequence import sequence_for
from conformance import drain, make_event
from servicebus_broker import ServiceBusEnv, servicebus_broker  # noqa: F401  (the session fixture)

pytest.importorskip("azure.servicebus")
from azure.servicebus import ServiceBusClient, ServiceBusMessage

CLI = str(Path(sys.executable).parent / "batchbridge")
TIME = datetime.datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.timezone.utc)


def send_plain(env: ServiceBusEnv, queue: str, message: Any) -> None:
    with ServiceBusClient.from_connection_string(env.connection_string) as client, \
            client.get_queue_sender(queue) as sender:
        sender.send_messages(message)


def consume(env: ServiceBusEnv, queue: str, want: int) -> list[dict[str, Any]]:
    done = subprocess.run([CLI, "consume", f"servicebus:///{queue}", "--max", str(want), "--idle", "10"],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "SERVICEBUS_CONNECTION_STRING": env.connection_string})
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def binary_message(event: dict[str, Any], prefix: str, **native: Any) -> Any:
    names = ("specversion", "id", "source", "type", "subject", "time", "dataschema")
    properties: dict[str | bytes, Any] = {f"{prefix}{k}": event[k] for k in names}
    properties.update({f"{prefix}{k}": v for k, v in native.items()})
    return ServiceBusMessage(body=orjson.dumps(event["data"]), content_type="application/json",
                             application_properties=properties)


@pytest.mark.parametrize("prefix", ["cloudEvents_", "cloudEvents:"])
def test_native_amqp_timestamp_comes_out_of_consume_as_rfc3339(servicebus_broker: ServiceBusEnv,  # noqa: F811
                                                              prefix: str) -> None:
    """A datetime application property is an AMQP ``timestamp`` on the wire (the SDK decodes it to
    epoch milliseconds on the way back); ``consume`` prints the event with ``time`` in RFC 3339."""
    queue = servicebus_broker.queue()
    event = make_event("job-native-time", 1)
    send_plain(servicebus_broker, queue, binary_message(event, prefix, time=TIME))
    [got] = consume(servicebus_broker, queue, 1)
    assert got["time"] == "2025-01-02T03:04:05.678Z"
    # the sequence extension follows the time it is derived from
    moved = {**event, "time": "2025-01-02T03:04:05.678Z"}
    assert got == {**moved, "sequence": sequence_for(moved)}


def send_proton(env: ServiceBusEnv, queue: str, event: dict[str, Any], properties: dict[str, Any]) -> None:
    """Send with python-qpid-proton, an AMQP client of its own: unlike azure-servicebus (which turns
    bytes into strings before sending) it writes binary, uuid and timestamp values in their AMQP types."""
    from proton import Message
    from proton.utils import BlockingConnection

    host_port = env.connection_string.split("sb://", 1)[1].split(";", 1)[0].rstrip("/")
    connection = BlockingConnection(f"amqp://{host_port}", allowed_mechs="ANONYMOUS", timeout=10)
    try:
        sender = connection.create_sender(queue)
        sender.send(Message(body=orjson.dumps(event["data"]), inferred=True, content_type="application/json",
                            properties=properties))
    finally:
        connection.close()


def test_native_uuid_binary_and_timestamp_properties(servicebus_broker: ServiceBusEnv) -> None:  # noqa: F811
    from proton import timestamp

    queue = servicebus_broker.queue()
    event = make_event("job-native-types", 2)
    ident = uuid.UUID(event["id"])
    names = ("specversion", "source", "type", "subject", "dataschema")
    properties: dict[str, Any] = {f"cloudEvents:{k}": event[k] for k in names}
    properties.update({"cloudEvents:id": ident, "cloudEvents:traceparent": b"\x00\xff\x10",
                       "cloudEvents:time": timestamp(int(TIME.timestamp() * 1000))})
    send_proton(servicebus_broker, queue, event, properties)
    with open_subscriber(servicebus_broker.uri(queue)) as sub:
        [got] = drain(sub, 1)
    assert got.error is None and got.event is not None
    assert got.event["id"] == str(ident)  # the uuid's text, as the binding maps it
    assert got.event["traceparent"] == "AP8Q"  # binary: Base64
    assert got.event["time"] == "2025-01-02T03:04:05.678Z"
    assert got.event["data"] == event["data"]


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_colon_prefix_option_writes_the_amqp_bindings_own_names(servicebus_broker: ServiceBusEnv,  # noqa: F811
                                                                mode: str) -> None:
    queue = servicebus_broker.queue()
    event = make_event("job-colon-out", 3)
    with open_publisher(servicebus_broker.uri(queue, amqp_prefix="colon", mode=mode)) as pub:
        assert pub.publish_one(event).ok
    with ServiceBusClient.from_connection_string(servicebus_broker.connection_string) as client, \
            client.get_queue_receiver(queue, max_wait_time=5) as receiver:
        [msg] = receiver.receive_messages(max_message_count=1, max_wait_time=5)
        receiver.complete_message(msg)
    props = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
             for k, v in (msg.application_properties or {}).items()}
    assert props["cloudEvents:id"] == event["id"] and props["cloudEvents:type"] == event["type"]
    assert not [k for k in props if k.startswith("cloudEvents_")]
    assert ("cloudEvents:specversion" in props) == (mode == "binary")
    # and what batchbridge itself reads back is the event
    with open_publisher(servicebus_broker.uri(queue, amqp_prefix="colon", mode=mode)) as pub:
        assert pub.publish_one(event).ok
    assert consume(servicebus_broker, queue, 1) == [event]


def test_default_prefix_is_underscore_and_the_option_is_listed() -> None:
    table = options_table()
    row = next(line for line in table.splitlines() if "`amqp_prefix`" in line)
    assert "`underscore`" in row and "colon" in row
