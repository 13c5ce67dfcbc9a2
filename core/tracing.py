"""Optional OpenTelemetry tracing, and the one observation hook the publisher and subscriber call.

Tracing is off until :func:`enable` is called (``batchbridge.core.enable_tracing``) and costs nothing
while off; OpenTelemetry is imported only then, and :func:`enable` is a no-op returning False when
it is not installed (``pip install 'batchbridge[otel]'``). Once on:

* each :meth:`Publisher.publish` call is one ``PRODUCER`` span, ``publish <destination>``, with
  ``messaging.system``, ``messaging.destination.name``, ``messaging.message.id`` (the event id; for
  several events ``messaging.batch.message_count``) and the ``cloudevents.*`` attributes;
* the span's W3C trace context is written into each event as the CloudEvents distributed-tracing
  extension (``traceparent``, ``tracestate``) before the event is bound to a message, so it travels
  in the body (structured mode) and as the ``ce-traceparent`` / ``cloudEvents_traceparent``
  attribute. An event that already carries a ``traceparent`` keeps it -- the extension names where
  the event was *created*, and intermediaries (a relay, a bridge) must not rewrite it -- and the
  publish span links to it instead;
* each received event is one ``CONSUMER`` span, ``receive <destination>``, whose parent is the
  context restored from the event's ``traceparent`` (so consumer and producer share the trace id);
  :func:`context_of` returns that span's context, to parent the caller's own processing spans.

Spans use the global ``TracerProvider`` unless :func:`enable` is given one; context always travels
as W3C Trace Context, whatever global propagator is configured, because that is what the CloudEvents
extension specifies.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import logs
from .outcomes import PublishResult, Received
from .secrets import redact

if TYPE_CHECKING:
    from .registry import BackendURI

log = logging.getLogger("batchbridge.tracing")

#: ``messaging.system`` per scheme (OpenTelemetry's well-known values where there is one)
SYSTEMS = {
    "sqs": "aws_sqs",
    "sns": "aws_sns",
    "pubsub": "gcp_pubsub",
    "servicebus": "servicebus",
    "memory": "batchbridge_memory",
    "file": "batchbridge_file",
}
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
#: links and ids recorded on one publish span at most (a batch may hold thousands of events)
MAX_RECORDED = 128
_CONTEXT_KEY = "otel_context"


class _Otel:
    """The imported OpenTelemetry pieces, held only while tracing is enabled."""

    def __init__(self, tracer_provider: Any | None) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.trace = trace
        self.context = context
        self.kind = trace.SpanKind
        self.status = trace.Status
        self.error = trace.StatusCode.ERROR
        self.link = trace.Link
        self.tracer = trace.get_tracer("batchbridge", tracer_provider=tracer_provider)
        self.propagator = TraceContextTextMapPropagator()

    def extract(self, event: Mapping[str, Any]) -> Any | None:
        """The context an event's ``traceparent`` names, or None when it has none (or a broken one)."""
        parent = event.get(TRACEPARENT)
        if not isinstance(parent, str):
            return None
        carrier = {TRACEPARENT: parent}
        state = event.get(TRACESTATE)
        if isinstance(state, str) and state:
            carrier[TRACESTATE] = state
        ctx = self.propagator.extract(carrier)
        return ctx if self.trace.get_current_span(ctx).get_span_context().is_valid else None

    def carrier(self, span: Any) -> dict[str, str]:
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier, context=self.trace.set_span_in_context(span))
        return carrier


_otel: _Otel | None = None


def enable(tracer_provider: Any | None = None) -> bool:
    """Turn tracing on, with ``tracer_provider`` or the global one. Returns False (and changes
    nothing) when OpenTelemetry is not installed.

    >>> from opentelemetry.sdk.trace import TracerProvider
    >>> enable(TracerProvider())
    True
    >>> disable()
    """
    global _otel
    try:
        _otel = _Otel(tracer_provider)
    except ImportError:
        log.info("OpenTelemetry is not installed (pip install 'batchbridge[otel]'); tracing stays off")
        return False
    return True


def disable() -> None:
    """Turn tracing off again."""
    global _otel
    _otel = None


def is_enabled() -> bool:
    return _otel is not None


def context_of(item: Received) -> Any | None:
    """The OpenTelemetry context of a received event's consumer span (a child of its producer's),
    to start processing spans under; None while tracing is off."""
    return item.message.extra.get(_CONTEXT_KEY)


# --- the hooks ---------------------------------------------------------------------------------------


def _base_attributes(uri: BackendURI | None, backend: str) -> dict[str, Any]:
    scheme = uri.scheme if uri is not None else backend.partition("://")[0]
    return {
        "messaging.system": SYSTEMS.get(scheme, scheme),
        "messaging.destination.name": redact(uri.name if uri is not None else backend),
    }


def _event_attributes(event: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "messaging.message.id": event.get("id"),
        "cloudevents.event_id": event.get("id"),
        "cloudevents.event_type": event.get("type"),
        "cloudevents.event_source": event.get("source"),
        "cloudevents.event_subject": event.get("subject"),
        "cloudevents.event_spec_version": event.get("specversion"),
    }


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (bool, int, float, list)) else str(v) for k, v in attributes.items()
            if v is not None}


