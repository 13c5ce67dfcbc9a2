"""The Google Cloud Functions / Cloud Run handlers, invoked with a Pub/Sub push request (a real Flask
request, as functions-framework passes) and a ``messagePublished`` CloudEvent carrying Google Cloud
Batch notifications, publishing to the Pub/Sub emulator."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from batchbridge.contrib.gcp_functions import MESSAGE_PUBLISHED, make_cloudevent_handler, make_push_handler
from batchbridge.core import BackendError, ConfigError, normalize, open_publisher, open_subscriber
from conformance import drain, make_trusted_event
from pubsub_servers import Admin, PubSubServer, admin, pubsub_emulator  # noqa: F401  (the fixture)

flask = pytest.importorskip("flask")

SAMPLES = Path(__file__).resolve().parent.parent / "core" / "samples"
PUSH_JOB = (SAMPLES / "gcp-pubsub-push-job-succeeded.json").read_bytes()
PUSH_TASK = (SAMPLES / "gcp-pubsub-push-task-failed.json").read_bytes()
PROJECT = "batchbridge-contrib"


class Topic:
    def __init__(self, clients: Admin, server: PubSubServer) -> None:
        suffix = uuid.uuid4().hex[:10]
        self.clients, self.topic, self.sub = clients, f"gcf-{suffix}", f"gcf-{suffix}-sub"
        clients.create_topic(self.topic)
        clients.create_subscription(self.sub, self.topic)
        self.uri = f"pubsub://{PROJECT}/{self.topic}?emulator_host={server.host}&timeout=10"

    def events(self, want: int) -> list[dict[str, Any]]:
        return [json.loads(m.message.data) for m in self.clients.pull(self.sub, want)]


@pytest.fixture
def topic(pubsub_emulator: PubSubServer) -> Iterator[Topic]:  # noqa: F811
    clients = admin(pubsub_emulator.host, PROJECT)
    t = Topic(clients, pubsub_emulator)
    try:
        yield t
    finally:
        clients.delete(t.topic, t.sub)
        clients.close()


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    handlers: list[Any] = []
    yield handlers
    for h in handlers:
        h.close()


def _post(body: bytes) -> Any:
    """What functions-framework hands an HTTP function: Flask's request for the push."""
    app = flask.Flask("push")
    ctx = app.test_request_context("/", method="POST", data=body, content_type="application/json",
                                   headers={"User-Agent": "APIs-Google; (+https://developers.google.com/webmasters/APIs-Google.html)"})
    ctx.push()
    return ctx, flask.request


def test_push_handler_publishes_cloud_batch_notifications(topic: Topic, tmp_path: Path, closing: list[Any]) -> None:
    handler = make_push_handler(topic.uri, outbox=tmp_path / "outbox.db")
    closing.append(handler)
    for body in (PUSH_JOB, PUSH_TASK):
        ctx, request = _post(body)
        try:
            assert handler(request) == ("", 204, {})
        finally:
            ctx.pop()
    got = {e["id"]: e for e in topic.events(2)}
    assert got == {e["id"]: e for e in normalize(PUSH_JOB) + normalize(PUSH_TASK)}


def test_push_handler_acks_and_dead_letters_a_bad_message(topic: Topic, tmp_path: Path,
                                                          closing: list[Any]) -> None:
    handler = make_push_handler(topic.uri, outbox=tmp_path / "outbox.db")
    closing.append(handler)
    envelope = json.loads(PUSH_JOB)
    envelope["message"]["attributes"] = {"Type": "SOMETHING_ELSE"}
    body, status, headers = handler(type("Req", (), {"data": json.dumps(envelope).encode()})())
    assert status == 200 and headers["Content-Type"] == "application/json"  # acknowledged: a retry cannot help
    assert json.loads(body)["dead_lettered"] is True
    [dl] = handler.bridge.outbox.dead_letters()
    assert json.loads(dl.payload) == envelope


def test_push_handler_answers_503_when_the_destination_is_down(pubsub_emulator: PubSubServer,  # noqa: F811
                                                               tmp_path: Path, closing: list[Any]) -> None:
    missing = f"pubsub://{PROJECT}/missing-{uuid.uuid4().hex[:8]}?emulator_host={pubsub_emulator.host}&timeout=2"
    handler = make_push_handler(missing, outbox=tmp_path / "outbox.db", drain_timeout=1.5)
    closing.append(handler)
    ctx, request = _post(PUSH_JOB)
    try:
        body, status, _ = handler(request)
    finally:
        ctx.pop()
    assert status == 503, body  # Pub/Sub redelivers
    assert json.loads(body)["error"] == "backend_error"


