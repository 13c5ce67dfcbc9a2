"""The canonical event: a BatchEvent v1 inside a CloudEvents 1.0 envelope.

Vendor modules read their native fields into a :class:`Draft` (with the typed readers below) and
:func:`build_event` turns it into the one JSON-ready dict every adapter publishes. The contract is
the project's canonical-event spec; the JSON Schemas shipped in ``core/schema`` check it.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, TypedDict, cast

import orjson

from .errors import MalformedPayloadError

SPECVERSION = "1.0"
DATACONTENTTYPE = "application/json"
DATASCHEMA = "urn:batchbridge:batch-event:1"

Provider = Literal["tencent", "alibaba", "aws", "gcp", "azure"]
Kind = Literal["job", "task", "task_instance", "environment", "node"]
State = Literal[
    "pending",
    "starting",
    "running",
    "succeeded",
    "failed",
    "interrupted",
    "stopped",
    "created",
    "creation_failed",
    "abnormal",
    "deleting",
    "deleted",
]

PROVIDERS: tuple[Provider, ...] = ("tencent", "alibaba", "aws", "gcp", "azure")
KINDS: tuple[Kind, ...] = ("job", "task", "task_instance", "environment", "node")
STATES: tuple[State, ...] = (
    "pending",
    "starting",
    "running",
    "succeeded",
    "failed",
    "interrupted",
    "stopped",
    "created",
    "creation_failed",
    "abnormal",
    "deleting",
    "deleted",
)

# JSON cannot carry wider integers through every backend (orjson refuses them on the way out).
_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1


# --- typed shape of an event (plain dicts at run time) --------------------------------------------


class NativeRef(TypedDict):
    event: str
    state: str | None


class JobRef(TypedDict):
    id: str | None
    name: str | None


class TaskRef(TypedDict):
    name: str | None


class InstanceRef(TypedDict):
    index: int


class EnvironmentRef(TypedDict):
    id: str | None
    name: str | None


class NodeRef(TypedDict):
    id: str | None
    instance_id: str | None
    address: str | None


class ErrorInfo(TypedDict):
    code: str | None
    message: str | None


class Times(TypedDict):
    created: str | None
    started: str | None
    ended: str | None


class Logs(TypedDict):
    stdout: str | None
    stderr: str | None


class Resources(TypedDict):
    cpu: int | None
    memory_gib: int | float | None


# "from" is a keyword, hence the functional form.
Priority = TypedDict("Priority", {"from": int, "to": int})


class BatchEvent(TypedDict):
    provider: Provider
    region: str | None
    kind: Kind
    transition: str
    state: State
    native: NativeRef
    job: JobRef | None
    task: TaskRef | None
    instance: InstanceRef | None
    environment: EnvironmentRef | None
    node: NodeRef | None
    exit_code: int | None
    retry_count: int | None
    progress: int | None
    error: ErrorInfo | None
    times: Times
    logs: Logs | None
    resources: Resources | None
    priority: Priority | None
    vars: dict[str, Any]
    raw: dict[str, Any]


class _CloudEventRequired(TypedDict):
    specversion: str
    id: str
    source: str
    type: str
    subject: str
    datacontenttype: str
    dataschema: str
    data: BatchEvent


class CloudEvent(_CloudEventRequired, total=False):
    #: absent when the payload carries no time for the transition (never the time of receipt)
    time: str


# --- typed readers ---------------------------------------------------------------------------------


def _malformed(reason: str, where: str) -> MalformedPayloadError:
    return MalformedPayloadError(reason, where=where)


def as_str(value: Any, where: str) -> str | None:
    """A vendor string: ``""`` and null are unknown; numbers become their decimal text."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _malformed(f"expected a string, got {str(value).lower()}", where)
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    raise _malformed(f"expected a string, got {_json_type(value)}", where)


_INT_TEXT = re.compile(r"[+-]?\d{1,19}")


