"""servicebus:// specifics: what a plain azure-servicebus client sees on the wire, sessions, native
dead-lettering, SDK batch limits, typed errors, and secrets kept out of every output.

Runs the unmodified SDK over AMQP 1.0 against the stand-in broker (``servicebus_broker.py``); tests
that need the stand-in's own counters or fault hooks skip on an external emulator.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from batchbridge.core.backends import (
    open_async_publisher,
    open_async_subscriber,
    open_publisher,
    open_subscriber,
)
from batchbridge.core.driver import Message
from batchbridge.core.errors import (
    BackendError,
    ConfigError,
    EntityNotFoundError,
    MessageTooLargeError,
    MissingDependencyError,
)
from batchbridge.core.registry import parse_uri
from conformance import drain, make_event
from servicebus_broker import MAX_MESSAGE_BYTES, ServiceBusEnv, servicebus_broker  # noqa: F401

sb = pytest.importorskip("azure.servicebus")
from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusClient, ServiceBusMessage  # noqa: E402
from batchbridge.adapters.azure import (  # noqa: E402
    AsyncServiceBusPublisher,
    AsyncServiceBusSubscriber,
    ServiceBusPublisher,
)

SECRET_KEY = "S3cr3tK3y+/batchbridge+test+key+value+0123456789="


@pytest.fixture
def sbenv(servicebus_broker: ServiceBusEnv) -> ServiceBusEnv:  # noqa: F811
    return servicebus_broker


@pytest.fixture
def stand_in(sbenv: ServiceBusEnv) -> Any:
    if sbenv.broker is None:
        pytest.skip("needs the stand-in broker's counters or fault hooks")
    return sbenv.broker


def plain_receive(sbenv: ServiceBusEnv, entity: str, *, want: int = 1, session: bool = False,
                  sub_queue: str | None = None, deadline: float = 10.0) -> list[Any]:
    """Receive and complete with the plain SDK, as any other consumer of the entity would."""
    topic, _, sub = entity.partition("/Subscriptions/")
    got: list[Any] = []
    with ServiceBusClient.from_connection_string(sbenv.connection_string) as client:
        kw: dict[str, Any] = {"max_wait_time": 5, "sub_queue": sub_queue}
        if session:
            kw["session_id"] = NEXT_AVAILABLE_SESSION
        receiver = client.get_subscription_receiver(topic, sub, **kw) if sub else client.get_queue_receiver(topic, **kw)
        with receiver:
            end = time.monotonic() + deadline
            while len(got) < want and time.monotonic() < end:
                batch = receiver.receive_messages(max_message_count=want - len(got), max_wait_time=1)
                for m in batch:
                    receiver.complete_message(m)
                got += batch
    return got


def props(msg: Any) -> dict[str, Any]:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in (msg.application_properties or {}).items()}


# ------------------------------------------------------------------------------------ on the wire


def test_structured_event_as_a_plain_sdk_consumer_sees_it(sbenv: ServiceBusEnv) -> None:
    q = sbenv.queue()
    event = make_event("job-wire", 1)
    with open_publisher(sbenv.uri(q)) as pub:
        assert pub.publish_one(event).ok
    [msg] = plain_receive(sbenv, q)
    p = props(msg)
    assert p["cloudEvents_id"] == event["id"]
    assert p["cloudEvents_type"] == event["type"]
    assert p["cloudEvents_source"] == event["source"]
    assert p["cloudEvents_subject"] == event["subject"]
    assert "cloudEvents_specversion" not in p
    assert str(msg.message_id) == event["id"]
    assert msg.subject == event["type"]
    assert msg.content_type == "application/cloudevents+json"
    assert msg.session_id is None
    assert b"".join(msg.body).startswith(b'{"specversion"')


def test_binary_mode_as_a_plain_sdk_consumer_sees_it(sbenv: ServiceBusEnv) -> None:
    q = sbenv.queue()
    event = make_event("job-binary", 2)
    with open_publisher(sbenv.uri(q, mode="binary")) as pub:
        assert pub.publish_one(event).ok
    [msg] = plain_receive(sbenv, q)
    p = props(msg)
    assert p["cloudEvents_specversion"] == "1.0"
    assert p["cloudEvents_time"] == event["time"]
    assert p["cloudEvents_dataschema"] == event["dataschema"]
    assert msg.content_type == "application/json"
    assert b"".join(msg.body).startswith(b'{"provider"')


def test_colon_prefix_from_another_producer_is_decoded(sbenv: ServiceBusEnv) -> None:
    """A producer on the CloudEvents AMQP binding's ``cloudEvents:`` prefix, binary mode, plain SDK."""
    q = sbenv.queue()
    event = make_event("job-colon", 3)
    names = ("specversion", "id", "source", "type", "subject", "time")
    with ServiceBusClient.from_connection_string(sbenv.connection_string) as client, \
            client.get_queue_sender(q) as sender:
        sender.send_messages(ServiceBusMessage(
            body=orjson.dumps(event["data"]), content_type="application/json",
            application_properties={f"cloudEvents:{k}": event[k] for k in names}))
    with open_subscriber(sbenv.uri(q)) as sub:
        [got] = drain(sub, 1)
    assert got.error is None and got.event is not None
    assert {k: got.event[k] for k in names} == {k: event[k] for k in names}
    assert got.event["data"] == event["data"]
    assert got.event["datacontenttype"] == "application/json"


