"""The CloudEvents protocol bindings, once for every backend.

Structured mode (default): the body is the whole event as JSON (``application/cloudevents+json``)
and ``id``/``type``/``source``/``subject`` are copied into attributes so broker-side filters can
route without reading the body. Binary mode: every attribute goes into message metadata and only
``data`` into the body.

Backends name attributes differently: ``ce-id`` (Pub/Sub binding, and what SNS/SQS users filter
on) or ``cloudEvents_id`` (AMQP binding, Service Bus). Receivers accept every prefix, so a message
published by any version or mode decodes to the same event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from .driver import Message
from .errors import DecodeMessageError, MessageTooLargeError
from .event import DATASCHEMA, ordering_key
from .sequence import with_extensions

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
JSON = "application/json"
PREFIXES = ("ce-", "ce_", "cloudEvents_", "cloudEvents:")

#: attributes always present, in the order they claim the backend's attribute slots
_ROUTING = ("id", "type", "source", "subject")
_CONTEXT = ("specversion", "time", "dataschema")
_REQUIRED = ("specversion", "id", "source", "type")


#: extensions a receiver can recompute from the event itself (``time``, ``data``): in binary mode
#: they give up their attribute slots first when a backend has too few (SQS/SNS carry ten)
_DERIVED = ("partitionkey", "sequence")
_DROP_ORDER = ("sequence", "partitionkey")

_KNOWN = frozenset({*_ROUTING, *_CONTEXT, "data", "datacontenttype", "data_base64"})
#: attribute names in claim order, then their prefixed names, per prefix (a handful of backends)
_NAMES: dict[str, tuple[tuple[str, str], ...]] = {}


def _extensions(event: Mapping[str, Any]) -> list[str]:
    """Extension names in claim order: the derived ones last, so that where slots run short (SQS/SNS)
    they give way to those a receiver could not recompute (the trace context)."""
    names = [k for k in event if k not in _KNOWN and k not in _DERIVED]
    return names + [k for k in _DERIVED if k in event]


def _prefixed(prefix: str) -> tuple[tuple[str, str], ...]:
    names = _NAMES.get(prefix)
    if names is None:
        names = _NAMES[prefix] = tuple((n, f"{prefix}{n}") for n in (*_ROUTING, *_CONTEXT))
    return names


def to_message(
    event: Mapping[str, Any],
    *,
    mode: str = "structured",
    prefix: str = "ce-",
    max_attributes: int = 64,
) -> Message:
    """Bind one CloudEvent to a backend message."""
    if mode == "binary":
        names = [n for n in (*_ROUTING, *_CONTEXT, *_extensions(event)) if event.get(n) is not None]
        for derived in _DROP_ORDER:
            if len(names) > max_attributes and derived in names:
                names.remove(derived)
        if len(names) > max_attributes:
            raise MessageTooLargeError(
                f"binary mode needs {len(names)} attributes but the backend carries at most {max_attributes}",
                where=f"event {event.get('id')}",
            )
        attributes = {f"{prefix}{n}": _attr(event[n]) for n in names}
        body = orjson.dumps(event.get("data"))
        content_type = str(event.get("datacontenttype") or JSON)
    else:
        attributes = {}
        get = event.get
        # the fixed names first, with their prefixed forms made once per prefix, then extensions
        for n, name in _prefixed(prefix):
            if len(attributes) >= max_attributes:
                break
            value = get(n)
            if value is not None:
                attributes[name] = value if value.__class__ is str else _attr(value)
        else:
            for n in _extensions(event):
                if len(attributes) >= max_attributes:
                    break
                value = get(n)
                if value is not None:
                    attributes[f"{prefix}{n}"] = value if value.__class__ is str else _attr(value)
        body = orjson.dumps(event)
        content_type = STRUCTURED_CONTENT_TYPE
    return Message(
        body=body,
        attributes=attributes,
        content_type=content_type,
        ordering_key=ordering_key(event),
        dedup_id=str(event["id"]) if event.get("id") else None,
        event_type=str(event["type"]) if event.get("type") else None,
    )


def _attr(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _strip_prefix(name: str) -> str | None:
    for p in PREFIXES:
        if name.startswith(p):
            return name[len(p):]
    return None


def from_message(body: bytes, attributes: Mapping[str, str], content_type: str | None = None) -> dict[str, Any]:
    """Decode a received message, in either mode and with any attribute prefix, to the CloudEvent."""
    ce_attrs = {}
    for k, v in attributes.items():
        name = _strip_prefix(k)
        if name is not None:
            ce_attrs[name] = v
    content_type = content_type or attributes.get("content-type") or attributes.get("content_type")
    binary = "specversion" in ce_attrs and not (content_type or "").startswith(STRUCTURED_CONTENT_TYPE)
    if binary and content_type is None:
        # brokers that carry no content type (or dropped it): a structured body is a whole event
        # with this id; binary-mode data (a BatchEvent) has no specversion
        try:
            whole = orjson.loads(body)
        except orjson.JSONDecodeError:
            whole = None
        if isinstance(whole, dict) and "specversion" in whole and whole.get("id") == ce_attrs.get("id"):
            _check(whole)
            return whole
    if binary:
        event: dict[str, Any] = dict(ce_attrs)
        event["datacontenttype"] = content_type or JSON
        if body:
            event["data"] = _loads(body, "binary-mode data")
        _check(event)
        if event.get("dataschema") == DATASCHEMA and ("sequence" not in event or "partitionkey" not in event):
            return with_extensions(event)  # they gave up their slots to the backend's attribute limit
        return event
    decoded = _loads(body, "structured-mode body")
    if not isinstance(decoded, dict):
        raise DecodeMessageError("message body is JSON but not a CloudEvent object", where="body")
    _check(decoded)
    return decoded


def _loads(body: bytes, what: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        kind = "not UTF-8" if _not_utf8(body) else "not JSON"
        raise DecodeMessageError(f"{what} is {kind}: {exc}", where="body") from None


def _not_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _check(event: Mapping[str, Any]) -> None:
    missing = [a for a in _REQUIRED if not event.get(a)]
    if missing:
        raise DecodeMessageError(f"not a CloudEvent: missing {', '.join(missing)}", where="attributes")