def as_int(value: Any, where: str, *, minimum: int | None = None) -> int | None:
    """A vendor integer: ``"0"`` is 0, ``""`` and null are unknown, anything else is malformed."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _malformed(f"expected an integer, got {str(value).lower()}", where)
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not value.is_integer():
            raise _malformed(f"expected an integer, got {value!r}", where)
        number = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if not _INT_TEXT.fullmatch(text):
            raise _malformed(f"expected an integer, got {value[:40]!r}", where)
        number = int(text)
    else:
        raise _malformed(f"expected an integer, got {_json_type(value)}", where)
    if not _INT_MIN <= number <= _INT_MAX:
        raise _malformed(f"integer {number} is out of range", where)
    if minimum is not None and number < minimum:
        raise _malformed(f"{number} is below the minimum of {minimum}", where)
    return number


_NUMBER_TEXT = re.compile(r"[+-]?(\d{1,19}(\.\d{1,12})?|\.\d{1,12})")


def as_number(value: Any, where: str, *, minimum: int | None = None) -> int | float | None:
    """A vendor number (integer or decimal, possibly as a string), with the rules of :func:`as_int`."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if not _NUMBER_TEXT.fullmatch(text):
            raise _malformed(f"expected a number, got {value[:40]!r}", where)
        value = float(text) if "." in text else int(text)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _malformed("expected a finite number", where)
        if minimum is not None and value < minimum:
            raise _malformed(f"{value} is below the minimum of {minimum}", where)
        return int(value) if value.is_integer() and abs(value) <= _INT_MAX else value
    return as_int(value, where, minimum=minimum)


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d{1,12})?"
    r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))?"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def as_time(value: Any, where: str) -> str | None:
    """An RFC 3339 timestamp in UTC with a ``Z``; sub-seconds are kept exactly as the source wrote them.

    Accepts ``Z``, ``+08:00``/``+0800`` offsets and a space instead of ``T``. A time without an offset is
    read as UTC (every documented vendor sample is UTC).
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise _malformed(f"expected an RFC 3339 time, got {_json_type(value)}", where)
    text = value.strip()
    if not text:
        return None
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise _malformed(f"expected an RFC 3339 time, got {value[:40]!r}", where)
    year, month, day, hour, minute, second, fraction, _z, sign, off_h, off_m = match.groups()
    try:
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
        if sign:
            if int(off_h) > 23 or int(off_m) > 59:
                raise ValueError(f"offset {sign}{off_h}:{off_m} is not a UTC offset")
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            moment = moment - offset if sign == "+" else moment + offset
    except (ValueError, OverflowError) as exc:
        raise _malformed(f"not a valid time {value[:40]!r}: {exc}", where) from None
    if not 1 <= moment.year <= 9999:
        raise _malformed(f"time {value[:40]!r} is out of range", where)
    return f"{moment:%Y-%m-%dT%H:%M:%S}{fraction or ''}Z"


def epoch_millis_time(value: Any, where: str) -> str | None:
    """Epoch milliseconds (AWS ``createdAt``, MNS ``PublishTime``) as RFC 3339 with millisecond precision."""
    millis = as_int(value, where)
    if millis is None:
        return None
    try:
        moment = _EPOCH + timedelta(milliseconds=millis)
    except OverflowError:
        raise _malformed(f"epoch milliseconds {millis} are out of range", where) from None
    if not 1970 <= moment.year <= 9999:
        raise _malformed(f"epoch milliseconds {millis} are out of range", where)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def _json_type(value: Any) -> str:
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if value is None:
        return "null"
    return type(value).__name__


_EMPTY: Mapping[str, Any] = {}


class Reader:
    """Typed reads from one native JSON object; each error names the field's JSON path."""

    __slots__ = ("obj", "where")

    def __init__(self, obj: Mapping[str, Any], where: str) -> None:
        self.obj = obj
        self.where = where

    def path(self, key: str) -> str:
        return f"{self.where}.{key}"

    def first(self, keys: tuple[str, ...]) -> tuple[str, Any]:
        """The first of ``keys`` with a non-empty value (vendors spell some fields several ways)."""
        for key in keys:
            value = self.obj.get(key)
            if value is not None and value != "":
                return key, value
        return keys[0], None

    def text(self, *keys: str) -> str | None:
        key, value = self.first(keys)
        return as_str(value, self.path(key))

    def integer(self, *keys: str, minimum: int | None = None) -> int | None:
        key, value = self.first(keys)
        return as_int(value, self.path(key), minimum=minimum)

    def number(self, *keys: str, minimum: int | None = None) -> int | float | None:
        key, value = self.first(keys)
        return as_number(value, self.path(key), minimum=minimum)

    def time(self, *keys: str) -> str | None:
        key, value = self.first(keys)
        return as_time(value, self.path(key))

    def millis(self, *keys: str) -> str | None:
        key, value = self.first(keys)
        return epoch_millis_time(value, self.path(key))

    def require(self, *keys: str) -> str:
        value = self.text(*keys)
        if value is None:
            raise _malformed(f"missing {' or '.join(keys)}", self.path(keys[0]))
        return value

    def sub(self, key: str) -> Reader:
        """The nested object at ``key``; an absent or null one reads as empty."""
        value = self.obj.get(key)
        if value is None:
            return Reader(_EMPTY, self.path(key))
        if not isinstance(value, Mapping):
            raise _malformed(f"expected an object, got {_json_type(value)}", self.path(key))
        return Reader(value, self.path(key))

    def array(self, key: str) -> list[Any]:
        value = self.obj.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise _malformed(f"expected an array, got {_json_type(value)}", self.path(key))
        return value


