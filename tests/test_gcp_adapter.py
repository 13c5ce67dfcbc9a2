"""What the ``pubsub://`` adapter does beyond the conformance suite, checked with the plain
google-cloud-pubsub clients against the official emulator (or the in-repo fake; see
``tests/pubsub_servers.py``)."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from batchbridge.core.backends import open_publisher, open_subscriber
from batchbridge.core.driver import Message
from batchbridge.core.errors import (
    BackendError,
    ConfigError,
    EntityNotFoundError,
    MessageTooLargeError,
    MissingDependencyError,
)
from batchbridge.core.registry import parse_uri
from batchbridge.core.secrets import redact
from conformance import drain, make_event
from pubsub_fake import compile_filter
from pubsub_servers import Admin, PubSubServer, admin, free_port, pubsub_emulator  # noqa: F401

PROJECT = "batchbridge-test"


@dataclass
class Fresh:
    server: PubSubServer
    admin: Admin
    topic: str
    sub: str

    @property
    def q(self) -> str:
        return f"emulator_host={self.server.host}"

    @property
    def pub_uri(self) -> str:
        return f"pubsub://{PROJECT}/{self.topic}?{self.q}"

    @property
    def sub_uri(self) -> str:
        return f"pubsub://{PROJECT}/subscriptions/{self.sub}?{self.q}"


@pytest.fixture
def fresh(pubsub_emulator: PubSubServer) -> Iterator[Fresh]:  # noqa: F811
    """A new topic with one subscription; both deleted afterwards."""
    suffix = uuid.uuid4().hex[:10]
    clients = admin(pubsub_emulator.host, PROJECT)
    topic, sub = f"gcp-{suffix}", f"gcp-{suffix}-sub"
    clients.create_topic(topic)
    clients.create_subscription(sub, topic)
    try:
        yield Fresh(pubsub_emulator, clients, topic, sub)
    finally:
        clients.delete(topic, sub)
        clients.close()


def _attrs(received: Any) -> dict[str, str]:
    return dict(received.message.attributes)


# --- the wire format -----------------------------------------------------------------------------


def test_structured_mode_sets_ce_attributes_and_content_type(fresh: Fresh) -> None:
    event = make_event("job-structured", 1)
    with open_publisher(fresh.pub_uri) as pub:
        assert pub.publish_one(event).ok
    [got] = fresh.admin.pull(fresh.sub, 1)
    attrs = _attrs(got)
    assert attrs["content-type"] == "application/cloudevents+json"
    for name in ("id", "type", "source", "subject", "time", "dataschema"):
        assert attrs[f"ce-{name}"] == event[name], name
    # a structured message with ce-specversion is taken for binary mode by SDKs that look for it
    assert "ce-specversion" not in attrs
    assert json.loads(got.message.data) == event
    assert got.message.ordering_key == ""  # no ordering keys unless ordering=true


def test_binary_mode_sets_content_type_to_datacontenttype(fresh: Fresh) -> None:
    event = make_event("job-binary", 2)
    event["datacontenttype"] = "application/vnd.batch+json"
    with open_publisher(f"{fresh.pub_uri}&mode=binary") as pub:
        assert pub.publish_one(event).ok
    [got] = fresh.admin.pull(fresh.sub, 1)
    attrs = _attrs(got)
    assert attrs["content-type"] == "application/vnd.batch+json"
    assert attrs["ce-specversion"] == "1.0" and attrs["ce-id"] == event["id"]
    assert "ce-datacontenttype" not in attrs
    assert json.loads(got.message.data) == event["data"]


def test_content_type_read_back_by_the_subscriber(fresh: Fresh) -> None:
    event = make_event("job-ct", 3)
    event["datacontenttype"] = "application/vnd.batch+json"
    with open_publisher(f"{fresh.pub_uri}&mode=binary") as pub, open_subscriber(fresh.sub_uri) as sub:
        assert pub.publish_one(event).ok
        [got] = drain(sub, 1, deadline=15)
    assert got.message.content_type == "application/vnd.batch+json"
    assert got.message.message_id
    assert got.event == event


def test_ordering_key_is_the_job_or_environment_id(fresh: Fresh) -> None:
    events = [make_event(f"job-key-{i % 3}", i) for i in range(9)]
    env_event = make_event("unused", 99)
    env_event["data"]["job"] = None
    env_event["data"]["environment"] = {"id": "env-42"}
    # concurrency=1: every key in one lane's batch, which the portable layer splits into one request per key
    with open_publisher(f"{fresh.pub_uri}&ordering=true", concurrency=1) as pub:
        results = pub.publish([*events, env_event])
        assert all(r.ok for r in results), [r.error for r in results]
    got = fresh.admin.pull(fresh.sub, 10)
    keys = {json.loads(r.message.data)["id"]: r.message.ordering_key for r in got}
    assert keys == {**{e["id"]: e["data"]["job"]["id"] for e in events}, env_event["id"]: "env-42"}


def test_attribute_over_the_service_limit_is_refused_alone(fresh: Fresh) -> None:
    # binary mode puts ``subject`` in an attribute; Pub/Sub takes at most 1,024 bytes per value and
    # would refuse the whole request, so the driver refuses that one message and sends the rest
    ok, too_long = make_event("job-long", 1), make_event("job-long", 2)
    too_long["subject"] = "s" * 2000
    with open_publisher(f"{fresh.pub_uri}&mode=binary") as pub:
        first, second = pub.publish([ok, too_long])
    assert first.ok
    assert isinstance(second.error, MessageTooLargeError) and "1024" in second.error.reason
    assert [json.loads(r.message.data)["raw"]["n"] for r in fresh.admin.pull(fresh.sub, 1)] == [1]


# --- subscription filters ------------------------------------------------------------------------


def test_subscription_filter_on_ce_type(fresh: Fresh) -> None:
    expression = 'attributes."ce-type" = "batch.job.failed"'
    sub_name = f"{fresh.sub}-failed"
    uri = (f"pubsub://{PROJECT}/subscriptions/{sub_name}?{fresh.q}&create=true&topic={fresh.topic}"
           f"&filter={urllib.parse.quote(expression)}")
    try:
        with open_subscriber(uri) as sub, open_publisher(fresh.pub_uri) as pub:
            stored = fresh.admin.subscriber.get_subscription(
                subscription=fresh.admin.subscription(sub_name), retry=None, timeout=10)
            assert stored.filter == expression
            events = [make_event("job-f", 1, state="running"), make_event("job-f", 2, state="failed")]
            assert all(r.ok for r in pub.publish(events))
            got = [g.event for g in drain(sub, 2, deadline=4.0) if g.event]
        routed = compile_filter(expression)
        # the attribute the filter names is on every message, exactly as the filter spells it
        assert [e["id"] for e in events if routed({"ce-type": e["type"]})] == [events[1]["id"]]
        if fresh.server.enforces_filters:
            assert [e["id"] for e in got] == [events[1]["id"]]
        else:
            # the official emulator stores filters but does not apply them (checked on 0.8.20)
            assert sorted(e["id"] for e in got) == sorted(e["id"] for e in events)
    finally:
        fresh.admin.delete(subscription=sub_name)


# --- entities: missing, created ------------------------------------------------------------------


def test_missing_topic_is_entity_not_found(pubsub_emulator: PubSubServer) -> None:  # noqa: F811
    start = time.monotonic()
    with open_publisher(f"pubsub://{PROJECT}/missing-{uuid.uuid4().hex[:8]}?emulator_host={pubsub_emulator.host}") \
            as pub:
        results = pub.publish([make_event("job-m", i) for i in range(3)])
    assert all(isinstance(r.error, EntityNotFoundError) for r in results), results
    assert results[0].error is not None and not results[0].error.retryable
    assert "does not exist" in results[0].error.reason
    assert time.monotonic() - start < 10  # not retried


def test_invalid_name_is_not_retryable(pubsub_emulator: PubSubServer) -> None:  # noqa: F811
    with open_publisher(f"pubsub://{PROJECT}/ab?emulator_host={pubsub_emulator.host}") as pub:  # too short
        [result] = pub.publish([make_event()])
    assert isinstance(result.error, BackendError) and not result.error.retryable
    assert "INVALID_ARGUMENT" in result.error.reason


def test_default_creates_nothing_create_true_creates(pubsub_emulator: PubSubServer) -> None:  # noqa: F811
    clients = admin(pubsub_emulator.host, PROJECT)
    suffix = uuid.uuid4().hex[:8]
    topic, sub = f"made-{suffix}", f"made-{suffix}-sub"
    base = f"emulator_host={pubsub_emulator.host}"
    try:
        with open_publisher(f"pubsub://{PROJECT}/{topic}?{base}") as pub:
            assert isinstance(pub.publish_one(make_event()).error, EntityNotFoundError)
        with pytest.raises(EntityNotFoundError), open_subscriber(f"pubsub://{PROJECT}/subscriptions/{sub}?{base}") as s:
            s.receive(timeout=1)
        with pytest.raises(ConfigError, match="topic="):
            open_subscriber(f"pubsub://{PROJECT}/subscriptions/{sub}?{base}&create=true")
        with pytest.raises(Exception) as missing:
            clients.publisher.get_topic(topic=clients.topic(topic), retry=None, timeout=10)
        assert type(missing.value).__name__ == "NotFound"

        # the subscriber creates its topic too, with ordering and the ack deadline asked for
        sub_uri = f"pubsub://{PROJECT}/subscriptions/{sub}?{base}&create=true&topic={topic}&ordering=true" \
                  "&ack_deadline=42"
        with open_subscriber(sub_uri) as s, open_publisher(f"pubsub://{PROJECT}/{topic}?{base}&create=true") as p:
            created = clients.subscriber.get_subscription(subscription=clients.subscription(sub), retry=None,
                                                          timeout=10)
            assert created.topic == clients.topic(topic)
            assert created.enable_message_ordering is True
            assert created.ack_deadline_seconds == 42
            assert p.publish_one(make_event("job-created")).ok
            assert len(drain(s, 1, deadline=15)) == 1
        # opening again with create=true finds both and keeps them
        open_subscriber(sub_uri).close()
        open_publisher(f"pubsub://{PROJECT}/{topic}?{base}&create=true").close()
    finally:
        clients.delete(topic, sub)
        clients.close()


# --- no hangs: a missing server fails in seconds ---------------------------------------------------


def test_missing_server_fails_fast_and_retryable() -> None:
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    with open_publisher(f"pubsub://{PROJECT}/nowhere?emulator_host={host}&retries=2") as pub:
        [result] = pub.publish([make_event("job-down")])
    assert isinstance(result.error, BackendError) and result.error.retryable, result
    assert "UNAVAILABLE" in result.error.reason
    with pytest.raises(BackendError) as info, \
            open_subscriber(f"pubsub://{PROJECT}/subscriptions/nowhere?emulator_host={host}&retries=2") as sub:
        sub.receive(timeout=5)
    assert info.value.retryable
    with pytest.raises(BackendError) as created:
        open_publisher(f"pubsub://{PROJECT}/nowhere?emulator_host={host}&create=true&timeout=3")
    assert created.value.retryable
    assert time.monotonic() - start < 20


def test_emulator_host_from_environment(fresh: Fresh, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", fresh.server.host)
    with open_publisher(f"pubsub://{PROJECT}/topics/{fresh.topic}") as pub:  # the long form, too
        assert pub.publish_one(make_event("job-env")).ok
    assert len(fresh.admin.pull(fresh.sub, 1)) == 1


# --- the plain SDK's streaming subscriber reads what batchbridge published ---------------------------


def test_streaming_pull_of_the_plain_client(fresh: Fresh, monkeypatch: pytest.MonkeyPatch) -> None:
    from google.cloud import pubsub_v1

    events = [make_event("job-stream", i) for i in range(5)]
    with open_publisher(fresh.pub_uri) as pub:
        assert all(r.ok for r in pub.publish(events))
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", fresh.server.host)
    seen: list[str] = []
    done = threading.Event()

    def callback(message: Any) -> None:
        seen.append(message.attributes["ce-id"])
        message.ack()
        if len(seen) >= len(events):
            done.set()

    client = pubsub_v1.SubscriberClient()
    future = client.subscribe(fresh.admin.subscription(fresh.sub), callback)
    try:
        assert done.wait(15), seen
    finally:
        future.cancel()
        with contextlib.suppress(Exception):
            future.result(timeout=10)
        client.close()
    assert sorted(seen) == sorted(e["id"] for e in events)


# --- configuration, dependencies, secrets ----------------------------------------------------------


@pytest.mark.parametrize(("method", "uri", "message"), [
    ("open_publisher", "pubsub:///topic", "needs a project"),
    ("open_publisher", "pubsub://proj/subscriptions/sub", "names a topic"),
    ("open_subscriber", "pubsub://proj/topic", "names a subscription"),
    ("open_subscriber", "pubsub://proj/subscriptions/sub?ordering=maybe", "must be bool"),
])
def test_bad_uris_are_config_errors(method: str, uri: str, message: str) -> None:
    opener = {"open_publisher": open_publisher, "open_subscriber": open_subscriber}[method]
    with pytest.raises(ConfigError, match=message):
        opener(f"{uri}{'&' if '?' in uri else '?'}emulator_host=127.0.0.1:1")


def test_missing_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import google

    monkeypatch.setitem(sys.modules, "google.pubsub_v1", None)  # as if google-cloud-pubsub were absent
    monkeypatch.delattr(google, "pubsub_v1", raising=False)
    _, uri = parse_uri("pubsub://proj/topic?emulator_host=127.0.0.1:1")
    from batchbridge.adapters import gcp

    with pytest.raises(MissingDependencyError, match=r"pip install 'batchbridge\[gcp\]'"):
        gcp.BACKEND.open_publisher(uri)


def _service_account(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")
    rsa = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.rsa")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    info = {
        "type": "service_account", "project_id": PROJECT, "private_key_id": "f00dfacecafe0123456789abcdef",
        "private_key": pem, "client_email": f"bridge@{PROJECT}.iam.gserviceaccount.com", "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(info))
    return path, info


def _leaks(text: str, info: dict[str, str]) -> list[str]:
    lines = [ln for ln in info["private_key"].splitlines() if "-----" not in ln]
    return [s for s in (info["private_key_id"], *lines) if s in text]


def test_credentials_file_contents_never_shown(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, info = _service_account(tmp_path)
    caplog.set_level(logging.DEBUG)
    # real credentials, TLS to a port where nothing listens: fails fast, and says so without the key
    uri = f"pubsub://{PROJECT}/topic-x?credentials_file={path}&endpoint=127.0.0.1:{free_port()}&retries=2&timeout=3"
    with open_publisher(uri) as pub:
        [result] = pub.publish([make_event("job-secret")])
        shown = " ".join([repr(pub), str(pub.uri), repr(result), str(result.error)])
    assert isinstance(result.error, BackendError) and result.error.retryable
    assert str(path) in shown  # the path is not secret
    assert _leaks(shown + caplog.text, info) == []
    # any text that quotes the key later is scrubbed
    assert _leaks(redact(f"boom: {info['private_key']} / {info['private_key_id']}"), info) == []


def test_broken_credentials_file_error_does_not_quote_it(tmp_path: Path) -> None:
    marker = "SECRET-MATERIAL-0123456789"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps({
        "type": "service_account", "private_key_id": "k1", "client_email": "a@b.c",
        "token_uri": "https://oauth2.googleapis.com/token",
        "private_key": f"-----BEGIN PRIVATE KEY-----\n{marker}\n-----END PRIVATE KEY-----\n",
    }))
    with pytest.raises(ConfigError) as info:
        open_publisher(f"pubsub://{PROJECT}/topic-x?credentials_file={path}")
    assert str(path) in str(info.value)
    assert marker not in str(info.value) and marker not in repr(info.value)
    (tmp_path / "not-json.json").write_text(f"{marker} not json")
    with pytest.raises(ConfigError) as info:
        open_publisher(f"pubsub://{PROJECT}/topic-x?credentials_file={tmp_path / 'not-json.json'}")
    assert marker not in str(info.value)


def test_driver_refuses_after_close(pubsub_emulator: PubSubServer) -> None:  # noqa: F811
    backend, uri = parse_uri(f"pubsub://{PROJECT}/whatever?emulator_host={pubsub_emulator.host}")
    driver = backend.open_publisher(uri)
    driver.close()
    with pytest.raises(BackendError, match="closed"):
        driver.send_batch([Message(b"{}", {}, "application/json")])


@pytest.mark.parametrize(("name", "retryable"), [
    ("ServiceUnavailable", True), ("DeadlineExceeded", True), ("ResourceExhausted", True), ("Aborted", True),
    ("InternalServerError", True), ("PermissionDenied", False), ("InvalidArgument", False), ("NotFound", False),
    ("Unauthenticated", False),
])
def test_status_codes_are_classified(name: str, retryable: bool) -> None:
    from batchbridge.adapters.gcp import is_retryable, typed
    from google.api_core import exceptions

    exc = getattr(exceptions, name)("from the service")
    assert is_retryable(exc) is retryable
    err = typed(exc, "pubsub://p/t", "topic projects/p/topics/t")
    assert err.retryable is retryable
    assert isinstance(err, EntityNotFoundError) is (name == "NotFound")
    assert err.cause is exc
    # api_core's own retry wrapper, when it gives up, carries the last error as its cause
    assert is_retryable(exceptions.RetryError("gave up", exc)) is retryable