def test_received_message_fields(sbenv: ServiceBusEnv) -> None:
    q = sbenv.queue()
    event = make_event("job-fields", 4)
    with open_publisher(sbenv.uri(q)) as pub, open_subscriber(sbenv.uri(q)) as sub:
        assert pub.publish_one(event).ok
        [first] = drain(sub, 1, ack=False)
        assert first.message.message_id == event["id"]
        assert first.message.content_type == "application/cloudevents+json"
        assert first.message.delivery_count == 1
        assert first.message.extra["subject"] == event["type"]
        sub.nack([first])
        [again] = drain(sub, 1)
        assert again.message.delivery_count == 2
        assert again.event == event


# ---------------------------------------------------------------------------------------- sessions


def test_sessions_carry_the_job_id(sbenv: ServiceBusEnv) -> None:
    q = sbenv.queue(requires_session=True)
    events = [make_event("job-session-a", 1), make_event("job-session-a", 2)]
    with open_publisher(sbenv.uri(q, sessions="true")) as pub:
        assert all(r.ok for r in pub.publish(events))
    got = plain_receive(sbenv, q, want=2, session=True)
    assert [m.session_id for m in got] == ["job-session-a", "job-session-a"]
    assert [str(m.message_id) for m in got] == [e["id"] for e in events]


def test_fixed_session_option(sbenv: ServiceBusEnv) -> None:
    q = sbenv.queue(requires_session=True)
    with open_publisher(sbenv.uri(q, sessions="true")) as pub:
        assert all(r.ok for r in pub.publish([make_event("job-x", 1), make_event("job-y", 2)]))
    with open_subscriber(sbenv.uri(q, session="job-y")) as sub:
        got = drain(sub, 2, deadline=2.5)
    assert [g.message.ordering_key for g in got] == ["job-y"]


# ------------------------------------------------------------------------------------- dead letter


def test_dead_letter_lands_in_the_dead_letter_queue_with_reason(sbenv: ServiceBusEnv) -> None:
    q = sbenv.queue()
    events = [make_event("job-dlq", 5), make_event("job-dlq", 6)]
    with open_publisher(sbenv.uri(q)) as pub, open_subscriber(sbenv.uri(q)) as sub:
        assert all(r.ok for r in pub.publish(events))
        got = drain(sub, 2, ack=False)
        sub.dead_letter(got, "undecodable", "the test said so")
    # a plain SDK consumer of the sub-queue sees the reason and description
    [dead] = plain_receive(sbenv, q, sub_queue="deadletter")
    assert dead.dead_letter_reason == "undecodable"
    assert dead.dead_letter_error_description == "the test said so"
    assert str(dead.message_id) == events[0]["id"]
    # and batchbridge reads the sub-queue as an entity of its own
    with open_subscriber(sbenv.uri(f"{q}/$deadletterqueue")) as dlq:
        [read] = drain(dlq, 1)
    assert read.message.extra["dead_letter_reason"] == "undecodable"
    assert read.event == events[1]


