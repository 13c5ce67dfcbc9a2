"""Trust at intake: when an already-canonical CloudEvent is taken as it is.

Whoever can reach an intake (``serve``, a relayed queue, ``publish -``) could otherwise pick an event's
``id`` -- pre-empting a real event's id for every consumer that de-duplicates -- and its ``type``, which
becomes a metric label and a routing key. So a canonical event is accepted only when

* it is valid against the JSON Schemas shipped in ``core/schema`` (read from there, so a schema change
  is a trust change), and
* its ``type`` is one the vendor mappings can produce, and its ``type``, ``source`` and ``subject``
  agree with its ``data``, and
* its ``id`` is the one :func:`~batchbridge.core.event.event_id` computes from its own content.

Anything else is :class:`InvalidEventError` (``invalid_event``), which the bridge dead-letters with
its reason and ``serve`` answers with 400. The event accepted is the object given, untouched, so a
``consume | publish`` round trip re-publishes it byte for byte.

The schemas use a small part of JSON Schema 2020-12; :func:`_compile` refuses any keyword outside it,
so a schema edit that needs more fails at import (and in the tests) instead of passing unchecked.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import cache
from importlib.resources import files
from typing import Any

import orjson

from .errors import InputError, MalformedPayloadError
from .event import DATASCHEMA, as_time, event_id


class InvalidEventError(InputError):
    """An already-canonical CloudEvent that is not schema-valid, names a type no vendor produces, or whose
    ``id`` does not recompute from its content."""

    code = "invalid_event"


# --- a validator for the part of JSON Schema the shipped schemas use -----------------------------------

Check = Callable[[Any, str], "str | None"]  # value, JSON path -> the first error (path: message) or None

_ANNOTATIONS = frozenset({"$schema", "$id", "$defs", "title", "description", "$comment", "examples"})
_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: v.__class__ is dict,
    "array": lambda v: v.__class__ is list,
    "string": lambda v: v.__class__ is str,
    "boolean": lambda v: v.__class__ is bool,
    "null": lambda v: v is None,
    "integer": lambda v: v.__class__ is int or (v.__class__ is float and v.is_integer()),
    "number": lambda v: v.__class__ in (int, float),
}


def _same(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1`` (Python's ``==`` says it is)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)


def _date_time(value: Any) -> bool:
    if value.__class__ is not str:
        return True  # format constrains strings only
    try:
        return as_time(value, "") == value
    except MalformedPayloadError:
        return False


class _Compiler:
    def __init__(self, documents: Mapping[str, Mapping[str, Any]]) -> None:
        self.documents = documents
        self.compiled: dict[tuple[str, str], Check] = {}

    def ref(self, doc: str, ref: str) -> Check:
        target_doc, _, pointer = ref.partition("#")
        doc = target_doc or doc
        key = (doc, pointer)
        if key not in self.compiled:
            node: Any = self.documents[doc]
            for part in filter(None, pointer.split("/")):
                node = node[part]
            self.compiled[key] = lambda v, p: None  # a placeholder while a recursive ref compiles
            self.compiled[key] = self.schema(node, doc)
        return lambda v, p: self.compiled[key](v, p)

    def schema(self, s: Mapping[str, Any] | bool, doc: str) -> Check:
        if s is True:
            return lambda v, p: None
        if s is False:
            return lambda v, p: f"{p}: not allowed"
        checks: list[Check] = []
        unknown = set(s) - _ANNOTATIONS - set(_KEYWORDS) - {"then", "else"}
        if unknown:
            raise ValueError(f"the shipped schema uses {sorted(unknown)}, which core/trust.py does not check")
        for keyword in _ORDER:
            if keyword in s:
                checks.append(_KEYWORDS[keyword](self, s, doc))

        def run(v: Any, p: str) -> str | None:
            for check in checks:
                error = check(v, p)
                if error is not None:
                    return error
            return None

        return run


def _k_type(c: _Compiler, s: Mapping[str, Any], doc: str) -> Check:
    names = s["type"] if isinstance(s["type"], list) else [s["type"]]
    tests = [_TYPES[n] for n in names]
    return lambda v, p: None if any(t(v) for t in tests) else f"{p}: expected {' or '.join(names)}"


def _k_const(c: _Compiler, s: Mapping[str, Any], doc: str) -> Check:
    want = s["const"]
    return lambda v, p: None if _same(v, want) else f"{p}: must be {orjson.dumps(want).decode()}"


def _k_enum(c: _Compiler, s: Mapping[str, Any], doc: str) -> Check:
    options = s["enum"]
    return lambda v, p: None if any(_same(v, o) for o in options) else f"{p}: not one of {', '.join(map(str, options))}"


def _k_pattern(c: _Compiler, s: Mapping[str, Any], doc: str) -> Check:
    search = re.compile(s["pattern"]).search
    return lambda v, p: None if v.__class__ is not str or search(v) else f"{p}: does not match {s['pattern']}"


def _k_min_length(c: _Compiler, s: Mapping[str, Any], doc: str) -> Check:
    n = s["minLength"]
    return lambda v, p: None if v.__class__ is not str or len(v) >= n else f"{p}: shorter than {n}"


def _k_max_length(c: _Compiler, s: Mapping[str, Any], doc: str) -> Check:
    n = s["maxLength"]
    return lambda v, p: None if v.__class__ is not str or len(v) <= n else f"{p}: longer than {n}"


def _number(v: Any) -> bool:
    return v.__class__ in (int, float)


def _k_minimum(c: _Compiler, s: Mapping[str, Any], doc: str) -> Check:
    n = s["minimum"]
    return lambda v, p: None if not _number(v) or v >= n else f"{p}: below the minimum of {n}"


def _k_maximum(c: _Compiler, s: Mapping[str, Any], doc: str) -> Check:
    n = s["maximum"]
    return lambda v, p: None if not _number(v) or v <= n else f"{p}: above the maximum of {n}"


def _k_format(c: _Compiler, s: Mapping[str, Any], doc: str) -> Check:
    if s["format"] != "date-time":
        raise ValueError(f"the shipped schema uses format {s['format']!r}, which core/trust.py does not check")
    return lambda v, p: None if _date_time(v) else f"{p}: not an RFC 3339 UTC time"


def _k_required(c: _Compiler, s: Mapping[str, Any], doc: str) -> Check:
    names = s["required"]

    def check(v: Any, p: str) -> str | None:
        if v.__class__ is not dict:
            return None
        missing = [n for n in names if n not in v]
        return f"{p}: missing {', '.join(missing)}" if missing else None

    return check


def _k_dependent_required(c: _Compiler, s: Mapping[str, Any], doc: str) -> Check:
    needs: Mapping[str, list[str]] = s["dependentRequired"]

    def check(v: Any, p: str) -> str | None:
        if v.__class__ is not dict:
            return None
        for name, required in needs.items():
            if name in v:
                missing = [n for n in required if n not in v]
                if missing:
                    return f"{p}: {name} needs {', '.join(missing)}"
        return None

    return check


def _k_properties(c: _Compiler, s: Mapping[str, Any], doc: str) -> Check:
    props = {name: c.schema(sub, doc) for name, sub in s["properties"].items()}
    extra = s.get("additionalProperties", True)
    other = c.schema(extra, doc)

    def check(v: Any, p: str) -> str | None:
        if v.__class__ is not dict:
            return None
        for name, value in v.items():
            sub = props.get(name)
            where = f"{p}.{name}"
            if sub is None:
                if extra is False:
                    return f"{p}: unexpected attribute {str(name)[:40]!r}"
                sub = other
            error = sub(value, where)
            if error is not None:
                return error
        return None

    return check


def _k_additional(c: _Compiler, s: Mapping[str, Any], doc: str) -> Check:
    if "properties" in s:
        return lambda v, p: None  # applied by _k_properties
    return _k_properties(c, {"properties": {}, "additionalProperties": s["additionalProperties"]}, doc)


def _k_items(c: _Compiler, s: Mapping[str, Any], doc: str) -> Check:
    sub = c.schema(s["items"], doc)

    def check(v: Any, p: str) -> str | None:
        if v.__class__ is not list:
            return None
        for i, item in enumerate(v):
            error = sub(item, f"{p}[{i}]")
            if error is not None:
                return error
        return None

    return check


def _k_ref(c: _Compiler, s: Mapping[str, Any], doc: str) -> Check:
    return c.ref(doc, s["$ref"])


def _k_all_of(c: _Compiler, s: Mapping[str, Any], doc: str) -> Check:
    subs = [c.schema(sub, doc) for sub in s["allOf"]]

    def check(v: Any, p: str) -> str | None:
        for sub in subs:
            error = sub(v, p)
            if error is not None:
                return error
        return None

    return check


def _k_any_of(c: _Compiler, s: Mapping[str, Any], doc: str) -> Check:
    subs = [c.schema(sub, doc) for sub in s["anyOf"]]

    def check(v: Any, p: str) -> str | None:
        errors = [sub(v, p) for sub in subs]
        return None if any(e is None for e in errors) else errors[0]

    return check


def _k_one_of(c: _Compiler, s: Mapping[str, Any], doc: str) -> Check:
    subs = [c.schema(sub, doc) for sub in s["oneOf"]]

    def check(v: Any, p: str) -> str | None:
        errors = [sub(v, p) for sub in subs]
        passed = sum(e is None for e in errors)
        return None if passed == 1 else f"{p}: matches {passed} of the alternatives, not exactly one"

    return check


def _k_if(c: _Compiler, s: Mapping[str, Any], doc: str) -> Check:
    test = c.schema(s["if"], doc)
    then = c.schema(s.get("then", True), doc)
    otherwise = c.schema(s.get("else", True), doc)
    return lambda v, p: then(v, p) if test(v, p) is None else otherwise(v, p)


_KEYWORDS: dict[str, Callable[[_Compiler, Mapping[str, Any], str], Check]] = {
    "type": _k_type, "const": _k_const, "enum": _k_enum, "pattern": _k_pattern, "minLength": _k_min_length,
    "maxLength": _k_max_length, "minimum": _k_minimum, "maximum": _k_maximum, "format": _k_format,
    "required": _k_required, "dependentRequired": _k_dependent_required, "properties": _k_properties,
    "additionalProperties": _k_additional,
    "items": _k_items, "$ref": _k_ref, "allOf": _k_all_of, "anyOf": _k_any_of, "oneOf": _k_one_of, "if": _k_if,
}
# type first: the later checks assume nothing about the value, but their messages read best after it
_ORDER = tuple(_KEYWORDS)


@cache
def _cloudevent_check() -> Check:
    root = files("batchbridge.core") / "schema"
    documents: dict[str, Mapping[str, Any]] = {}
    for name in ("cloudevent-v1.json", "batch-event-v1.json"):
        schema = orjson.loads((root / name).read_bytes())
        documents[schema["$id"]] = schema
    return _Compiler(documents).ref("urn:batchbridge:cloudevent:1", "")


# --- what the schema cannot say -------------------------------------------------------------------------

_SUBJECT_KIND = {
    "job": re.compile(r"jobs/[^/]+"),
    "task": re.compile(r"jobs/[^/]+/tasks/[^/]+"),
    "task_instance": re.compile(r"jobs/[^/]+/tasks/[^/]+/instances/(0|[1-9][0-9]*)"),
    "environment": re.compile(r"environments/[^/]+"),
    "node": re.compile(r"environments/[^/]+/nodes/[^/]+"),
}


def _known_types() -> frozenset[str]:
    from .names import known_types  # the vendor tables: imported when a canonical event first arrives

    return known_types()


def claims_canonical(obj: Any) -> bool:
    """Whether a decoded payload presents itself as one of our canonical CloudEvents."""
    return obj.__class__ is dict and obj.get("dataschema") == DATASCHEMA and "specversion" in obj


def trusted_event(event: dict[str, Any]) -> dict[str, Any]:
    """``event`` itself when it may be taken as it is; :class:`InvalidEventError` saying why when not."""
    error = _cloudevent_check()(event, "$")
    if error is not None:
        where, _, reason = error.partition(": ")
        raise InvalidEventError(f"not a valid canonical CloudEvent: {reason}", where=where)
    data = event["data"]
    type_ = event["type"]
    if type_ != f"batch.{data['kind']}.{data['transition']}":
        raise InvalidEventError(f"type {type_[:80]!r} does not match data.kind and data.transition", where="$.type")
    if type_ not in _known_types():
        raise InvalidEventError(f"type {type_[:80]!r} is not one any vendor mapping produces", where="$.type")
    if event["source"] != f"batch://{data['provider']}/{data['region'] or '-'}":
        raise InvalidEventError("source does not match data.provider and data.region", where="$.source")
    if not _SUBJECT_KIND[data["kind"]].fullmatch(event["subject"]):
        raise InvalidEventError(f"subject is not the path of a {data['kind']}", where="$.subject")
    priority = data["priority"]
    expected = event_id(data["provider"], data["region"], event["subject"], data["transition"], data["state"],
                        event.get("time"), priority, data["raw"])
    if event["id"] != expected:
        raise InvalidEventError("id does not recompute from the event's content (an id is never chosen by a "
                                "sender)", where="$.id")
    return event
