"""One conformance suite for every backend (as Go CDK's ``drivertest``).

A backend's test module subclasses :class:`Conformance` and provides a ``target`` fixture that
returns a :class:`Target`: URIs naming a *fresh* entity for each test, and the backend's
capabilities. Where a backend lacks a capability the suite asserts the documented alternative
behaviour instead (e.g. duplicates arrive with equal ids), so no test is skipped.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import pytest
from batchbridge.core.backends import (
    open_async_publisher,
    open_async_subscriber,
    open_publisher,
    open_subscriber,
)
from batchbridge.core.binding import PREFIXES
from batchbridge.core.driver import Message
from batchbridge.core.errors import BatchBridgeError, ClosedError, EntityNotFoundError, MessageTooLargeError
from batchbridge.core.publisher import Publisher
from batchbridge.core.registry import parse_uri
from batchbridge.core.sequence import with_extensions
from batchbridge.core.subscriber import Received, Subscriber


@dataclass
class Caps:
    #: broker carries message attributes a filter can route on
    attributes: bool = True
    #: per-key order is kept end to end
    ordering: bool = True
    #: the broker drops a second message with the same de-duplication id
    dedup: bool = False
    #: arbitrary bytes survive the trip (else the driver refuses them with a typed error)
    binary_bodies: bool = True
    #: ``?mode=binary`` is supported
    binary_mode: bool = True
    #: nack makes a message available again promptly
    redelivery: bool = True


@dataclass
class Target:
    publish_uri: str
    subscribe_uri: str
    missing_subscribe_uri: str
    caps: Caps

    def with_query(self, uri: str, **opts: Any) -> str:
        q = "&".join(f"{k}={v}" for k, v in opts.items())
        return f"{uri}{'&' if '?' in uri else '?'}{q}" if q else uri


def make_event(job: str = "job-1", n: int = 0, *, pad: int = 0, state: str = "running") -> dict[str, Any]:
    """A canonical-shaped event; unique id per (job, n)."""
    eid = uuid.uuid5(uuid.NAMESPACE_URL, f"{job}/{n}/{state}/{pad}").hex
    return with_extensions({
        "specversion": "1.0",
        "id": eid,
        "source": "batch://tencent/ap-guangzhou",
        "type": f"batch.job.{state}",
        "subject": f"jobs/{job}",
        "time": f"2024-01-01T00:00:{n % 60:02d}Z",
        "datacontenttype": "application/json",
        "dataschema": "urn:batchbridge:batch-event:1",
        "data": {
            "provider": "tencent", "region": "ap-guangzhou", "kind": "job", "transition": state,
            "state": state, "native": {"event": "JOB_RUNNING", "state": None},
            "job": {"id": job, "name": "demo"}, "task": None, "instance": None, "environment": None,
            "node": None, "exit_code": None, "retry_count": None, "progress": n, "error": None,
            "times": {"created": None, "started": None, "ended": None}, "logs": None, "resources": None,
            "priority": None, "vars": {"pad": "x" * pad} if pad else {}, "raw": {"n": n},
        },
    })


def make_trusted_event(job: str = "job-1", n: int = 0, *, state: str = "running") -> dict[str, Any]:
    """:func:`make_event` with the id that recomputes from its content: one an intake accepts as it is
    ("Trust at intake"), where :func:`make_event`'s own ids are refused as chosen by a sender."""
    from batchbridge.core.event import event_id

    event = make_event(job, n, state=state)
    d = event["data"]
    event["id"] = event_id(d["provider"], d["region"], event["subject"], d["transition"], d["state"], event["time"],
                           d["priority"], d["raw"])
    return event


def drain(sub: Subscriber, want: int, deadline: float = 30.0, ack: bool = True) -> list[Received]:
    got: list[Received] = []
    end = time.monotonic() + deadline
    while len(got) < want and time.monotonic() < end:
        batch = sub.receive(max_messages=min(10, want - len(got)), timeout=1.0)
        if ack and batch:
            sub.ack(batch)
        got.extend(batch)
    return got