def test_async_driver_is_native_and_settles(sbenv: ServiceBusEnv) -> None:
    q = sbenv.queue()
    event = make_event("job-aio", 7)

    async def run() -> None:
        async with open_async_publisher(sbenv.uri(q)) as pub:
            assert isinstance(pub._driver, AsyncServiceBusPublisher)
            assert (await pub.publish_one(event)).ok
        async with open_async_subscriber(sbenv.uri(q)) as sub:
            assert isinstance(sub._driver, AsyncServiceBusSubscriber)
            got: list[Any] = []
            end = time.monotonic() + 10
            while not got and time.monotonic() < end:
                got = await sub.receive(max_messages=1, timeout=1.0)
            await sub.nack(got)
            again: list[Any] = []
            while not again and time.monotonic() < end:
                again = await sub.receive(max_messages=1, timeout=1.0)
            assert again[0].message.delivery_count == 2
            await sub.dead_letter(again, "async-reason", "async description")

    asyncio.run(run())
    [dead] = plain_receive(sbenv, q, sub_queue="deadletter")
    assert (dead.dead_letter_reason, dead.dead_letter_error_description) == ("async-reason", "async description")


def test_async_reject_backs_off_then_dead_letters_natively(sbenv: ServiceBusEnv) -> None:
    """``AsyncSubscriber.reject`` on the native driver: Service Bus cannot hide a message, so the
    subscriber holds it for its delay and abandons it; at ``max_deliveries`` it goes to the entity's
    own dead-letter queue with the reason and the decode error."""
    q = sbenv.queue()
    with ServiceBusClient.from_connection_string(sbenv.connection_string) as client, \
            client.get_queue_sender(q) as sender:
        sender.send_messages(ServiceBusMessage(b'{"not": "a CloudEvent"}', content_type="application/json"))

    async def run() -> list[Any]:
        outcomes: list[Any] = []
        async with open_async_subscriber(sbenv.uri(q), max_deliveries=2) as sub:
            assert isinstance(sub._driver, AsyncServiceBusSubscriber) and sub.can_dead_letter
            end = time.monotonic() + 15
            while len(outcomes) < 2 and time.monotonic() < end:
                bad = [r for r in await sub.receive(max_messages=5, timeout=1.0) if r.event is None]
                if bad:
                    outcomes.append(await sub.reject(bad, "undecodable"))
        return outcomes

    outcomes = asyncio.run(run())
    assert [(o.deferred, o.dead_lettered, o.kept) for o in outcomes] == [(1, 0, 0), (0, 1, 0)]
    [dead] = plain_receive(sbenv, q, sub_queue="deadletter")
    assert dead.dead_letter_reason == "undecodable"
    assert "not a CloudEvent" in (dead.dead_letter_error_description or "")


def test_topic_fans_out_to_every_subscription(sbenv: ServiceBusEnv) -> None:
    if sbenv.external:
        pytest.skip("the emulator's topic has subscriptions with filters")
    topic = sbenv.topic("one", "two")
    event = make_event("job-fanout", 8)
    with open_publisher(sbenv.uri(topic)) as pub:
        assert pub.publish_one(event).ok
    for sub in ("one", "two"):
        with open_subscriber(sbenv.uri(f"{topic}/subscriptions/{sub}")) as s:
            assert [g.event for g in drain(s, 1)] == [event]


# ------------------------------------------------------------------------------------ batch limits


def test_sdk_batch_size_is_never_exceeded(sbenv: ServiceBusEnv, stand_in: Any) -> None:
    """Messages the portable layer would batch together (by ``Message.size``) but that do not fit one
    ServiceBusMessageBatch are split into several SDK batches, each within the link's limit."""
    q = sbenv.queue()
    backend, uri = parse_uri(sbenv.uri(q))
    driver = backend.open_publisher(uri)
    try:
        assert driver.max_batch_bytes < MAX_MESSAGE_BYTES
        assert driver.max_message_bytes < MAX_MESSAGE_BYTES
        body = os.urandom(70_000)
        messages = [Message(body, {"cloudEvents_id": f"big-{i}"}, "application/octet-stream", dedup_id=f"big-{i}")
                    for i in range(7)]
        before = len(stand_in.transfers)
        assert driver.send_batch(messages) == [None] * 7
        transfers = stand_in.transfers[before:]
        assert len(transfers) >= 3
        assert sum(n for _, n in transfers) == 7
        assert all(size <= MAX_MESSAGE_BYTES for size, _ in transfers), transfers
        # one message too big for any batch is refused alone; its neighbours go through
        huge = Message(os.urandom(MAX_MESSAGE_BYTES), {}, "application/octet-stream", dedup_id="huge")
        small = Message(b"small", {}, "application/octet-stream", dedup_id="small")
        ok1, too_big, ok2 = driver.send_batch([small, huge, small])
        assert ok1 is None and ok2 is None
        assert isinstance(too_big, MessageTooLargeError) and not too_big.retryable
    finally:
        driver.close()
    assert len(plain_receive(sbenv, q, want=9)) == 9


