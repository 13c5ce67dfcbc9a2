"""The CloudEvents protocol bindings, once for every backend.

Structured mode (default): the body is the whole event as JSON (``application/cloudevents+json``)
and ``id``/``type``/``source``/``subject`` are copied into attributes so broker-side filters can
route without reading the body. Binary mode: every attribute goes into message metadata and only
``data`` into the body.

Structured-mode messages never carry ``specversion`` as an attribute: SDKs that take its presence
for binary mode (the Go SDK, the Python SDK's core reader) would read the whole event as its data.
The content type ``application/cloudevents+json`` is what says "structured".

Backends name attributes differently: ``ce-id`` (Pub/Sub binding, and what SNS/SQS users filter
on), ``cloudEvents_id`` (Service Bus's usual AMQP spelling) or ``cloudEvents:id`` (the AMQP
binding's own, the only one some AMQP readers know). Receivers accept every prefix, so a message
published by any version or mode decodes to the same event. :func:`amqp_properties` turns AMQP
application properties in native types (timestamp, binary, uuid) into the attributes' string forms.
"""

from __future__ import annotations

import base64
import datetime
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from .driver import Message
from .errors import DecodeMessageError, MessageTooLargeError
from .event import DATASCHEMA, ordering_key
from .sequence import with_extensions

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
JSON = "application/json"
#: the attribute that carries the content type on backends without a field of their own (the
#: CloudEvents Pub/Sub binding's name; SQS/SNS use the same)
CONTENT_TYPE_ATTRIBUTE = "content-type"
PREFIXES = ("ce-", "ce_", "cloudEvents_", "cloudEvents:")
#: the AMQP prefixes by their option name (``?amqp_prefix=`` on an AMQP backend's URI)
AMQP_PREFIXES = {"underscore": "cloudEvents_", "colon": "cloudEvents:"}

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
    """The structured-mode filter attributes: every fixed name but ``specversion`` (see the module doc)."""
    names = _NAMES.get(prefix)
    if names is None:
        names = _NAMES[prefix] = tuple(
            (n, f"{prefix}{n}") for n in (*_ROUTING, *_CONTEXT) if n != "specversion"
        )
    return names


def to_message(
    event: Mapping[str, Any],
    *,
    mode: str = "structured",
    prefix: str = "ce-",
    max_attributes: int = 64,
    content_type_attribute: bool = False,
) -> Message:
    """Bind one CloudEvent to a backend message.

    ``max_attributes`` is every attribute the backend carries per message. With
    ``content_type_attribute`` (a backend without a content-type field of its own) one of them is
    ``content-type``, claimed before any binding attribute: it is what tells a structured message from
    a binary one to readers that do not know batchbridge's own messages.
    """
    if content_type_attribute:
        max_attributes -= 1
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
    if content_type_attribute:
        attributes[CONTENT_TYPE_ATTRIBUTE] = content_type
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


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
#: attributes whose CloudEvents type is Timestamp (an AMQP ``timestamp``: milliseconds since the epoch)
_TIMESTAMPS = frozenset({"time"})


def _rfc3339(moment: datetime.datetime) -> str:
    stamp = moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)
    utc = stamp.astimezone(datetime.timezone.utc)
    fraction = f".{utc.microsecond // 1000:03d}" if utc.microsecond else ""
    return f"{utc:%Y-%m-%dT%H:%M:%S}{fraction}Z"


def amqp_value(name: str, value: Any) -> str:
    """One AMQP application property value as its CloudEvents canonical string form.

    ``name`` is the attribute name without prefix. The AMQP binding's types: ``timestamp`` ->
    RFC 3339 (an SDK that decodes it to epoch milliseconds, as azure-servicebus does, hands an
    integer for an attribute whose type is Timestamp, which can be nothing else), ``binary`` ->
    Base64, ``uuid`` -> its text, ``boolean`` -> ``true``/``false``, ``long`` -> decimal. Some SDKs
    hand AMQP strings as UTF-8 bytes too: bytes that are UTF-8 are text, any other bytes binary.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode("ascii")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime.datetime):
        return _rfc3339(value)
    if isinstance(value, int) and name in _TIMESTAMPS:
        try:
            return _rfc3339(_EPOCH + datetime.timedelta(milliseconds=value))
        except OverflowError:
            raise DecodeMessageError(f"AMQP timestamp {value} is out of range", where=f"attributes.{name}") from None
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


def amqp_properties(properties: Mapping[Any, Any] | None) -> dict[str, str]:
    """AMQP application properties (keys and values as the SDK decoded them) as string attributes;
    a CloudEvents attribute's value follows its type (:func:`amqp_value`), null values are dropped."""
    attributes: dict[str, str] = {}
    for key, value in (properties or {}).items():
        if value is None:
            continue
        name = amqp_value("", key)
        attributes[name] = amqp_value(_strip_prefix(name) or "", value)
    return attributes


def _strip_prefix(name: str) -> str | None:
    for p in PREFIXES:
        if name.startswith(p):
            return name[len(p):]
    return None


def content_type_of(attributes: Mapping[str, str]) -> str | None:
    """The content type a backend without its own field carried as an attribute."""
    return attributes.get(CONTENT_TYPE_ATTRIBUTE) or attributes.get("content_type")


def from_message(body: bytes, attributes: Mapping[str, str], content_type: str | None = None) -> dict[str, Any]:
    """Decode a received message, in either mode and with any attribute prefix, to the CloudEvent."""
    ce_attrs = {}
    for k, v in attributes.items():
        name = _strip_prefix(k)
        if name is not None:
            ce_attrs[name] = v
    content_type = content_type or content_type_of(attributes)
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