class Publishing:
    """What :func:`publishing` returns: ``events`` to bind (with trace context when tracing is on);
    the publisher sets ``results`` before the block ends."""

    __slots__ = ("_backend", "_otel", "_span", "_token", "events", "results")

    def __init__(self, events: list[Mapping[str, Any]], backend: str) -> None:
        self.events = events
        self.results: list[PublishResult] = []
        self._backend = backend
        self._otel: _Otel | None = None
        self._span: Any = None
        self._token: Any = None

    def __enter__(self) -> Publishing:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # the tracer that started the span ends it, even if tracing was turned off meanwhile
        span, otel = self._span, self._otel
        if span is not None and otel is not None:
            if exc is not None:
                span.record_exception(exc)
                span.set_status(otel.status(otel.error, type(exc).__name__))
            else:
                failed = [r.error for r in self.results if r.error is not None]
                if failed:
                    span.set_attribute("error.type", failed[0].code)
                    span.set_status(otel.status(otel.error, f"{len(failed)} of {len(self.results)} events "
                                                            "were not published"))
            if self._token is not None:
                otel.context.detach(self._token)
            span.end()
        if exc is None:
            logs.published(self._backend, self.events, self.results)


def committing(events: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    """Before events are committed (the bridge's outbox): with tracing on, one span for their intake,
    whose context each event without one gets as its ``traceparent``/``tracestate``. What is committed
    then already carries the context, so the publisher never rewrites it: every publication of the
    row, a retry or a replay, sends the same bytes. Returns ``events`` (new dicts where stamped)."""
    otel = _otel
    if otel is None or not events:
        return events
    attributes: dict[str, Any] = {"messaging.operation.type": "create", "batchbridge.source": redact(source)}
    if len(events) == 1:
        attributes.update(_event_attributes(events[0]))
    else:
        attributes["messaging.batch.message_count"] = len(events)
    span = otel.tracer.start_span(f"create {redact(source)}", kind=otel.kind.PRODUCER,
                                  attributes=_clean(attributes))
    try:
        if not span.get_span_context().is_valid:
            return events
        carrier = otel.carrier(span)
        return [e if TRACEPARENT in e else {**e, **carrier} for e in events]
    finally:
        span.end()


def publishing(uri: BackendURI | None, backend: str, events: list[Mapping[str, Any]]) -> Publishing:
    """Wrap one publish call: a producer span around it, the span's context injected into the events,
    one log record per event when it ends. ``backend`` is the URI already redacted."""
    obs = Publishing(events, backend)
    otel = _otel
    if otel is None or not events:
        return obs
    attributes = _base_attributes(uri, backend)
    attributes["messaging.operation.type"] = "send"
    attributes["messaging.operation.name"] = "publish"
    if len(events) == 1:
        attributes.update(_event_attributes(events[0]))
    else:
        attributes["messaging.batch.message_count"] = len(events)
        attributes["batchbridge.event_ids"] = [str(e.get("id")) for e in events[:MAX_RECORDED]]
    links: list[Any] = []
    for event in events:
        if len(links) >= MAX_RECORDED:
            break
        ctx = otel.extract(event)
        if ctx is not None:
            links.append(otel.link(otel.trace.get_current_span(ctx).get_span_context()))
    span = otel.tracer.start_span(f"publish {attributes['messaging.destination.name']}", kind=otel.kind.PRODUCER,
                                  attributes=_clean(attributes), links=links)
    obs._otel, obs._span = otel, span
    # current while the batch is sent, so SDK-level spans (botocore, grpc) nest under it
    obs._token = otel.context.attach(otel.trace.set_span_in_context(span))
    if span.get_span_context().is_valid:
        carrier = otel.carrier(span)
        obs.events = [e if TRACEPARENT in e else {**e, **carrier} for e in events]
    return obs


def consumed(uri: BackendURI | None, backend: str, items: list[Received], *, quiet: bool = False) -> list[Received]:
    """After one receive: a consumer span per message, child of the producer's context restored from
    the event, and one log record per message. Returns ``items``."""
    otel = _otel
    if otel is not None and items:
        base = _base_attributes(uri, backend)
        base["messaging.operation.type"] = "receive"
        base["messaging.operation.name"] = "receive"
        name = f"receive {base['messaging.destination.name']}"
        for r in items:
            attributes = dict(base)
            parent = None
            if r.event is not None:
                attributes.update(_event_attributes(r.event))
                parent = otel.extract(r.event)
            else:
                attributes["messaging.message.id"] = r.message.message_id
                if r.error is not None:
                    attributes["error.type"] = r.error.code
            if r.message.message_id:
                attributes["batchbridge.backend_message_id"] = r.message.message_id
            span = otel.tracer.start_span(name, context=parent, kind=otel.kind.CONSUMER,
                                          attributes=_clean(attributes))
            if r.error is not None:
                span.set_status(otel.status(otel.error, r.error.code))
            span.end()
            r.message.extra[_CONTEXT_KEY] = otel.trace.set_span_in_context(span)
    logs.received(backend, items, quiet=quiet)
    return items
