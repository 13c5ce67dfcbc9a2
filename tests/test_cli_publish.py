"""``batchbridge publish samples --to URI`` as a user runs it (the installed console script, in a
subprocess), read back with each cloud's *plain* SDK: the same CloudEvents ``normalize`` prints, with
the binding's attributes, FIFO group ids / ordering keys, and de-duplication by id."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from aws_servers import AwsServer
from batchbridge.core.event import ordering_key
from pubsub_servers import PubSubServer, admin
from servicebus_broker import ServiceBusEnv, servicebus_broker  # noqa: F401  (the session fixture)

CLI = str(Path(sys.executable).parent / "batchbridge")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, check=False)


@pytest.fixture(scope="module")
def expected() -> list[dict[str, Any]]:
    done = cli("normalize", "samples")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(events) >= 16
    return events


def by_id(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in events}


def published(done: subprocess.CompletedProcess[str], count: int) -> None:
    assert done.returncode == 0, done.stderr
    assert f"published {count}, failed 0" in done.stderr


def test_sqs_plain_boto3_reads_what_normalize_prints(moto_server: AwsServer,
                                                    expected: list[dict[str, Any]]) -> None:
    queue = moto_server.queue()
    published(cli("publish", "samples", "--to", moto_server.uri("sqs", queue.name)), len(expected))
    msgs = moto_server.receive_all(queue, len(expected))
    bodies = [json.loads(m["Body"]) for m in msgs]
    assert sorted(json.dumps(b, sort_keys=True) for b in bodies) == sorted(
        json.dumps(e, sort_keys=True) for e in expected)
    for m, body in zip(msgs, bodies, strict=True):
        attrs = {k: v["StringValue"] for k, v in m["MessageAttributes"].items()}
        for name in ("id", "type", "source", "subject"):
            assert attrs[f"ce-{name}"] == body[name]


def test_sqs_fifo_groups_by_resource_and_delivers_each_event_once(moto_server: AwsServer,
                                                                  expected: list[dict[str, Any]]) -> None:
    queue = moto_server.queue(fifo=True)
    uri = moto_server.uri("sqs", queue.name)
    published(cli("publish", "samples", "--to", uri), len(expected))
    published(cli("publish", "samples", "--to", uri), len(expected))
    msgs = moto_server.receive_all(queue, len(expected) * 2, deadline=8)
    ids = [json.loads(m["Body"])["id"] for m in msgs]
    # Azure's TaskFailEvent and TaskCompleteEvent report one transition: one id, one delivery
    assert sorted(ids) == sorted(by_id(expected))
    for m in msgs:
        event = json.loads(m["Body"])
        assert m["Attributes"]["MessageGroupId"] == ordering_key(event)
        assert m["Attributes"]["MessageDeduplicationId"] == event["id"]


def test_pubsub_plain_client_reads_what_normalize_prints(pubsub_emulator: PubSubServer,
                                                         expected: list[dict[str, Any]]) -> None:
    project, name = "batchbridge-cli", f"t-{uuid.uuid4().hex[:8]}"
    a = admin(pubsub_emulator.host, project)
    try:
        a.create_topic(name)
        a.create_subscription(name, name, enable_message_ordering=True)
        done = cli("publish", "samples", "--to", f"pubsub://{project}/{name}?ordering=true",
                   env={"PUBSUB_EMULATOR_HOST": pubsub_emulator.host})
        published(done, len(expected))
        got = a.pull(name, len(expected))
    finally:
        a.delete(topic=name, subscription=name)
        a.close()
    assert len(got) == len(expected)
    events = [json.loads(r.message.data) for r in got]
    assert sorted(json.dumps(e, sort_keys=True) for e in events) == sorted(
        json.dumps(e, sort_keys=True) for e in expected)
    for r, event in zip(got, events, strict=True):
        attrs = dict(r.message.attributes)
        assert attrs["content-type"] == "application/cloudevents+json"
        for attr in ("id", "type", "source", "subject"):
            assert attrs[f"ce-{attr}"] == event[attr]
        assert r.message.ordering_key == ordering_key(event)


def test_servicebus_plain_sdk_reads_what_normalize_prints(servicebus_broker: ServiceBusEnv,  # noqa: F811
                                                          expected: list[dict[str, Any]]) -> None:
    from azure.servicebus import ServiceBusClient

    queue = servicebus_broker.queue()
    done = cli("publish", "samples", "--to", f"servicebus:///{queue}",
               env={"SERVICEBUS_CONNECTION_STRING": servicebus_broker.connection_string})
    published(done, len(expected))
    received: list[Any] = []
    with ServiceBusClient.from_connection_string(servicebus_broker.connection_string) as client, \
            client.get_queue_receiver(queue, max_wait_time=2) as receiver:
        while len(received) < len(expected):
            batch = receiver.receive_messages(max_message_count=50, max_wait_time=2)
            if not batch:
                break
            for m in batch:
                receiver.complete_message(m)
            received += [(m, b"".join(m.body)) for m in batch]
    assert len(received) == len(expected)
    events = [json.loads(body) for _, body in received]
    assert sorted(json.dumps(e, sort_keys=True) for e in events) == sorted(
        json.dumps(e, sort_keys=True) for e in expected)
    for (m, _), event in zip(received, events, strict=True):
        props = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                 for k, v in (m.application_properties or {}).items()}
        for attr in ("id", "type", "source", "subject"):
            assert props[f"cloudEvents_{attr}"] == event[attr]
        assert m.message_id == event["id"]
        assert m.subject == event["type"]
        assert m.content_type == "application/cloudevents+json"
