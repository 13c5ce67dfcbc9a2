"""Delivery envelopes: how a vendor event reaches us, unwrapped layer by layer down to the native event.

Recognised layers (auto-detected, nested in any order up to :data:`MAX_UNWRAP_DEPTH`):

- JSON text; a JSON string holding another payload;
- Base64 text (Tencent's console shows CMQ bodies this way; MNS publishers may encode bodies);
- CMQ HTTP push, JSON format (``msgBody`` plus ``msgId``/``topicName``/...; SIMPLIFIED is the body itself);
- MNS HTTP push: XML ``<Notification>``, its JSON form, and SIMPLIFIED (the body itself); MNS queue XML;
- EventBridge events (``aws.batch`` ones are native; custom-bus events carry a payload in ``detail``);
- SNS HTTP notifications (``Type: Notification``), also as an SQS message body (a queue subscribed
  without raw delivery);
- AWS Lambda events: SQS batches (``{"Records": [{"eventSource": "aws:sqs", "body": ...}]}``) and SNS
  deliveries (``{"Records": [{"EventSource": "aws:sns", "Sns": {...}}]}``), one event per record;
- Pub/Sub push (``{"message": ..., "subscription": ...}``), pulled messages (``{"attributes", "data"}``)
  and pull responses' received messages (``{"ackId", "message"}``);
- Azure Monitor log exports ``{"records": [...]}``.

Detection never guesses: a layer is opened only when its shape is unambiguous, a native event is
whatever a vendor module claims (``is_native``), and anything else raises UnrecognizedFormatError.
The guards here (size, nesting depth, UTF-8, entity-free XML) are what keep every failure an
:class:`~batchbridge.core.errors.InputError`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple
from xml.etree.ElementTree import Element, ParseError

import orjson
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as parse_xml

from .errors import MalformedPayloadError, PayloadTooLargeError, UnrecognizedFormatError, UnsupportedEventError

#: the largest payload accepted (Pub/Sub's own message limit; every other bus allows less)
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024
#: the most envelope layers unwrapped inside one another
MAX_UNWRAP_DEPTH = 8
#: the deepest JSON nesting accepted; real events stay under 10, and a bound keeps every walk iterative-safe
MAX_JSON_DEPTH = 64

Payload = bytes | bytearray | memoryview | str | Mapping[str, Any]


class Leaf(NamedTuple):
    """One native event (or a vendor's own multi-event container) found inside the envelopes."""

    obj: dict[str, Any]
    #: where it sat, e.g. ``$.msgBody / base64 / $`` — error locations continue from here
    where: str
    #: what ``is_native`` returned for it (None for an unknown object kept for a forced provider),
    #: so a caller whose test says *which* vendor claims it need not run the test again
    claim: Any = None


# --- safe primitives -------------------------------------------------------------------------------


def check_size(size: int, where: str) -> None:
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadTooLargeError(f"payload of {size} bytes exceeds the limit of {MAX_PAYLOAD_BYTES}", where=where)


def _depth_ok(value: Any) -> bool:
    # level by level: no per-node tuples, and each level's scan is one comprehension
    level = [value] if isinstance(value, (dict, list)) else []
    depth = 1
    while level:
        if depth > MAX_JSON_DEPTH:
            return False
        below: list[Any] = []
        for node in level:
            children = node.values() if isinstance(node, dict) else node
            below += [child for child in children if isinstance(child, (dict, list))]
        level = below
        depth += 1
    return True


def load_json(data: bytes | str, where: str) -> Any:
    """Parse JSON strictly: UTF-8 only, no NaN or Infinity, nesting bounded by MAX_JSON_DEPTH, and no
    object with a key twice (read last-key-wins, ``{"EventName": "JOB_FAILED", ..., "EventName":
    "JOB_SUCCEED"}`` would be a success)."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedPayloadError(f"invalid JSON: {exc}", where=where) from None
    if value.__class__ is dict or value.__class__ is list:  # a scalar has neither depth nor keys
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
        # nesting cannot exceed the number of opening brackets in the text (those inside strings only
        # raise the bound), so the walk is needed only for the rare document with many of them; one
        # pass deleting both counts them for a fifth less than two counts
        if len(raw) - len(raw.translate(None, b"{[")) > MAX_JSON_DEPTH and not _depth_ok(value):
            raise MalformedPayloadError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels", where=where)
        if _may_repeat_keys(raw, value):
            _check_duplicate_keys(data, value, where)
    return value


def _may_repeat_keys(data: bytes | str, value: Any) -> bool:
    """A cheap test that clears nearly every document: every key is followed by exactly one structural
    colon, and a colon inside a string is written as itself both in the text and in orjson's
    re-serialisation (which keeps the last of repeated keys and never escapes ``:``). So a text with
    more colons than that re-serialisation lost a repeated key -- whatever its whitespace. Only a colon
    written as a ``\\u003a`` escape would hide one, so a text with such an escape takes the exact test."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    # a one-byte search runs as memchr, far faster than the five-byte one, and most texts hold no
    # backslash at all
    if b"\\" in raw and b"\\u003" in raw:
        return True
    again = orjson.dumps(value)
    # a compact text (what machines send) is often its own re-serialisation, which holds every key
    # once: one comparison spares both counts
    return again != raw and raw.count(b":") != again.count(b":")


class _Repeated(Exception):
    def __init__(self, key: str, keys: frozenset[str]) -> None:
        self.key = key
        self.keys = keys


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in pairs:
        if key in out:
            raise _Repeated(key, frozenset(k for k, _ in pairs))
        out[key] = item
    return out


def _check_duplicate_keys(data: bytes | str, value: Any, where: str) -> None:
    """The exact test (the standard library's parser, which shows every pair): MalformedPayloadError
    naming the repeated key and the JSON path of its object."""
    import json

    try:
        json.loads(data, object_pairs_hook=_pairs)
    except _Repeated as dup:
        path = _path_of(value, dup.keys, where) or where
        raise MalformedPayloadError(f"key {dup.key[:80]!r} appears more than once in one object", where=path) from None
    except (ValueError, RecursionError):
        return  # orjson read it; the exact test has nothing more to say


def _path_of(value: Any, keys: frozenset[str], path: str) -> str | None:
    """The path of the first object (depth first) holding exactly ``keys``."""
    if isinstance(value, dict):
        if frozenset(value) == keys:
            return path
        children: Any = ((f"{path}.{k}", v) for k, v in value.items())
    elif isinstance(value, list):
        children = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for child_path, child in children:
        found = _path_of(child, keys, child_path)
        if found is not None:
            return found
    return None


def mapping_to_json(payload: Mapping[str, Any], where: str = "$") -> dict[str, Any]:
    """A JSON-only deep copy of a caller's mapping, so events never share or carry non-JSON objects."""
    try:
        encoded = orjson.dumps(dict(payload))
    except Exception as exc:  # arbitrary caller objects can fail in arbitrary ways while serialising
        raise MalformedPayloadError(f"not JSON-serialisable: {exc}", where=where) from None
    check_size(len(encoded), where)
    value = load_json(encoded, where)
    assert isinstance(value, dict)
    return value


_BASE64 = re.compile(rb"[A-Za-z0-9+/_-]+={0,2}")
_WHITESPACE = re.compile(rb"\s+")
_LINE_BREAKS = re.compile(rb"[\r\n]+")


def looks_base64(data: bytes) -> bool:
    """Base64 alphabet only (line-wrapped at most: words separated by spaces are prose, not Base64)."""
    compact = _LINE_BREAKS.sub(b"", data.strip())
    return len(compact) >= 4 and len(compact) % 4 != 1 and _BASE64.fullmatch(compact) is not None


def _plausible_text_payload(data: bytes) -> bool:
    text = data.strip()
    if text.startswith(b"\xef\xbb\xbf"):
        text = text[3:].lstrip()
    return text[:1] in (b"{", b"[", b'"', b"<") or looks_base64(text)


def decode_base64(data: bytes | str, where: str) -> bytes:
    """Standard or URL-safe Base64, padding optional, line breaks allowed."""
    raw = data.encode("ascii", "replace") if isinstance(data, str) else data
    compact = _WHITESPACE.sub(b"", raw)
    if not _BASE64.fullmatch(compact) and compact:
        raise MalformedPayloadError("invalid Base64: unexpected characters", where=where)
    compact = compact.rstrip(b"=")
    if len(compact) % 4 == 1:
        raise MalformedPayloadError("invalid Base64: impossible length", where=where)
    compact += b"=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact.replace(b"-", b"+").replace(b"_", b"/"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedPayloadError(f"invalid Base64: {exc}", where=where) from None


def as_bytes(payload: bytes | bytearray | memoryview | str, where: str) -> bytes:
    if isinstance(payload, str):
        check_size(len(payload), where)
        try:
            data = payload.encode("utf-8")
        except UnicodeEncodeError:
            raise MalformedPayloadError("text is not valid Unicode (lone surrogate)", where=where) from None
    else:
        data = bytes(payload)
    check_size(len(data), where)
    return data


def _parse_xml(data: bytes, where: str) -> Element:
    try:
        root: Element = parse_xml(data, forbid_dtd=True)
    except (ParseError, DefusedXmlException, ValueError, LookupError) as exc:  # LookupError: unknown encoding
        raise MalformedPayloadError(f"invalid or unsafe XML: {exc}", where=where) from None
    return root


def is_xml_document(data: bytes) -> bool:
    """Whether ``data`` is one well-formed (and safe) XML document."""
    try:
        _parse_xml(data, "")
    except MalformedPayloadError:
        return False
    return True


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(root: Element) -> dict[str, str]:
    return {_local(child.tag): child.text or "" for child in root}


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        keys = ", ".join(sorted(value)[:8])
        return f"a JSON object with keys [{keys}]" if keys else "an empty JSON object"
    if isinstance(value, list):
        return "a JSON array"
    return f"a JSON {type(value).__name__}"


# --- the unwrapper ---------------------------------------------------------------------------------

_PUBSUB_MESSAGE_KEYS = frozenset(
    {
        "data",
        "attributes",
        "messageId",
        "message_id",
        "publishTime",
        "publish_time",
        "orderingKey",
        "ordering_key",
        "deliveryAttempt",
    }
)


class _Unwrapper:
    def __init__(self, is_native: Callable[[Mapping[str, Any]], Any], keep_unknown: bool) -> None:
        self.is_native = is_native
        self.keep_unknown = keep_unknown
        self.leaves: list[Leaf] = []

    def text(self, data: bytes, where: str, depth: int) -> None:
        if depth > MAX_UNWRAP_DEPTH:
            raise MalformedPayloadError(f"more than {MAX_UNWRAP_DEPTH} nested envelopes", where=where)
        data = data.strip()
        if data.startswith(b"\xef\xbb\xbf"):
            data = data[3:].lstrip()
        if not data:
            raise MalformedPayloadError("empty payload", where=where)
        head = data[:1]
        if head in b'{["':
            # paths inside a decoded layer restart at its own root: "$.msgBody / base64 / $.Events[0]"
            self.value(load_json(data, where), where if depth == 0 else f"{where} / $", depth)
        elif head == b"<":
            self.xml(data, where, depth)
        elif looks_base64(data):
            decoded = decode_base64(data, where)
            if not decoded.strip() or not _plausible_text_payload(decoded):
                # a word like "test" is valid Base64 too; only a decoded payload makes it one
                raise UnrecognizedFormatError("not JSON, XML, or Base64 of either", where=where)
            self.text(decoded, f"{where} / base64", depth + 1)
        else:
            raise UnrecognizedFormatError("not JSON, XML or Base64", where=where)

    def value(self, value: Any, where: str, depth: int) -> None:
        if isinstance(value, dict):
            self.obj(value, where, depth)
        elif isinstance(value, str):
            # a JSON string holding the real payload (JSON text or Base64), as some relays send it
            self.text(value.encode("utf-8"), f"{where} / string", depth + 1)
        else:
            raise UnrecognizedFormatError(f"{_describe(value)} is not an event or a known envelope", where=where)

    def obj(self, obj: dict[str, Any], where: str, depth: int) -> None:
        if depth > MAX_UNWRAP_DEPTH:
            raise MalformedPayloadError(f"more than {MAX_UNWRAP_DEPTH} nested envelopes", where=where)
        claim = self.is_native(obj)
        if claim:
            self.leaves.append(Leaf(obj, where, claim))
            return
        self.envelope(obj, where, depth)

    def envelope(self, obj: dict[str, Any], where: str, depth: int) -> None:
        """Open ``obj`` as the envelope it is, once it is known not to be a native event."""
        for keys, matches, opener in _ENVELOPES:
            # each shape needs one of its keys: most objects are done with a lookup per shape
            for key in keys:
                if key in obj:
                    if matches(obj):
                        opener(self, obj, where, depth)
                        return
                    break
        if self.keep_unknown:
            self.leaves.append(Leaf(obj, where))
            return
        raise UnrecognizedFormatError(f"{_describe(obj)} is not an event or a known envelope", where=where)

    def inner(self, value: Any, where: str, depth: int) -> None:
        """A field that holds the next layer: a string payload or an already-parsed object."""
        if isinstance(value, str):
            self.text(value.encode("utf-8"), where, depth + 1)
        elif isinstance(value, dict):
            self.obj(value, where, depth + 1)
        else:
            raise MalformedPayloadError(f"expected a payload here, got {_describe(value)}", where=where)

    def xml(self, data: bytes, where: str, depth: int) -> None:
        root = _parse_xml(data, where)
        name = _local(root.tag)
        fields = _children(root)
        if name == "Notification" and "Message" in fields:
            self.text(fields["Message"].encode("utf-8"), f"{where} / mns-xml Message", depth + 1)
        elif name == "Message" and "MessageBody" in fields:
            self.text(fields["MessageBody"].encode("utf-8"), f"{where} / mns-xml MessageBody", depth + 1)
        else:
            raise UnrecognizedFormatError(f"XML document <{name}> is not an MNS notification", where=where)


# --- the envelope layers ---------------------------------------------------------------------------

Opener = Callable[[_Unwrapper, dict[str, Any], str, int], None]


def _cmq_body_key(obj: Mapping[str, Any]) -> str | None:
    for key in ("msgBody", "MsgBody"):
        if isinstance(obj.get(key), str):
            return key
    return None


def _is_cmq_push(obj: Mapping[str, Any]) -> bool:
    markers = ("msgId", "MsgId", "topicName", "TopicName", "TopicOwner", "subscriptionName", "publishTime")
    return _cmq_body_key(obj) is not None and any(key in obj for key in markers)


def _open_cmq_push(u: _Unwrapper, obj: dict[str, Any], where: str, depth: int) -> None:
    key = _cmq_body_key(obj)
    assert key is not None
    u.inner(obj[key], f"{where}.{key}", depth)


def _is_mns_json(obj: Mapping[str, Any]) -> bool:
    return (
        isinstance(obj.get("Message"), str)
        and "MessageId" in obj
        and any(key in obj for key in ("TopicOwner", "TopicName", "SubscriptionName", "MessageMD5"))
    )


def _open_mns_json(u: _Unwrapper, obj: dict[str, Any], where: str, depth: int) -> None:
    u.inner(obj["Message"], f"{where}.Message", depth)


def _is_sns(obj: Mapping[str, Any]) -> bool:
    return isinstance(obj.get("Type"), str) and "TopicArn" in obj and "Message" in obj


def _open_sns(u: _Unwrapper, obj: dict[str, Any], where: str, depth: int) -> None:
    if obj["Type"] != "Notification":
        raise UnsupportedEventError(f"SNS {obj['Type'][:40]!r} messages carry no event", where=where)
    u.inner(obj["Message"], f"{where}.Message", depth)


class SnsNotification(NamedTuple):
    """What an SNS notification envelope holds besides its shape."""

    #: the published message, as text
    message: str
    #: its ``String`` and ``Number`` message attributes (where a binary-mode CloudEvent keeps its context)
    attributes: dict[str, str]
    #: ``TopicArn``, ``MessageId``, ``Subject``, ``Timestamp`` where present
    meta: dict[str, Any]


def sns_notification(doc: Any) -> SnsNotification | None:
    """``doc`` as an SNS notification, or None when it is none (or carries no message)."""
    if not isinstance(doc, Mapping) or not _is_sns(doc) or doc["Type"] != "Notification":
        return None
    message = doc["Message"]
    if not isinstance(message, str):
        return None
    attributes: dict[str, str] = {}
    envelope_attrs = doc.get("MessageAttributes")
    if isinstance(envelope_attrs, Mapping):
        for name, attr in envelope_attrs.items():
            if isinstance(attr, Mapping) and attr.get("Type") in ("String", "Number") and "Value" in attr:
                attributes[str(name)] = str(attr["Value"])
    meta = {k: doc[k] for k in ("TopicArn", "MessageId", "Subject", "Timestamp") if doc.get(k)}
    return SnsNotification(message, attributes, meta)


def parse_sns_notification(body: bytes | str) -> SnsNotification | None:
    """An SQS message body that is SNS's notification envelope (a subscription without raw delivery),
    or None for any other body. Cheap for the bodies it is not: no parse unless the markers are there."""
    if isinstance(body, str):
        if not body.startswith("{") or '"Notification"' not in body or '"TopicArn"' not in body:
            return None
    elif not body.startswith(b"{") or b'"Notification"' not in body or b'"TopicArn"' not in body:
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return sns_notification(doc)


def unwrap_sns(body: bytes | str, attributes: Mapping[str, str]) -> tuple[str, dict[str, str], dict[str, Any]] | None:
    """An SQS message (body and attributes) that holds SNS's notification envelope as the published
    message, the envelope's attributes over the queue's (a binary-mode CloudEvent keeps its context
    there), and the envelope's ``meta``; None for any other body."""
    notification = parse_sns_notification(body)
    if notification is None:
        return None
    return notification.message, {**attributes, **notification.attributes}, notification.meta


def _lambda_source(record: Any) -> str | None:
    if not isinstance(record, Mapping):
        return None
    source = record.get("eventSource", record.get("EventSource"))
    return source if source in ("aws:sqs", "aws:sns") else None


def _is_lambda_records(obj: Mapping[str, Any]) -> bool:
    records = obj.get("Records")
    return isinstance(records, list) and bool(records) and all(_lambda_source(r) for r in records)


def _open_lambda_records(u: _Unwrapper, obj: dict[str, Any], where: str, depth: int) -> None:
    for index, record in enumerate(obj["Records"]):
        path = f"{where}.Records[{index}]"
        if _lambda_source(record) == "aws:sqs":
            if "body" not in record:
                raise MalformedPayloadError("an SQS record needs a body", where=path)
            u.inner(record["body"], f"{path}.body", depth)
        else:
            notification = record.get("Sns")
            if not isinstance(notification, dict) or not _is_sns(notification):
                raise MalformedPayloadError("an SNS record needs an Sns notification", where=f"{path}.Sns")
            _open_sns(u, notification, f"{path}.Sns", depth + 1)


def _is_eventbridge(obj: Mapping[str, Any]) -> bool:
    return isinstance(obj.get("detail-type"), str) and isinstance(obj.get("source"), str) and "detail" in obj


def _open_eventbridge(u: _Unwrapper, obj: dict[str, Any], where: str, depth: int) -> None:
    source: str = obj["source"]
    if source.startswith("aws."):
        raise UnsupportedEventError(
            f"EventBridge event {obj['detail-type'][:60]!r} from {source[:40]!r} is not a batch event",
            where=where,
        )
    u.inner(obj["detail"], f"{where}.detail", depth)


def _is_pubsub_push(obj: Mapping[str, Any]) -> bool:
    return isinstance(obj.get("message"), dict) and isinstance(obj.get("subscription"), str)


def _is_pubsub_received(obj: Mapping[str, Any]) -> bool:
    return isinstance(obj.get("message"), dict) and isinstance(obj.get("ackId"), str)


def _open_pubsub_wrapper(u: _Unwrapper, obj: dict[str, Any], where: str, depth: int) -> None:
    u.obj(obj["message"], f"{where}.message", depth + 1)


def _is_pubsub_message(obj: Mapping[str, Any]) -> bool:
    return "data" in obj and obj.keys() <= _PUBSUB_MESSAGE_KEYS


def _open_pubsub_message(u: _Unwrapper, obj: dict[str, Any], where: str, depth: int) -> None:
    data = obj["data"]
    if not isinstance(data, str):
        raise MalformedPayloadError("Pub/Sub data must be a Base64 string", where=f"{where}.data")
    u.text(decode_base64(data, f"{where}.data"), f"{where}.data / base64", depth + 1)


def _is_azure_records(obj: Mapping[str, Any]) -> bool:
    return isinstance(obj.get("records"), list)


def _open_azure_records(u: _Unwrapper, obj: dict[str, Any], where: str, depth: int) -> None:
    records: list[Any] = obj["records"]
    if not records:
        raise MalformedPayloadError("records is empty", where=f"{where}.records")
    for index, record in enumerate(records):
        path = f"{where}.records[{index}]"
        if not isinstance(record, dict):
            raise MalformedPayloadError(f"expected a log record, got {_describe(record)}", where=path)
        u.obj(record, path, depth + 1)


#: (keys one of which the test needs, the test, the opener), tried in this order
_ENVELOPES: tuple[tuple[tuple[str, ...], Callable[[Mapping[str, Any]], bool], Opener], ...] = (
    (("message",), _is_pubsub_push, _open_pubsub_wrapper),
    (("message",), _is_pubsub_received, _open_pubsub_wrapper),
    (("data",), _is_pubsub_message, _open_pubsub_message),
    (("msgBody", "MsgBody"), _is_cmq_push, _open_cmq_push),
    (("Message",), _is_mns_json, _open_mns_json),
    (("Type",), _is_sns, _open_sns),
    (("Records",), _is_lambda_records, _open_lambda_records),
    (("detail-type",), _is_eventbridge, _open_eventbridge),
    (("records",), _is_azure_records, _open_azure_records),
)


def unwrap(
    payload: Payload,
    *,
    is_native: Callable[[Mapping[str, Any]], Any],
    keep_unknown: bool = False,
) -> list[Leaf]:
    """Peel every envelope off ``payload`` and return the native events inside, in order.

    ``is_native`` says whether an object is a vendor's event (checked before any envelope shape); a
    truthy result is kept as the leaf's ``claim``.
    With ``keep_unknown`` (a forced provider), an object nobody recognises is returned as a leaf for
    that vendor to judge instead of raising UnrecognizedFormatError.
    """
    if payload.__class__ is bytes and payload[:1] == b"{" and len(payload) <= MAX_PAYLOAD_BYTES:
        # The common case, a JSON object that is itself a native event, taken without the general
        # machinery; it is exactly what _Unwrapper.text and .obj would do with it at depth 0.
        obj = load_json(payload.strip(), "$")
        return unwrap_object(obj, is_native(obj), is_native=is_native, keep_unknown=keep_unknown)
    unwrapper = _Unwrapper(is_native, keep_unknown)
    if isinstance(payload, Mapping):
        unwrapper.obj(mapping_to_json(payload), "$", 0)
    elif isinstance(payload, (bytes, bytearray, memoryview, str)):
        unwrapper.text(as_bytes(payload, "$"), "$", 0)
    else:
        raise UnrecognizedFormatError(f"cannot decode a {type(payload).__name__}; pass bytes, str or a mapping")
    return unwrapper.leaves


def unwrap_object(
    obj: dict[str, Any], claim: Any, *, is_native: Callable[[Mapping[str, Any]], Any], keep_unknown: bool = False
) -> list[Leaf]:
    """:func:`unwrap` of a top-level JSON object already parsed (with :func:`load_json`) and already
    tested: ``claim`` is what ``is_native(obj)`` returned."""
    if claim:
        return [Leaf(obj, "$", claim)]
    unwrapper = _Unwrapper(is_native, keep_unknown)
    unwrapper.envelope(obj, "$", 0)
    return unwrapper.leaves