def quiet(sub: Subscriber, seconds: float = 2.0) -> list[Received]:
    """Whatever else arrives within ``seconds`` (acked)."""
    extra: list[Received] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        batch = sub.receive(max_messages=10, timeout=0.5)
        if batch:
            sub.ack(batch)
        extra.extend(batch)
    return extra


def settled(sub: Subscriber, pub: Publisher, job: str, deadline: float = 30.0) -> list[Received]:
    """Whatever else arrives (acked) before a marker event published now, with the same ordering key.

    Awaiting the marker replaces a fixed "nothing more within N seconds" sleep: on an ordered backend
    anything sent before the marker arrives before it, and everywhere the broker has delivered a
    message sent after the others by the time this returns."""
    marker = make_event(job, 10_000, state="succeeded")
    assert pub.publish_one(marker).ok
    extra: list[Received] = []
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        batch = sub.receive(max_messages=10, timeout=0.5)
        if batch:
            sub.ack(batch)
        others = [r for r in batch if not (r.event and r.event["id"] == marker["id"])]
        extra.extend(others)
        if len(others) < len(batch):
            return extra
    raise AssertionError(f"the marker event never arrived within {deadline}s")


def attr(msg_attrs: dict[str, str], name: str) -> str | None:
    for p in PREFIXES:
        if f"{p}{name}" in msg_attrs:
            return msg_attrs[f"{p}{name}"]
    return None


class _Recording:
    """Wraps a driver to record the batches the portable layer hands it."""

    def __init__(self, driver: Any) -> None:
        self._d = driver
        self.batches: list[Sequence[Message]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._d, name)

    def send_batch(self, messages: Sequence[Message]) -> list[BaseException | None]:
        self.batches.append(list(messages))
        result: list[BaseException | None] = self._d.send_batch(messages)
        return result


