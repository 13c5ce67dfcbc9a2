"""Google Cloud Functions / Cloud Run handlers for Google Cloud Batch notifications on Pub/Sub.

Cloud Batch publishes job and task state changes to a Pub/Sub topic (the job's ``notifications``),
with the state in the message attributes. Two ways to receive them::

    from batchbridge.contrib.gcp_functions import make_cloudevent_handler, make_push_handler

    # 1st gen HTTP function / Cloud Run service behind a push subscription
    # (functions-framework: --signature-type=http)
    push = make_push_handler("sqs://batch-events?region=eu-west-1")

    # 2nd gen function / Eventarc trigger on the topic (--signature-type=cloudevent):
    # the CloudEvent google.cloud.pubsub.topic.v1.messagePublished, whose data holds the message
    on_message = make_cloudevent_handler("sqs://batch-events?region=eu-west-1")

The push handler takes any request object with ``.data`` (bytes) or ``.get_json()`` -- Flask's,
functions-framework's, or your own -- and returns ``(body, status, headers)``: 204 once the events
are published; 200 with the reason for a message that cannot be decoded (it is kept in the dead-letter
store; acknowledging it stops Pub/Sub redelivering it forever); 503 when a destination did not
confirm in time, so Pub/Sub redelivers. The CloudEvent handler raises a
:class:`~batchbridge.core.errors.BackendError` in that last case, which makes Eventarc retry.

Push subscriptions must answer within their acknowledgement deadline (10 s by default), hence the
short default ``drain_timeout``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from batchbridge.core.bridge import Bridge, Payload
from batchbridge.core.errors import BatchBridgeError, ConfigError

from ._common import Runtime, Target, as_bytes, b64, intake

__all__ = ["CloudEventHandler", "PushHandler", "make_cloudevent_handler", "make_push_handler"]

log = logging.getLogger("batchbridge.contrib.gcp_functions")

MESSAGE_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
_JSON = {"Content-Type": "application/json"}


def _message(envelope: Mapping[str, Any], raw: Payload) -> tuple[Payload, dict[str, Any]]:
    """The bridge's input for one push envelope / messagePublished data (``{"message": {...}}``)."""
    message = envelope.get("message")
    if not isinstance(message, Mapping):
        return raw, {}
    attributes = {str(k): str(v) for k, v in (message.get("attributes") or {}).items()}
    meta = {"message_id": message.get("messageId") or message.get("message_id"),
            "subscription": envelope.get("subscription")}
    # the whole envelope, not the decoded data, when it is a vendor payload: the Cloud Batch decoder
    # reads its attributes and publish time
    return intake(b64(message.get("data")), attributes, original=raw, meta=meta)


def _envelope(raw: bytes) -> Mapping[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, Mapping) else {}


class _Handler:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @property
    def bridge(self) -> Bridge:
        return self.runtime.bridge

    def close(self) -> None:
        self.runtime.close()


class PushHandler(_Handler):
    """``handler(request) -> (body, status, headers)`` for Pub/Sub push requests."""

    def __call__(self, request: Any) -> tuple[str, int, dict[str, str]]:
        raw = _body(request)
        payload, meta = _message(_envelope(raw), raw)
        try:
            [result] = self.runtime.handle([(payload, meta)])
        except BatchBridgeError as exc:
            log.error("cannot accept a push: %s", exc, extra={"error_code": exc.code})
            return _answer(503, {"error": exc.code, "reason": "the outbox cannot be written; retry later"})
        if result.error is not None:
            e = result.error
            return _answer(200, {"error": e.code, "reason": e.reason, "where": e.where, "dead_lettered": True})
        if result.deliveries and not self.runtime.flush():
            err = self.runtime.not_delivered()
            return _answer(503, {"error": err.code, "reason": err.reason})
        return "", 204, {}


class CloudEventHandler(_Handler):
    """``handler(cloud_event)`` for ``messagePublished`` CloudEvents; returns a summary."""

    def __call__(self, cloud_event: Any) -> dict[str, int]:
        kind = _attribute(cloud_event, "type")
        if kind is not None and kind != MESSAGE_PUBLISHED:
            raise ConfigError(f"this handler takes {MESSAGE_PUBLISHED} CloudEvents, got {kind!r}: check the "
                              "trigger's event type", where="gcp cloudevent handler")
        data = cloud_event.get("data") if isinstance(cloud_event, Mapping) else getattr(cloud_event, "data", None)
        if isinstance(data, (bytes, str)):
            data = _envelope(as_bytes(data))
        envelope = data if isinstance(data, Mapping) else {}
        payload, meta = _message(envelope, dict(envelope))
        meta["cloudevent_id"] = _attribute(cloud_event, "id")
        [result] = self.runtime.handle([(payload, meta)])
        if result.deliveries and not self.runtime.flush():
            raise self.runtime.not_delivered()
        return {"events": result.events, "deliveries": result.deliveries,
                "dead_lettered": int(result.error is not None)}


def _attribute(cloud_event: Any, name: str) -> str | None:
    """A context attribute of a ``cloudevents`` SDK event (``ce["type"]``) or of a plain dict."""
    try:
        value = cloud_event[name]
    except (KeyError, TypeError, AttributeError):
        getter = getattr(cloud_event, "get_attributes", None)
        value = getter().get(name) if callable(getter) else None
    return None if value is None else str(value)


def _body(request: Any) -> bytes:
    data = getattr(request, "data", None)
    if isinstance(data, (bytes, bytearray)) and data:
        return bytes(data)
    get_json = getattr(request, "get_json", None)
    if callable(get_json):
        doc = get_json(silent=True)
        if doc is not None:
            return as_bytes(doc)
    return b"" if data is None else as_bytes(data)


def _answer(status: int, body: Mapping[str, Any]) -> tuple[str, int, dict[str, str]]:
    return json.dumps(body), status, dict(_JSON)


def make_push_handler(target: Target, *, outbox: str | Path | None = None,
                      drain_timeout: float = 8.0) -> PushHandler:
    """An HTTP handler for Pub/Sub push requests. ``target``: a backend URI, a list of them, a config
    file, a config document, a ``BridgeConfig`` or a ``Bridge``; ``outbox``: the outbox file (default:
    in ``$BATCHBRIDGE_OUTBOX_DIR`` or the temp directory); ``drain_timeout``: seconds one request waits
    for the destinations (keep it under the subscription's acknowledgement deadline)."""
    return PushHandler(Runtime(target, outbox=outbox, drain_timeout=drain_timeout, kind="gcp-push"))


def make_cloudevent_handler(target: Target, *, outbox: str | Path | None = None,
                            drain_timeout: float = 8.0) -> CloudEventHandler:
    """A handler for Eventarc / 2nd gen ``messagePublished`` CloudEvents; arguments as for
    :func:`make_push_handler`."""
    return CloudEventHandler(Runtime(target, outbox=outbox, drain_timeout=drain_timeout, kind="gcp-cloudevent"))