_REGION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def as_region(value: Any, where: str) -> str | None:
    """A region name; it becomes part of ``source``, so it must be a single URI path segment."""
    region = as_str(value, where)
    if region is not None and not _REGION.fullmatch(region):
        raise _malformed(f"not a region name: {region[:40]!r}", where)
    return region


# --- assembling the event --------------------------------------------------------------------------


@dataclass(slots=True)
class Draft:
    """Everything a vendor module read from one native event, before it becomes a CloudEvent."""

    provider: Provider
    kind: Kind
    state: State
    native_event: str
    raw: dict[str, Any]
    where: str = "$"
    #: defaults to ``state``; differs only for e.g. ``priority_changed`` and ``resized``
    transition: str | None = None
    native_state: str | None = None
    region: str | None = None
    #: the native event time; when None, the timestamp matching the transition is used
    time: str | None = None
    job_id: str | None = None
    job_name: str | None = None
    task_name: str | None = None
    instance_index: int | None = None
    environment_id: str | None = None
    environment_name: str | None = None
    node_id: str | None = None
    node_instance_id: str | None = None
    node_address: str | None = None
    exit_code: int | None = None
    retry_count: int | None = None
    progress: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    created: str | None = None
    started: str | None = None
    ended: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    cpu: int | None = None
    memory_gib: int | float | None = None
    priority_from: int | None = None
    priority_to: int | None = None
    vars: dict[str, Any] = field(default_factory=dict)


# Which of the resource's own timestamps dates a transition when the event carries no time.
_TIME_FOR_TRANSITION: dict[str, str] = {
    "pending": "created",
    "created": "created",
    "starting": "started",
    "running": "started",
    "succeeded": "ended",
    "failed": "ended",
    "interrupted": "ended",
    "stopped": "ended",
    "creation_failed": "ended",
    "deleted": "ended",
}

# Subjects are '/'-separated paths, so a '/' inside an id is escaped (and '%' so it stays reversible).
_SEGMENT_ESCAPES = str.maketrans({"%": "%25", "/": "%2F"})

#: the task segment of a task-instance subject when the vendor has no task level (AWS array jobs)
NO_TASK = "-"


def _segment(value: str) -> str:
    return value.translate(_SEGMENT_ESCAPES)


def subject_for(draft: Draft) -> str:
    def need(value: str | None, what: str) -> str:
        if value is None:
            raise _malformed(f"a {draft.kind} event needs the {what}", draft.where)
        return _segment(value)

    kind = draft.kind
    if kind in ("job", "task", "task_instance"):
        subject = f"jobs/{need(draft.job_id, 'job id')}"
        if kind == "task":
            subject += f"/tasks/{need(draft.task_name, 'task name')}"
        elif kind == "task_instance":
            if draft.instance_index is None:
                raise _malformed("a task_instance event needs the instance index", draft.where)
            if draft.instance_index < 0:
                raise _malformed(f"instance index {draft.instance_index} is negative", draft.where)
            task = _segment(draft.task_name) if draft.task_name is not None else NO_TASK
            subject += f"/tasks/{task}/instances/{draft.instance_index}"
        return subject
    subject = f"environments/{need(draft.environment_id, 'environment id')}"
    if kind == "node":
        subject += f"/nodes/{need(draft.node_id, 'node id')}"
    return subject


