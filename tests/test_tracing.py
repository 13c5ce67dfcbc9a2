"""OpenTelemetry: a producer span per publish, a consumer span per received event, and the W3C trace
context carried across a real backend in the CloudEvents distributed-tracing extension."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from batchbridge.core import (
    disable_tracing,
    enable_tracing,
    open_async_publisher,
    open_async_subscriber,
    open_publisher,
    open_subscriber,
)
from batchbridge.core.tracing import context_of
from conformance import drain, make_event, make_trusted_event

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from aws_servers import AwsServer


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on, with a provider of the test's own: the global provider is never touched, so no
    other test sees trace context in its events."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert enable_tracing(provider) is True
    try:
        yield exporter
    finally:
        disable_tracing()
        provider.shutdown()


def _one(exporter: InMemorySpanExporter, kind: SpanKind) -> ReadableSpan:
    found = [s for s in exporter.get_finished_spans() if s.kind == kind]
    assert len(found) == 1, [(s.name, s.kind) for s in exporter.get_finished_spans()]
    return found[0]


def _traceparent(span: ReadableSpan) -> str:
    ctx = span.get_span_context()
    assert ctx is not None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _assert_child(consumer: ReadableSpan, producer: ReadableSpan) -> None:
    p, c = producer.get_span_context(), consumer.get_span_context()
    assert p is not None and c is not None
    assert c.trace_id == p.trace_id
    assert consumer.parent is not None and consumer.parent.span_id == p.span_id


def test_memory_producer_and_consumer_share_the_trace(spans: InMemorySpanExporter) -> None:
    uri = f"memory://trace-{uuid.uuid4().hex[:8]}"
    event = make_event("traced")
    original = dict(event)
    with open_publisher(uri) as pub, open_subscriber(uri) as sub:
        [result] = pub.publish([event])
        assert result.ok, result.error
        [got] = drain(sub, 1, deadline=5)
    assert event == original, "the caller's event must not be modified"

    producer = _one(spans, SpanKind.PRODUCER)
    consumer = _one(spans, SpanKind.CONSUMER)
    _assert_child(consumer, producer)
    assert producer.name == f"publish {uri.removeprefix('memory://')}"
    attrs = dict(producer.attributes or {})
    assert attrs["messaging.system"] == "batchbridge_memory"
    assert attrs["messaging.destination.name"] == uri.removeprefix("memory://")
    assert attrs["messaging.message.id"] == event["id"]
    assert attrs["cloudevents.event_type"] == event["type"]
    assert dict(consumer.attributes or {})["messaging.message.id"] == event["id"]

    assert got.event is not None
    assert got.event["traceparent"] == _traceparent(producer)
    assert {k: v for k, v in got.event.items() if k != "traceparent"} == event
    assert got.message.attributes["ce-traceparent"] == got.event["traceparent"]
    ctx = context_of(got)
    assert trace.get_current_span(ctx).get_span_context().span_id == consumer.get_span_context().span_id  # type: ignore[union-attr]


def test_existing_trace_context_is_kept_and_linked(spans: InMemorySpanExporter) -> None:
    """The extension names where the event was created: a relay or bridge must not rewrite it."""
    uri = f"memory://trace-{uuid.uuid4().hex[:8]}"
    origin = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    event = {**make_event("relayed"), "traceparent": origin, "tracestate": "congo=t61rcWkgMzE"}
    with open_publisher(uri) as pub, open_subscriber(uri) as sub:
        assert pub.publish_one(event).ok
        [got] = drain(sub, 1, deadline=5)
    assert got.event == event
    producer = _one(spans, SpanKind.PRODUCER)
    assert [link.context.span_id for link in producer.links] == [0xB7AD6B7169203331]
    consumer = _one(spans, SpanKind.CONSUMER)
    assert consumer.get_span_context().trace_id == 0x0AF7651916CD43DD8448EB211C80319C  # type: ignore[union-attr]
    assert consumer.parent is not None and consumer.parent.span_id == 0xB7AD6B7169203331
    assert consumer.get_span_context().trace_state.get("congo") == "t61rcWkgMzE"  # type: ignore[union-attr]


def test_publish_batch_is_one_span_and_refusals_mark_it(spans: InMemorySpanExporter) -> None:
    uri = f"memory://trace-{uuid.uuid4().hex[:8]}?max_bytes=4000"
    events = [make_event("batch", i) for i in range(5)] + [make_event("huge", pad=8000)]
    with open_publisher(uri) as pub:
        results = pub.publish(events)
    assert [r.ok for r in results] == [True] * 5 + [False]
    producer = _one(spans, SpanKind.PRODUCER)
    attrs = dict(producer.attributes or {})
    assert attrs["messaging.batch.message_count"] == 6
    assert list(attrs["batchbridge.event_ids"]) == [e["id"] for e in events]  # type: ignore[arg-type]
    assert producer.status.status_code == StatusCode.ERROR
    assert attrs["error.type"] == "message_too_large"


def test_asyncio_variants_carry_the_context(spans: InMemorySpanExporter) -> None:
    uri = f"memory://trace-{uuid.uuid4().hex[:8]}"

    async def run() -> list[Any]:
        async with open_async_publisher(uri) as pub, open_async_subscriber(uri) as sub:
            assert (await pub.publish_one(make_event("async"))).ok
            got = await sub.receive(timeout=2)
            await sub.ack(got)
            return got

    got = asyncio.run(run())
    assert len(got) == 1
    _assert_child(_one(spans, SpanKind.CONSUMER), _one(spans, SpanKind.PRODUCER))


def test_publish_span_is_a_child_of_the_callers_span(spans: InMemorySpanExporter) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    uri = f"memory://trace-{uuid.uuid4().hex[:8]}"
    with open_publisher(uri) as pub, provider.get_tracer("app").start_as_current_span("handle request") as app:
        assert pub.publish_one(make_event("child")).ok
    producer = _one(spans, SpanKind.PRODUCER)
    assert producer.parent is not None and producer.parent.span_id == app.get_span_context().span_id


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_sqs_on_moto_carries_traceparent_and_tracestate(moto_server: AwsServer, spans: InMemorySpanExporter,
                                                        mode: str) -> None:
    """SQS carries 10 attributes: the driver keeps 9 for the binding, with the routing ones first; the
    whole context (7) plus both tracing attributes fit, in binary mode where only attributes carry them."""
    queue = moto_server.queue()
    uri = moto_server.uri("sqs", queue.name, mode=mode)
    upstream = TraceContextTextMapPropagator().extract({
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "tracestate": "rojo=00f067aa0ba902b7",
    })
    provider = TracerProvider()
    with open_publisher(uri) as pub, open_subscriber(uri) as sub:
        with provider.get_tracer("app").start_as_current_span("upstream", context=upstream):
            [result] = pub.publish([make_event("sqs-traced")])
        assert result.ok, result.error
        [got] = drain(sub, 1, deadline=20)
    producer = _one(spans, SpanKind.PRODUCER)
    consumer = _one(spans, SpanKind.CONSUMER)
    _assert_child(consumer, producer)
    assert producer.get_span_context().trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736  # type: ignore[union-attr]
    assert dict(producer.attributes or {})["messaging.system"] == "aws_sqs"
    assert dict(producer.attributes or {})["messaging.destination.name"] == queue.name
    assert got.event is not None
    assert got.event["traceparent"] == _traceparent(producer)
    assert got.event["tracestate"] == "rojo=00f067aa0ba902b7"
    attributes = got.message.attributes
    assert attributes["ce-traceparent"] == got.event["traceparent"]
    assert attributes["ce-tracestate"] == "rojo=00f067aa0ba902b7"
    assert {"ce-id", "ce-type", "ce-source", "ce-subject"} <= set(attributes)
    assert consumer.get_span_context().trace_state.get("rojo") == "00f067aa0ba902b7"  # type: ignore[union-attr]


def test_off_by_default_and_a_no_op_without_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"memory://trace-{uuid.uuid4().hex[:8]}"
    event = make_event("untraced")
    with open_publisher(uri) as pub, open_subscriber(uri) as sub:
        assert pub.publish_one(event).ok
        [got] = drain(sub, 1, deadline=5)
    assert got.event == event
    assert "ce-traceparent" not in got.message.attributes
    assert context_of(got) is None

    # an installation without the extra: importing opentelemetry fails
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    assert enable_tracing() is False
    with open_publisher(uri) as pub:
        assert pub.publish_one(event).ok


def test_the_bridge_commits_the_context_and_publishes_exactly_what_it_committed(
        spans: InMemorySpanExporter, tmp_path: Any) -> None:
    """docs/reliability.md: a republished event is byte-identical to the first publication -- with
    tracing on too. The trace context is attached at intake, before the outbox commit; the publisher
    then finds it there and changes nothing."""
    import time

    import orjson
    from batchbridge.core.bridge import Bridge
    from batchbridge.core.config import config_from_dict
    from batchbridge.core.outbox import OutboxRow

    out = tmp_path / "out.jsonl"
    committed: list[bytes] = []
    config = config_from_dict({"outbox": {"path": str(tmp_path / "o.db")}, "routes": [{"to": out.as_uri()}]})
    event = make_trusted_event("committed")
    with Bridge(config) as bridge:
        def record(rows: list[tuple[int, OutboxRow]]) -> None:
            committed.extend(row.body for _, row in rows)

        bridge.outbox.on_commit(record)
        bridge.handle(orjson.dumps(event))
        end = time.monotonic() + 20
        while not (out.exists() and out.read_bytes().endswith(b"\n")):
            assert time.monotonic() < end, "not delivered"
            time.sleep(0.02)
    [line] = out.read_bytes().splitlines()
    assert committed == [line]  # what went out is, byte for byte, what was committed
    sent = orjson.loads(line)
    created = [s for s in spans.get_finished_spans() if s.name.startswith("create ")]
    assert len(created) == 1 and sent["traceparent"] == _traceparent(created[0])
    assert {k: v for k, v in sent.items() if k != "traceparent"} == event
    # a republication of the committed event (a retry, a replay) sends the same bytes again
    again = tmp_path / "again.jsonl"
    with open_publisher(again.as_uri()) as pub:
        assert pub.publish_one(sent).ok
    assert again.read_bytes().splitlines() == [line]