def test_a_batch_holds_one_session(sbenv: ServiceBusEnv, stand_in: Any) -> None:
    """A partitioned entity refuses a batch that mixes session ids, so the driver never builds one."""
    q = sbenv.queue(requires_session=True)
    backend, uri = parse_uri(sbenv.uri(q, sessions="true"))
    driver = backend.open_publisher(uri)
    keys = ["a", "a", "b", "a", None]
    messages = [Message(b"{}", {}, "application/json", ordering_key=k, dedup_id=f"id-{i}")
                for i, k in enumerate(keys)]
    try:
        before = len(stand_in.transfers)
        assert driver.send_batch(messages) == [None] * 5
        assert [n for _, n in stand_in.transfers[before:]] == [2, 1, 1, 1]
    finally:
        driver.close()
    got = plain_receive(sbenv, q, want=3, session=True, deadline=2.0)  # the first session: "a"
    assert [m.session_id for m in got] == ["a", "a", "a"]


def test_link_limits_are_read_from_the_link(sbenv: ServiceBusEnv) -> None:
    q = sbenv.queue()
    backend, uri = parse_uri(sbenv.uri(q))
    driver = backend.open_publisher(uri)
    try:
        assert isinstance(driver, ServiceBusPublisher)
        assert 200 * 1024 < driver.max_message_bytes < 256 * 1024
        assert driver.max_batch_bytes <= driver.max_message_bytes
        assert driver.attribute_prefix == "cloudEvents_"
    finally:
        driver.close()


# ------------------------------------------------------------------------------------------ errors


def test_missing_entity_is_entity_not_found_fast(sbenv: ServiceBusEnv) -> None:
    start = time.monotonic()
    with pytest.raises(EntityNotFoundError) as pub_err:
        open_publisher(sbenv.uri("no-such-queue"))
    with pytest.raises(EntityNotFoundError) as sub_err:
        open_subscriber(sbenv.uri("no-such-topic/subscriptions/nobody"))

    async def run() -> None:
        async with open_async_publisher(sbenv.uri("no-such-queue")) as pub:
            [result] = await pub.publish([make_event()])
            assert isinstance(result.error, EntityNotFoundError)
        async with open_async_subscriber(sbenv.uri("no-such-queue")) as sub:
            with pytest.raises(EntityNotFoundError):
                await sub.receive(timeout=1.0)

    asyncio.run(run())
    assert time.monotonic() - start < 15
    assert not pub_err.value.retryable and not sub_err.value.retryable
    assert pub_err.value.provider == "azure"


@pytest.fixture
def dead_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A connection string for a namespace nobody listens on, with a recognisable key."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    conn = (f"Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName=RootManageSharedAccessKey;"
            f"SharedAccessKey={SECRET_KEY};UseDevelopmentEmulator=true")
    monkeypatch.setenv("BB_DEAD_SERVICEBUS", conn)
    yield conn


def test_broker_down_is_retryable_within_bounded_time(dead_endpoint: str) -> None:
    uri = "servicebus:///events?connection_string_env=BB_DEAD_SERVICEBUS&retries=3"
    start = time.monotonic()
    with open_publisher(uri) as pub:
        [result] = pub.publish([make_event("job-down")])
    assert isinstance(result.error, BackendError) and result.error.retryable
    assert "ServiceBusConnectionError" in result.error.reason
    with open_subscriber(uri) as sub, pytest.raises(BackendError) as info:
        sub.receive(timeout=1.0)
    assert info.value.retryable
    assert time.monotonic() - start < 20


