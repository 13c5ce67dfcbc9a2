"""The consuming side under stress, on each real test backend (SQS on moto, Pub/Sub on the in-repo
fake, Service Bus on the stand-in broker):

* bounded prefetch: a slow handler (0.4 s per message) works through a queue whose visibility
  timeout / ack deadline / lock duration is 2 s -- far less than the whole queue takes. Nothing may
  be redelivered while it is being processed: every message arrives once, with delivery count 1.
  A subscriber that fetched (and so locked) more than it was asked for would see locks expire and
  the same messages come back.
* poison messages: garbage in the middle of a stream going through ``relay`` is dead-lettered once
  with its reason (the bridge's dead-letter store keeps body and reason), acknowledged, and never
  delivered again; the good messages around it all arrive.
* graceful drain: ``batchbridge relay`` gets SIGTERM while messages keep arriving; it exits 0 and
  every message is either delivered or still at the source -- nothing taken is lost.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from batchbridge.core.backends import open_publisher, open_subscriber
from batchbridge.core.bridge import Bridge
from batchbridge.core.config import config_from_dict
from batchbridge.core.relay import Relay
from fault_tools import Arrivals, CliProcess, Figures, canonical_events, record, tencent_payloads, wait_until
from servicebus_broker import ServiceBusEnv, servicebus_broker  # noqa: F401  (the session fixture)

if TYPE_CHECKING:
    from aws_servers import AwsServer

# bounded by default; `pytest -m faults` (or BATCHBRIDGE_FAULTS_FULL=1) runs the full-size experiments
pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]

SHORT_LOCK = 2  # seconds: visibility timeout, ack deadline, lock duration
HANDLER_SECONDS = 0.4


@dataclass
class Source:
    name: str
    #: subscriber URI (short lock) and a publisher URI onto the same entity
    sub_uri: str
    pub_uri: str
    #: put raw bodies on the source, as a foreign producer would
    put_raw: Callable[[list[bytes]], None]
    #: messages still at the source (visible or locked)
    depth: Callable[[], int]
    close: Callable[[], None] = lambda: None


@pytest.fixture
def pubsub_fake_host() -> Iterator[tuple[str, Any]]:
    from pubsub_fake import serve

    server, fake, host = serve()
    try:
        yield host, fake
    finally:
        fake.stop()
        server.stop(None)


def sqs_source(aws: AwsServer) -> Source:
    q = aws.queue()
    sqs = aws.client("sqs")

    def put(bodies: list[bytes]) -> None:
        for i in range(0, len(bodies), 10):
            sqs.send_message_batch(QueueUrl=q.url, Entries=[
                {"Id": str(j), "MessageBody": b.decode()} for j, b in enumerate(bodies[i:i + 10])])

    def depth() -> int:
        a = sqs.get_queue_attributes(QueueUrl=q.url, AttributeNames=["All"])["Attributes"]
        return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])

    return Source("sqs (moto)", aws.uri("sqs", q.name, visibility_timeout=SHORT_LOCK, wait_time_seconds=1),
                  aws.uri("sqs", q.name), put, depth)


def pubsub_source(host: str, fake: Any) -> Source:
    from pubsub_servers import admin

    adm = admin(host, "consumer")
    name = f"c-{uuid.uuid4().hex[:10]}"
    topic = adm.create_topic(name)
    adm.create_subscription(name, name, ack_deadline_seconds=SHORT_LOCK)  # the fake honours short deadlines

    def put(bodies: list[bytes]) -> None:
        adm.publisher.publish(topic=topic, messages=[{"data": b} for b in bodies], retry=None, timeout=10)

    def depth() -> int:
        with fake._cond:
            sub = fake._subs[adm.subscription(name)]
            return len(sub.ready) + len(sub.outstanding)

    return Source("pubsub (fake)", f"pubsub://consumer/subscriptions/{name}?emulator_host={host}",
                  f"pubsub://consumer/{name}?emulator_host={host}", put, depth)


def servicebus_source(sb: ServiceBusEnv) -> Source:
    from azure.servicebus import ServiceBusClient, ServiceBusMessage

    assert sb.broker is not None
    q = sb.queue(lock_duration=SHORT_LOCK)
    # one sender for the whole test: each link open costs the SDK about half a second
    client = ServiceBusClient.from_connection_string(sb.connection_string)
    sender = client.get_queue_sender(q)
    lock = threading.Lock()

    def put(bodies: list[bytes]) -> None:
        with lock:
            sender.send_messages([ServiceBusMessage(b) for b in bodies])

    assert sb.broker is not None
    broker = sb.broker
    def close() -> None:
        sender.close()
        client.close()

    return Source("servicebus (stand-in)", sb.uri(q, max_wait_time=2), sb.uri(q), put, lambda: broker.depth(q),
                  close)


@pytest.fixture(params=["sqs", "pubsub", "servicebus"])
def source(request: pytest.FixtureRequest) -> Iterator[Source]:
    if request.param == "sqs":
        yield sqs_source(request.getfixturevalue("moto_server"))
        return
    if request.param == "pubsub":
        host, fake = request.getfixturevalue("pubsub_fake_host")
        yield pubsub_source(host, fake)
        return
    sb: ServiceBusEnv = request.getfixturevalue("servicebus_broker")
    if sb.broker is None:
        pytest.skip("needs the stand-in broker (short lock durations, depth counter)")
    src = servicebus_source(sb)
    try:
        yield src
    finally:
        src.close()


# --- bounded prefetch -------------------------------------------------------------------------------


def test_slow_handler_short_lock_nothing_redelivered(request: pytest.FixtureRequest, source: Source) -> None:
    events = canonical_events(12, tag=f"slow-{source.name[:3]}-")
    with open_publisher(source.pub_uri) as pub:
        assert all(r.ok for r in pub.publish(events))
    arrivals = Arrivals()
    counts: list[int | None] = []
    started = time.monotonic()
    with open_subscriber(source.sub_uri) as sub:
        end = time.monotonic() + 60
        while len(arrivals.ids()) < len(events) and time.monotonic() < end:
            for item in sub.receive(max_messages=1, timeout=2):
                assert item.event is not None, item.error
                counts.append(item.message.delivery_count)
                arrivals.add(item.body if item.body[:1] == b"{" else orjson.dumps(item.event))
                time.sleep(HANDLER_SECONDS)  # the slow handler
                sub.ack([item])
        took = time.monotonic() - started
        # once more after every lock taken during the run has expired: nothing comes back
        time.sleep(SHORT_LOCK + 0.5)
        late = sub.receive(max_messages=10, timeout=2)
    delivered, lost, dups = arrivals.figures(e["id"] for e in events)
    record(Figures("slow handler, short lock", source.name,
                   f"lock {SHORT_LOCK}s, {HANDLER_SECONDS}s per message, receive(max_messages=1)",
                   len(events), delivered, lost, dups, extra={"took_s": f"{took:.1f}", "redelivered_late": len(late)}),
           request.config)
    assert took > 2 * SHORT_LOCK  # the run did outlast the lock many times over
    assert lost == 0 and dups == 0 and late == []
    assert all(c in (None, 1) for c in counts), counts
    assert source.depth() == 0


# --- poison messages ----------------------------------------------------------------------------------

GARBAGE = [
    b"this is not an event",
    b'{"Events": [{"EventName": "JOB_EXPLODED", "Batch": {}}]}',
    b"[" * 5000 + b"]" * 5000,
    b'{"specversion": "1.0", "dataschema": "' + b"x" * 10 + b'"}',
    b'{"a": 1e999999}',
]


def test_garbage_in_the_stream_is_dead_lettered_once(request: pytest.FixtureRequest, tmp_path: Path,
                                                     source: Source) -> None:
    good = tencent_payloads(20, tag=f"poison-{source.name[:3]}-")
    bodies = [b for b, _ in good]
    for i, g in enumerate(GARBAGE):
        bodies.insert(3 + 4 * i, g)
    source.put_raw(bodies)
    out = tmp_path / "out.jsonl"
    bridge = Bridge(config_from_dict({"routes": [{"to": out.as_uri()}],
                                      "outbox": {"path": str(tmp_path / "outbox.db"), "backoff_initial": 0.05}}))
    bridge.start()
    try:
        stop = threading.Event()
        relay = Relay(bridge, source.sub_uri, batch=5, wait=1.0)
        runner = threading.Thread(target=relay.run, args=(stop,), daemon=True)
        runner.start()
        wait_until(lambda: relay.report.messages >= len(bodies), 60, what="every message taken")
        # stay on past the lock duration: a message not acknowledged would come back now
        time.sleep(SHORT_LOCK + 1.5)
        stop.set()
        runner.join(30)
        assert bridge.drain(20)
        dead = bridge.outbox.dead_letters()
        arrivals = Arrivals()
        for line in out.read_bytes().splitlines():
            arrivals.add(line)
        delivered, lost, dups = arrivals.figures(eid for _, eid in good)
        record(Figures("garbage in the stream (relay)", source.name, f"{len(GARBAGE)} undecodable among 20 good",
                       len(good), delivered, lost, dups,
                       extra={"dead_lettered": len(dead), "taken": relay.report.messages}), request.config)
        assert relay.report.messages == len(bodies)  # each message taken once: none redelivered
        assert sorted(d.payload for d in dead) == sorted(GARBAGE)
        assert all(d.stage == "intake" and d.code and d.reason for d in dead)
        assert lost == 0 and dups == 0
        assert source.depth() == 0
    finally:
        bridge.stop()


# --- graceful drain ----------------------------------------------------------------------------------


def test_sigterm_relay_while_messages_arrive(request: pytest.FixtureRequest, tmp_path: Path, source: Source) -> None:
    out = tmp_path / "out.jsonl"
    items = tencent_payloads(400, tag=f"drain-{source.name[:3]}-")
    sent: list[str] = []
    feeding = threading.Event()
    feeding.set()

    def feed() -> None:
        for i in range(0, len(items), 10):
            if not feeding.is_set():
                return
            chunk = items[i:i + 10]
            source.put_raw([b for b, _ in chunk])
            sent.extend(eid for _, eid in chunk)
            time.sleep(0.05)

    relay = CliProcess(["relay", "--from", source.sub_uri, "--to", out.as_uri(), "--outbox",
                        str(tmp_path / "outbox.db"), "--drain-timeout", "20"], tmp_path / "relay.log")
    try:
        wait_until(lambda: "SIGTERM to stop" in relay.log(), 30, what="the relay to run")
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        wait_until(lambda: out.exists() and len(out.read_bytes().splitlines()) >= 50, 60,
                   what="the relay to be busy")
        relay.signal(signal.SIGTERM)
        code = relay.wait(60)
        feeding.clear()
        feeder.join(30)
    finally:
        if relay.alive():
            relay.kill()
    assert code == 0, relay.log()
    assert "Traceback" not in relay.log()
    arrivals = Arrivals()
    for line in out.read_bytes().splitlines():
        arrivals.add(line)
    delivered_ids = arrivals.ids()
    # what the relay did not take is still at the source (after any lock it held expires)
    time.sleep(SHORT_LOCK + 0.5)
    left = Arrivals()
    with open_subscriber(source.sub_uri) as sub:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            got = sub.receive(max_messages=10, timeout=1)
            if not got:
                break
            for item in got:
                for event in _events(item.body):
                    left.add(orjson.dumps(event))
            sub.ack(got)
    delivered, _, dups = arrivals.figures(sent)
    missing = set(sent) - delivered_ids - left.ids()
    record(Figures("SIGTERM of relay while messages arrive", source.name, "SIGTERM after >= 50 delivered",
                   len(sent), delivered, len(missing), dups, extra={"left_at_source": len(left.ids())}),
           request.config)
    assert missing == set(), f"{len(missing)} messages neither delivered nor at the source"
    assert arrivals.inconsistent_duplicates() == []


def _events(body: bytes) -> list[dict[str, Any]]:
    from batchbridge.core.normalizing import normalize

    return normalize(body)


def test_prefetch_beyond_what_is_processed_loses_locks(request: pytest.FixtureRequest,
                                                        servicebus_broker: ServiceBusEnv) -> None:  # noqa: F811
    """The control for the test above: the same slow handler with ``?prefetch=20`` (the SDK locks 20
    messages ahead) sees locks expire and settlements fail. This is why the default prefetch is 0."""
    if servicebus_broker.broker is None:
        pytest.skip("needs the stand-in broker")
    src = servicebus_source(servicebus_broker)
    src.close()
    events = canonical_events(12, tag="prefetch-")
    with open_publisher(src.pub_uri) as pub:
        assert all(r.ok for r in pub.publish(events))
    lost_locks = 0
    seen: set[str] = set()
    with open_subscriber(src.sub_uri + "&prefetch=20") as sub:
        end = time.monotonic() + 40
        while len(seen) < len(events) and time.monotonic() < end:
            for item in sub.receive(max_messages=1, timeout=2):
                assert item.event is not None
                seen.add(item.event["id"])
                time.sleep(HANDLER_SECONDS)
                try:
                    sub.ack([item])
                except Exception:  # the lock expired while the message waited in the prefetch buffer
                    lost_locks += 1
    record(Figures("control: prefetch=20 with the slow handler", src.name,
                   f"lock {SHORT_LOCK}s, {HANDLER_SECONDS}s per message", len(events), len(seen), 0, 0,
                   extra={"settlements_failed_lock_lost": lost_locks}), request.config)
    assert lost_locks > 0


def test_a_decoder_bug_is_dead_lettered_not_a_crash_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: an exception other than a typed InputError while decoding (a bug) escaped intake,
    so ``relay`` died and got the same message again on every restart. Now the payload is dead-lettered
    (code ``decoder_failure``, with the exception named) and acknowledged; the rest flows."""
    import importlib

    from batchbridge.adapters import memory

    # the module, not the function of the same name that batchbridge.core exports
    normalize_module = importlib.import_module("batchbridge.core.normalizing")

    real = normalize_module.normalize

    def buggy(payload: Any, **kwargs: Any) -> list[dict[str, Any]]:
        if isinstance(payload, (bytes, bytearray)) and b"job-poison" in payload:
            raise KeyError("a decoder bug")
        return real(payload, **kwargs)

    monkeypatch.setattr(normalize_module, "normalize", buggy)
    memory.reset()
    items = tencent_payloads(10, tag="crash-") + tencent_payloads(1, tag="poison-")
    with open_publisher("memory://crash-src") as pub:
        pub._driver.send_batch([_raw_message(b) for b, _ in items])  # foreign bytes, not CloudEvents
    out = tmp_path / "out.jsonl"
    bridge = Bridge(config_from_dict({"routes": [{"to": out.as_uri()}],
                                      "outbox": {"path": str(tmp_path / "o.db"), "backoff_initial": 0.05}}))
    try:
        bridge.start()
        report = Relay(bridge, "memory://crash-src", wait=0.2).run(threading.Event(), max_messages=len(items))
        assert bridge.drain(10)
        (dead,) = bridge.outbox.dead_letters()
        assert dead.code == "decoder_failure" and "KeyError" in dead.reason and b"job-poison" in dead.payload
        assert report.messages == len(items) and report.dead_lettered == 1
        assert memory.depth("crash-src") == 0
        assert len(out.read_bytes().splitlines()) == 10
    finally:
        bridge.stop()
        memory.reset()


def _raw_message(body: bytes) -> Any:
    from batchbridge.core.driver import Message

    return Message(body=body, attributes={}, content_type="application/json")