def event_id(
    provider: str,
    region: str | None,
    subject: str,
    transition: str,
    state: str,
    time: str | None,
    priority: Priority | None,
    raw: Mapping[str, Any],
) -> str:
    """The de-duplication key: equal for every delivery of one transition, in any process.

    The raw event only enters the hash when there is no time, because then it is the only thing
    that tells two occurrences of the same transition apart (and a redelivery carries the same raw).
    """
    material = [
        "batchbridge/1",
        provider,
        region,
        subject,
        transition,
        state,
        time,
        [priority["from"], priority["to"]] if priority is not None else None,
        raw if time is None else None,
    ]
    canonical = orjson.dumps(material, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()


def _all_none(*values: object) -> bool:
    return all(value is None for value in values)


def build_event(draft: Draft) -> CloudEvent:
    """Assemble the canonical CloudEvent; raises MalformedPayloadError when an id the subject needs is missing."""
    transition = draft.transition or draft.state
    subject = subject_for(draft)
    times: Times = {"created": draft.created, "started": draft.started, "ended": draft.ended}
    time = draft.time
    if time is None and transition in _TIME_FOR_TRANSITION:
        # priority_changed has no timestamp of its own (the job's creation time would date it wrongly)
        own = {"created": draft.created, "started": draft.started, "ended": draft.ended}
        time = own[_TIME_FOR_TRANSITION[transition]]
    priority: Priority | None = None
    if draft.priority_from is not None and draft.priority_to is not None:
        priority = {"from": draft.priority_from, "to": draft.priority_to}

    data: BatchEvent = {
        "provider": draft.provider,
        "region": draft.region,
        "kind": draft.kind,
        "transition": transition,
        "state": draft.state,
        "native": {"event": draft.native_event, "state": draft.native_state},
        "job": None if _all_none(draft.job_id, draft.job_name) else {"id": draft.job_id, "name": draft.job_name},
        "task": None if draft.task_name is None else {"name": draft.task_name},
        "instance": None if draft.instance_index is None else {"index": draft.instance_index},
        "environment": None
        if _all_none(draft.environment_id, draft.environment_name)
        else {"id": draft.environment_id, "name": draft.environment_name},
        "node": None
        if _all_none(draft.node_id, draft.node_instance_id, draft.node_address)
        else {"id": draft.node_id, "instance_id": draft.node_instance_id, "address": draft.node_address},
        "exit_code": draft.exit_code,
        "retry_count": draft.retry_count,
        "progress": draft.progress,
        "error": None
        if _all_none(draft.error_code, draft.error_message)
        else {"code": draft.error_code, "message": draft.error_message},
        "times": times,
        "logs": None if _all_none(draft.stdout, draft.stderr) else {"stdout": draft.stdout, "stderr": draft.stderr},
        "resources": None
        if _all_none(draft.cpu, draft.memory_gib)
        else {"cpu": draft.cpu, "memory_gib": draft.memory_gib},
        "priority": priority,
        "vars": draft.vars,
        "raw": draft.raw,
    }
    event: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": event_id(draft.provider, draft.region, subject, transition, draft.state, time, priority, draft.raw),
        "source": f"batch://{draft.provider}/{draft.region or '-'}",
        "type": f"batch.{draft.kind}.{transition}",
        "subject": subject,
    }
    if time is not None:
        event["time"] = time
    event["datacontenttype"] = DATACONTENTTYPE
    event["dataschema"] = DATASCHEMA
    event["data"] = data
    return cast(CloudEvent, event)


def ordering_key(event: Mapping[str, Any]) -> str | None:
    """The job id, else the environment id: events of one job (or pool) keep their order on every backend."""
    data = event.get("data")
    if not isinstance(data, Mapping):
        return None
    for ref in ("job", "environment"):
        obj = data.get(ref)
        if isinstance(obj, Mapping):
            value = obj.get("id")
            if isinstance(value, str) and value:
                return value
    return None