def test_server_busy_is_retried(sbenv: ServiceBusEnv, stand_in: Any) -> None:
    q = sbenv.queue()
    with open_publisher(sbenv.uri(q)) as pub:
        stand_in.server_busy(2)
        results = pub.publish([make_event("job-busy", i) for i in range(3)])
    assert all(r.ok for r in results), [r.error for r in results]
    assert len(plain_receive(sbenv, q, want=3)) == 3


def test_dropped_connection_recovers(sbenv: ServiceBusEnv, stand_in: Any) -> None:
    q = sbenv.queue()
    with open_publisher(sbenv.uri(q)) as pub:
        assert pub.publish_one(make_event("job-drop", 1)).ok
        stand_in.drop_connections()
        assert pub.publish_one(make_event("job-drop", 2)).ok
    assert len(plain_receive(sbenv, q, want=2)) == 2


def test_uri_and_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERVICEBUS_CONNECTION_STRING", raising=False)
    with pytest.raises(ConfigError, match="no namespace"):
        open_publisher("servicebus:///events")
    monkeypatch.setenv("SERVICEBUS_CONNECTION_STRING",
                       f"Endpoint=sb://ns-a.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey={SECRET_KEY}")
    with pytest.raises(ConfigError, match="ns-b") as info:
        open_publisher("servicebus://ns-b.servicebus.windows.net/events")
    assert SECRET_KEY not in str(info.value)
    with pytest.raises(ConfigError, match="topic"):
        open_publisher("servicebus:///events/subscriptions/all")
    with pytest.raises(ConfigError, match="TOPIC/subscriptions"):
        open_subscriber("servicebus:///a/b")
    with pytest.raises(ConfigError, match="unknown option"):
        open_publisher("servicebus:///events?session_id=1")
    monkeypatch.delenv("SERVICEBUS_CONNECTION_STRING")
    try:
        import azure.identity  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match="azure-identity"):
            open_publisher("servicebus://ns.servicebus.windows.net/events")


# ----------------------------------------------------------------------------------------- secrets


def test_connection_string_and_key_never_shown(sbenv: ServiceBusEnv, dead_endpoint: str,
                                               caplog: pytest.LogCaptureFixture,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    uri = "servicebus:///events?connection_string_env=BB_DEAD_SERVICEBUS&retries=2"
    shown: list[str] = []
    with open_publisher(uri) as pub:
        shown += [repr(pub), str(pub), repr(pub._driver), repr(pub.uri), str(pub.uri)]
        [result] = pub.publish([make_event("job-secret")])
        assert result.error is not None
        shown += [str(result.error), repr(result.error), str(result.error.to_dict())]
    with open_subscriber(uri) as sub, pytest.raises(BackendError) as info:
        shown += [repr(sub), repr(sub._driver)]
        sub.receive(timeout=0.5)
    shown += [str(info.value), repr(info.value), str(info.value.to_dict())]
    # a working namespace too, with a secret-looking key in its own variable
    conn = sbenv.connection_string
    key = next(p.split("=", 1)[1] for p in conn.split(";") if p.lower().startswith("sharedaccesskey="))
    q = sbenv.queue()
    with open_publisher(sbenv.uri(q)) as pub:
        assert pub.publish_one(make_event("job-secret-ok")).ok
        shown.append(repr(pub._driver))
    out = capsys.readouterr()
    text = "\n".join([*shown, caplog.text, out.out, out.err])
    assert caplog.records, "expected some log output to check"
    for secret in (dead_endpoint, SECRET_KEY, conn):
        assert secret not in text
    if len(key) >= 4:
        assert key not in "\n".join(shown)


def test_unique_ids_are_message_ids_for_duplicate_detection(sbenv: ServiceBusEnv) -> None:
    q = sbenv.queue(duplicate_detection=True)
    event = make_event("job-dedup", uuid.uuid4().int % 1000)
    with open_publisher(sbenv.uri(q)) as pub:
        assert all(r.ok for r in pub.publish([event, event, make_event("job-dedup-other")]))
    got = plain_receive(sbenv, q, want=3, deadline=1.0)
    assert sorted(str(m.message_id) for m in got) == sorted({event["id"], make_event("job-dedup-other")["id"]})