def _cloudevent(push: bytes) -> dict[str, Any]:
    """A messagePublished CloudEvent in the CloudEvents JSON format, as Eventarc sends it."""
    envelope = json.loads(push)
    return {
        "specversion": "1.0",
        "id": envelope["message"]["messageId"],
        "source": f"//pubsub.googleapis.com/projects/{PROJECT}/topics/batch-notifications",
        "type": MESSAGE_PUBLISHED,
        "datacontenttype": "application/json",
        "time": envelope["message"]["publishTime"],
        "data": envelope,
    }


def test_cloudevent_handler(topic: Topic, tmp_path: Path, closing: list[Any]) -> None:
    handler = make_cloudevent_handler(topic.uri, outbox=tmp_path / "outbox.db")
    closing.append(handler)
    assert handler(_cloudevent(PUSH_TASK)) == {"events": 1, "deliveries": 1, "dead_lettered": 0}
    [event] = topic.events(1)
    assert event == normalize(PUSH_TASK)[0]
    with pytest.raises(ConfigError, match="check the trigger"):
        handler({**_cloudevent(PUSH_TASK), "type": "google.cloud.storage.object.v1.finalized"})


def test_cloudevent_handler_raises_so_eventarc_retries(pubsub_emulator: PubSubServer,  # noqa: F811
                                                       tmp_path: Path, closing: list[Any]) -> None:
    missing = f"pubsub://{PROJECT}/missing-{uuid.uuid4().hex[:8]}?emulator_host={pubsub_emulator.host}&timeout=2"
    handler = make_cloudevent_handler(missing, outbox=tmp_path / "outbox.db", drain_timeout=1.5)
    closing.append(handler)
    with pytest.raises(BackendError):
        handler(_cloudevent(PUSH_JOB))


def test_relayed_cloudevents_keep_their_binding(topic: Topic, pubsub_emulator: PubSubServer,  # noqa: F811
                                                tmp_path: Path, closing: list[Any]) -> None:
    """A push subscription on a topic batchbridge itself feeds (binary mode: the context is in the
    message attributes) hands the same CloudEvent on."""
    clients = topic.clients
    source_topic, source_sub = f"src-{uuid.uuid4().hex[:8]}", f"src-{uuid.uuid4().hex[:8]}-sub"
    clients.create_topic(source_topic)
    clients.create_subscription(source_sub, source_topic)
    try:
        event = make_trusted_event("relayed-gcp")
        with open_publisher(f"pubsub://{PROJECT}/{source_topic}?emulator_host={pubsub_emulator.host}"
                            "&timeout=10&mode=binary") as pub:
            assert pub.publish_one(event).ok
        [pulled] = clients.pull(source_sub, 1)
        m = pulled.message
        push = {"message": {"data": base64.b64encode(m.data).decode(), "attributes": dict(m.attributes),
                            "messageId": m.message_id, "publishTime": m.publish_time.isoformat()},
                "subscription": f"projects/{PROJECT}/subscriptions/{source_sub}"}
        handler = make_push_handler(topic.uri, outbox=tmp_path / "outbox.db")
        closing.append(handler)
        assert handler(type("Req", (), {"data": json.dumps(push).encode()})())[1] == 204
        assert topic.events(1) == [event]
    finally:
        clients.delete(source_topic, source_sub)


def test_subscriber_reads_what_the_handler_published(topic: Topic, tmp_path: Path, closing: list[Any]) -> None:
    handler = make_push_handler(topic.uri, outbox=tmp_path / "outbox.db")
    closing.append(handler)
    assert handler(type("Req", (), {"data": PUSH_JOB})())[1] == 204
    sub_uri = topic.uri.replace(f"/{topic.topic}?", f"/subscriptions/{topic.sub}?")
    with open_subscriber(sub_uri) as sub:
        [got] = drain(sub, 1, deadline=15)
    assert got.event == normalize(PUSH_JOB)[0]
    assert got.message.attributes["ce-type"] == "batch.job.succeeded"