class Conformance:
    """Subclass and provide a ``target`` fixture."""

    def test_send_receive_one(self, target: Target) -> None:
        event = make_event("job-one")
        with open_publisher(target.publish_uri) as pub, open_subscriber(target.subscribe_uri) as sub:
            [result] = pub.publish([event])
            assert result.ok, result.error
            [got] = drain(sub, 1)
            assert got.error is None
            assert got.event == event
            assert settled(sub, pub, "job-one") == []

    def test_send_receive_many(self, target: Target) -> None:
        events = [make_event(f"job-{i % 7}", i) for i in range(57)]
        with open_publisher(target.publish_uri) as pub, open_subscriber(target.subscribe_uri) as sub:
            results = pub.publish(events)
            assert all(r.ok for r in results), [r.error for r in results if not r.ok]
            assert [r.event_id for r in results] == [e["id"] for e in events]
            got = drain(sub, len(events))
            assert sorted(g.event["id"] for g in got if g.event) == sorted(e["id"] for e in events)

    def test_batches_respect_limits(self, target: Target) -> None:
        backend, uri = parse_uri(target.publish_uri)
        recorder = _Recording(backend.open_publisher(uri))
        n = recorder.max_batch_count * 2 + 1
        events = [make_event("job-batch", i) for i in range(n)]
        with Publisher(recorder, uri, {"concurrency": 1}) as pub, open_subscriber(target.subscribe_uri) as sub:
            assert all(r.ok for r in pub.publish(events))
            assert len(recorder.batches) == 3, [len(b) for b in recorder.batches]
            for batch in recorder.batches:
                assert len(batch) <= recorder.max_batch_count
                assert sum(m.size for m in batch) <= recorder.max_batch_bytes
            assert len({g.event["id"] for g in drain(sub, n) if g.event}) == n

    def test_batches_split_by_bytes(self, target: Target) -> None:
        backend, uri = parse_uri(target.publish_uri)
        recorder = _Recording(backend.open_publisher(uri))
        # messages near the size limit, enough of them that their total exceeds one batch
        pad = min(recorder.max_message_bytes - 4096, recorder.max_batch_bytes // 3)
        count = recorder.max_batch_bytes // pad + 2
        events = [make_event("job-big", i, pad=pad) for i in range(count)]
        with Publisher(recorder, uri, {"concurrency": 1}) as pub, open_subscriber(target.subscribe_uri) as sub:
            results = pub.publish(events)
            assert all(r.ok for r in results), [r.error for r in results]
            assert all(sum(m.size for m in b) <= recorder.max_batch_bytes for b in recorder.batches)
            assert len(recorder.batches) >= 2
            assert len(drain(sub, count)) == count

    def test_attributes_for_broker_filters(self, target: Target) -> None:
        event = make_event("job-attr")
        with open_publisher(target.publish_uri) as pub, open_subscriber(target.subscribe_uri) as sub:
            assert pub.publish_one(event).ok
            [got] = drain(sub, 1)
            if target.caps.attributes:
                for name in ("id", "type", "source", "subject"):
                    assert attr(got.message.attributes, name) == event[name], (name, got.message.attributes)
                # structured mode: SDKs that detect binary mode by a specversion attribute must not see one
                assert attr(got.message.attributes, "specversion") is None, got.message.attributes
            else:
                # no attributes on this backend: the filterable fields are in the stored event itself
                assert got.event is not None
                assert {k: got.event[k] for k in ("id", "type", "source", "subject")} == {
                    k: event[k] for k in ("id", "type", "source", "subject")}

    def test_binary_mode_round_trip(self, target: Target) -> None:
        event = make_event("job-bin", 3)
        if not target.caps.binary_mode:
            with pytest.raises(BatchBridgeError):
                open_publisher(target.with_query(target.publish_uri, mode="binary")).publish_one(event)
            return
        with open_publisher(target.with_query(target.publish_uri, mode="binary")) as pub, \
                open_subscriber(target.subscribe_uri) as sub:
            assert pub.publish_one(event).ok
            [got] = drain(sub, 1)
            assert got.error is None
            assert got.message.body.startswith(b'{"provider"')  # only data in the body
            assert attr(got.message.attributes, "specversion") == "1.0"
            assert got.event == event

    def test_sequence_and_partitionkey_travel(self, target: Target) -> None:
        """The v1.1 extensions arrive in both modes; in binary mode with a trace context as well, which
        on SQS/SNS needs more slots than there are (the derived extensions are then recomputed)."""
        assert make_event("job-seq", 7, state="succeeded")["sequence"] == "01704067207000000.90"
        modes = ["structured", "binary"] if target.caps.binary_mode else ["structured"]
        for i, mode in enumerate(modes):
            event = make_event("job-seq", 2 * i, state="succeeded")  # ids differ per mode (dedup backends)
            traced = {**make_event("job-seq", 2 * i + 1), "traceparent": f"00-{'a' * 32}-{'b' * 16}-01",
                      "tracestate": "k=v"}
            with open_publisher(target.with_query(target.publish_uri, mode=mode)) as pub, \
                    open_subscriber(target.subscribe_uri) as sub:
                assert all(r.ok for r in pub.publish([event, traced])), mode
                got = drain(sub, 2)
            assert sorted((g.event for g in got if g.event), key=lambda e: e["id"]) == sorted(
                [event, traced], key=lambda e: e["id"]), mode
            plain = next(g for g in got if g.event and g.event["id"] == event["id"])
            if target.caps.attributes:
                assert attr(plain.message.attributes, "sequence") == event["sequence"], mode
                assert attr(plain.message.attributes, "partitionkey") == "job-seq", mode

    def test_ordering_per_key(self, target: Target) -> None:
        events = [make_event(f"job-ord-{i % 3}", i) for i in range(30)]
        with open_publisher(target.publish_uri, concurrency=4) as pub, \
                open_subscriber(target.subscribe_uri) as sub:
            assert all(r.ok for r in pub.publish(events))
            got = [g.event for g in drain(sub, len(events)) if g.event]
        assert len(got) == len(events)
        for key in ("job-ord-0", "job-ord-1", "job-ord-2"):
            sent = [e["id"] for e in events if e["data"]["job"]["id"] == key]
            received = [e["id"] for e in got if e["data"]["job"]["id"] == key]
            if target.caps.ordering:
                assert received == sent, key
            else:
                assert sorted(received) == sorted(sent), key

    def test_duplicates_share_one_id(self, target: Target) -> None:
        event = make_event("job-dup", 9)
        with open_publisher(target.publish_uri) as pub, open_subscriber(target.subscribe_uri) as sub:
            assert pub.publish_one(event).ok
            assert pub.publish_one(event).ok
            got = drain(sub, 1 if target.caps.dedup else 2)
            got += settled(sub, pub, "job-dup")
        ids = [g.event["id"] for g in got if g.event]
        assert ids == [event["id"]] if target.caps.dedup else ids == [event["id"]] * 2

    def test_nack_redelivers(self, target: Target) -> None:
        event = make_event("job-nack", 1)
        with open_publisher(target.publish_uri) as pub, open_subscriber(target.subscribe_uri) as sub:
            assert pub.publish_one(event).ok
            [first] = drain(sub, 1, ack=False)
            sub.nack([first])
            [again] = drain(sub, 1, deadline=30.0 if target.caps.redelivery else 90.0)
            assert again.event == event

    def test_non_utf8_body(self, target: Target) -> None:
        backend, uri = parse_uri(target.publish_uri)
        driver = backend.open_publisher(uri)
        body = b"\xff\xfe\x00not-utf8\xc3\x28"
        try:
            [outcome] = driver.send_batch([Message(body, {"ce-id": "raw-1"}, "application/octet-stream")])
        except BatchBridgeError as exc:  # refused as a whole, with a typed error
            outcome = exc
        finally:
            driver.close()
        if target.caps.binary_bodies:
            assert outcome is None
            with open_subscriber(target.subscribe_uri) as sub:
                [got] = drain(sub, 1)
            assert got.message.body == body
            assert got.event is None and got.error is not None
            assert "UTF-8" in got.error.reason
        else:
            assert isinstance(outcome, BatchBridgeError), outcome
            assert not getattr(outcome, "retryable", False)

    def test_oversized_event_refused_others_sent(self, target: Target) -> None:
        backend, uri = parse_uri(target.publish_uri)
        with closing(backend.open_publisher(uri)) as driver:
            limit = driver.max_message_bytes
        small, big = make_event("job-size", 1), make_event("job-size", 2, pad=limit + 1)
        with open_publisher(target.publish_uri) as pub, open_subscriber(target.subscribe_uri) as sub:
            ok, too_big = pub.publish([small, big])
            assert ok.ok
            assert isinstance(too_big.error, MessageTooLargeError)
            assert str(limit) in too_big.error.reason
            assert [g.event["id"] for g in drain(sub, 1) if g.event] == [small["id"]]

    def test_closed_publisher_and_subscriber(self, target: Target) -> None:
        pub = open_publisher(target.publish_uri)
        pub.close()
        with pytest.raises(ClosedError):
            pub.publish([make_event()])
        sub = open_subscriber(target.subscribe_uri)
        sub.close()
        with pytest.raises(ClosedError):
            sub.receive(timeout=0.1)

    def test_missing_entity(self, target: Target) -> None:
        start = time.monotonic()
        with pytest.raises(EntityNotFoundError) as info, open_subscriber(target.missing_subscribe_uri) as sub:
            sub.receive(timeout=1.0)
        assert time.monotonic() - start < 20
        assert info.value.retryable is False

    def test_async_round_trip(self, target: Target) -> None:
        events = [make_event(f"job-async-{i % 2}", i) for i in range(12)]

        async def run() -> list[str]:
            async with open_async_publisher(target.publish_uri) as pub:
                results = await pub.publish(events)
                assert all(r.ok for r in results), [r.error for r in results]
            got: list[str] = []
            async with open_async_subscriber(target.subscribe_uri) as sub:
                end = time.monotonic() + 30
                while len(got) < len(events) and time.monotonic() < end:
                    batch = await sub.receive(max_messages=10, timeout=1.0)
                    await sub.ack(batch)
                    got += [b.event["id"] for b in batch if b.event]
            return got

        assert sorted(asyncio.run(run())) == sorted(e["id"] for e in events)
