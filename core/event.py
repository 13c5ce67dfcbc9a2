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
from datetime import date, datetime, timedelta, timezone
from typing import Any, Literal, TypedDict, get_args

import orjson

from .errors import MalformedPayloadError
from .sequence import sequence as _sequence

SPECVERSION = "1.0"
DATACONTENTTYPE = "application/json"
DATASCHEMA = "urn:batchbridge:batch-event:1"

#: a registered vendor's name (:mod:`batchbridge.core.vendors`: the built-ins and any third party's)
Provider = str
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

KINDS: tuple[Kind, ...] = get_args(Kind)
STATES: tuple[State, ...] = get_args(State)

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
    #: ``{T}.{R}`` (see ``core/sequence.py``); present exactly when ``time`` is
    sequence: str
    #: the job id (job, task, task-instance events) or the environment id (environment, node events)
    partitionkey: str


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


# The shape nearly every vendor sends: UTC, "T" and "Z" already, a four-digit year. Such a value is
# its own canonical form once it is known to exist, so it skips the general parser. The pattern
# bounds every field; only a day past its month's end (29 to 31) needs the calendar.
_CANONICAL_UTC = re.compile(
    r"[1-9][0-9]{3}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,12})?Z"
).fullmatch


def _date_exists(text: str) -> bool:
    try:
        date(int(text[:4]), int(text[5:7]), int(text[8:10]))
    except ValueError:
        return False
    return True


def _canonical_utc(text: str) -> bool:
    """Whether ``text`` is a valid time in exactly the form :func:`as_time` would return it."""
    return _CANONICAL_UTC(text) is not None and ((text[8] != "3" and text[8:10] != "29") or _date_exists(text))


def as_time(value: Any, where: str) -> str | None:
    """An RFC 3339 timestamp in UTC with a ``Z``; sub-seconds are kept exactly as the source wrote them.

    Accepts ``Z``, ``+08:00``/``+0800`` offsets and a space instead of ``T``. A time without an offset is
    read as UTC (every documented vendor sample is UTC).
    """
    if value is None:
        return None
    if value.__class__ is str and _canonical_utc(value):
        canonical: str = value
        return canonical
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
    if moment.year >= 1000:
        # the same text as the strftime below (which does not pad years under 1000), far cheaper
        return f"{moment.isoformat()}{fraction or ''}Z"
    return f"{moment:%Y-%m-%dT%H:%M:%S}{fraction or ''}Z"


# 9999-12-31T23:59:59.999Z: up to here every instant has a four-digit year and formats the same way
_MAX_MILLIS = 253_402_300_799_999
# Epoch millis are formatted from tables (AWS sends three per event): the day's text is cached, and
# the rest is picked from the minute, second and millisecond texts — a fifth of datetime's cost.
_EPOCH_DATE = date(1970, 1, 1)
_DAY_TEXT: dict[int, str] = {}
_DAY_TEXT_MAX = 4096
_MINUTE_TEXT = [f"T{hour:02d}:{minute:02d}:" for hour in range(24) for minute in range(60)]
_SECOND_TEXT = [f"{second:02d}." for second in range(60)]
_MILLI_TEXT = [f"{milli:03d}Z" for milli in range(1000)]


def _millis_text(millis: int) -> str:
    """``0 <= millis <= _MAX_MILLIS`` as ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    seconds, milli = divmod(millis, 1000)
    days, seconds = divmod(seconds, 86400)
    day = _DAY_TEXT.get(days)
    if day is None:
        if len(_DAY_TEXT) >= _DAY_TEXT_MAX:
            _DAY_TEXT.clear()
        day = _DAY_TEXT[days] = (_EPOCH_DATE + timedelta(days=days)).isoformat()
    minutes, seconds = divmod(seconds, 60)
    return f"{day}{_MINUTE_TEXT[minutes]}{_SECOND_TEXT[seconds]}{_MILLI_TEXT[milli]}"


def epoch_millis_time(value: Any, where: str) -> str | None:
    """Epoch milliseconds (AWS ``createdAt``, MNS ``PublishTime``) as RFC 3339 with millisecond precision."""
    millis = value if value.__class__ is int and 0 <= value <= _MAX_MILLIS else as_int(value, where)
    if millis is None:
        return None
    if 0 <= millis <= _MAX_MILLIS:
        return _millis_text(millis)
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


def _plain_digits(text: str) -> bool:
    """ASCII digits only, few enough to fit an int64: what ``as_int`` accepts unchanged as a non-negative number."""
    return len(text) <= 18 and text.isdigit() and text.isascii()


class Reader:
    """Typed reads from one native JSON object; each error names the field's JSON path.

    Each read has an inline fast path for the value it nearly always finds (a non-blank string, an
    in-range integer, a canonical UTC time); anything else, and every error, goes through the
    ``as_*`` functions, and only then is the field's path formatted.
    """

    __slots__ = ("_at", "_key", "obj")

    def __init__(self, obj: Mapping[str, Any], where: str | Reader, key: str | None = None) -> None:
        self.obj = obj
        # a nested object's path is its parent's and its key, joined only when asked for: nearly every
        # read succeeds, and its path is then never written out
        self._at = where
        self._key = key

    @property
    def where(self) -> str:
        """The JSON path of this object (``$.detail.container``)."""
        at = self._at
        base: str = at if at.__class__ is str else at.where  # type: ignore[union-attr]
        return base if self._key is None else f"{base}.{self._key}"

    def path(self, key: str) -> str:
        return f"{self.where}.{key}"

    def region(self, key: str) -> str | None:
        """:func:`as_region` of the field, its path formatted only for an error."""
        return self.region_of(self.obj.get(key), key)

    def region_of(self, value: Any, key: str) -> str | None:
        """:func:`as_region` of ``value`` (read from ``key``, perhaps respelled), its path formatted
        only for an error."""
        if value.__class__ is str and value in _KNOWN_REGIONS:
            known: str = value
            return known
        return as_region(value, self.path(key))

    def first(self, keys: tuple[str, ...]) -> tuple[str, Any]:
        """The first of ``keys`` with a non-empty value (vendors spell some fields several ways)."""
        get = self.obj.get
        for key in keys:
            value = get(key)
            if value is not None and value != "":
                return key, value
        return keys[0], None

    # The reads below take their first key apart from the rest: nearly every call names one key,
    # and that spelling keeps the one-key case free of a loop (measured ~40% cheaper per read).

    def text(self, key: str, *more: str) -> str | None:
        value = self.obj.get(key)
        if value is None or value == "":
            if not more:
                return None
            key, value = self.first(more)  # the key found names the field in any error below
            if value is None:
                return None
        if value.__class__ is str:
            text: str | None = value if value.strip() else None
            return text
        return as_str(value, self.path(key))

    def integer(self, key: str, *more: str, minimum: int | None = None) -> int | None:
        value = self.obj.get(key)
        if value is None or value == "":
            if not more:
                return None
            key, value = self.first(more)  # the key found names the field in any error below
            if value is None:
                return None
        if value.__class__ is int and _INT_MIN <= value <= _INT_MAX and (minimum is None or value >= minimum):
            number: int = value
            return number
        if value.__class__ is str and _plain_digits(value) and (minimum is None or minimum <= 0):
            return int(value)  # Alibaba sends every number as a string of ASCII digits
        return as_int(value, self.path(key), minimum=minimum)

    def number(self, key: str, *more: str, minimum: int | None = None) -> int | float | None:
        value = self.obj.get(key)
        if value is None or value == "":
            if not more:
                return None
            key, value = self.first(more)  # the key found names the field in any error below
            if value is None:
                return None
        if value.__class__ is int and _INT_MIN <= value <= _INT_MAX and (minimum is None or value >= minimum):
            number: int = value
            return number
        if value.__class__ is str and _plain_digits(value) and (minimum is None or minimum <= 0):
            return int(value)
        return as_number(value, self.path(key), minimum=minimum)

    def time(self, key: str, *more: str) -> str | None:
        value = self.obj.get(key)
        if value is None or value == "":
            if not more:
                return None
            key, value = self.first(more)  # the key found names the field in any error below
            if value is None:
                return None
        if (
            value.__class__ is str
            and _CANONICAL_UTC(value) is not None
            and ((value[8] != "3" and value[8:10] != "29") or _date_exists(value))
        ):
            canonical: str = value
            return canonical
        return as_time(value, self.path(key))

    def millis(self, key: str, *more: str) -> str | None:
        value = self.obj.get(key)
        if value is None or value == "":
            if not more:
                return None
            key, value = self.first(more)  # the key found names the field in any error below
            if value is None:
                return None
        if value.__class__ is int and 0 <= value <= _MAX_MILLIS:
            return _millis_text(value)
        return epoch_millis_time(value, self.path(key))

    def require(self, *keys: str) -> str:
        value = self.text(*keys)
        if value is None:
            raise _malformed(f"missing {' or '.join(keys)}", self.path(keys[0]))
        return value

    def sub(self, key: str) -> Reader:
        """The nested object at ``key``; an absent or null one reads as empty."""
        value = self.obj.get(key)
        if value.__class__ is dict:
            return Reader(value, self, key)
        if value is None:
            return Reader(_EMPTY, self, key)
        if not isinstance(value, Mapping):
            raise _malformed(f"expected an object, got {_json_type(value)}", self.path(key))
        return Reader(value, self, key)

    def array(self, key: str) -> list[Any]:
        value = self.obj.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise _malformed(f"expected an array, got {_json_type(value)}", self.path(key))
        return value


_REGION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# region names already checked: a stream names a handful of regions thousands of times
_KNOWN_REGIONS: set[str] = set()
_KNOWN_REGIONS_MAX = 1024


def as_region(value: Any, where: str) -> str | None:
    """A region name; it becomes part of ``source``, so it must be a single URI path segment."""
    if value.__class__ is str and value in _KNOWN_REGIONS:
        known: str = value
        return known
    region = as_str(value, where)
    if region is not None:
        if not _REGION.fullmatch(region):
            raise _malformed(f"not a region name: {region[:40]!r}", where)
        if len(_KNOWN_REGIONS) < _KNOWN_REGIONS_MAX:
            _KNOWN_REGIONS.add(region)
    return region


# --- assembling the event --------------------------------------------------------------------------


#: every field of a :class:`Draft`, in the order of its parameters
_DRAFT_FIELDS = (
    "provider", "kind", "state", "native_event", "raw", "where", "transition", "native_state", "region", "time",
    "job_id", "job_name", "task_name", "instance_index", "environment_id", "environment_name", "node_id",
    "node_instance_id", "node_address", "exit_code", "retry_count", "progress", "error_code", "error_message",
    "created", "started", "ended", "stdout", "stderr", "cpu", "memory_gib", "priority_from", "priority_to",
    "vars",
)


class Draft:
    """Everything a vendor module read from one native event, before it becomes a CloudEvent.

    Built with keywords (or positionally, in this order); fields not given are None (``vars``: empty).
    ``where`` defaults to ``$``; ``transition`` defaults to ``state`` and differs only for e.g.
    ``priority_changed`` and ``resized``; ``time`` is the native event time -- when None, the
    timestamp matching the transition is used. A plain class rather than a dataclass: compiled
    (``core/speedups.py``), its ``__init__`` is native, where a dataclass's is generated Python (a
    tenth of a compiled event's normalising)."""

    __slots__ = _DRAFT_FIELDS

    def __init__(
        self,
        provider: Provider,
        kind: Kind,
        state: State,
        native_event: str,
        raw: dict[str, Any],
        where: str = "$",
        transition: str | None = None,
        native_state: str | None = None,
        region: str | None = None,
        time: str | None = None,
        job_id: str | None = None,
        job_name: str | None = None,
        task_name: str | None = None,
        instance_index: int | None = None,
        environment_id: str | None = None,
        environment_name: str | None = None,
        node_id: str | None = None,
        node_instance_id: str | None = None,
        node_address: str | None = None,
        exit_code: int | None = None,
        retry_count: int | None = None,
        progress: int | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
        created: str | None = None,
        started: str | None = None,
        ended: str | None = None,
        stdout: str | None = None,
        stderr: str | None = None,
        cpu: int | None = None,
        memory_gib: int | float | None = None,
        priority_from: int | None = None,
        priority_to: int | None = None,
        vars: dict[str, Any] | None = None,
    ) -> None:
        self.provider = provider
        self.kind = kind
        self.state = state
        self.native_event = native_event
        self.raw = raw
        self.where = where
        self.transition = transition
        self.native_state = native_state
        self.region = region
        self.time = time
        self.job_id = job_id
        self.job_name = job_name
        self.task_name = task_name
        self.instance_index = instance_index
        self.environment_id = environment_id
        self.environment_name = environment_name
        self.node_id = node_id
        self.node_instance_id = node_instance_id
        self.node_address = node_address
        self.exit_code = exit_code
        self.retry_count = retry_count
        self.progress = progress
        self.error_code = error_code
        self.error_message = error_message
        self.created = created
        self.started = started
        self.ended = ended
        self.stdout = stdout
        self.stderr = stderr
        self.cpu = cpu
        self.memory_gib = memory_gib
        self.priority_from = priority_from
        self.priority_to = priority_to
        self.vars = {} if vars is None else vars

    def __repr__(self) -> str:
        given = ", ".join(f"{name}={getattr(self, name)!r}" for name in _DRAFT_FIELDS
                          if getattr(self, name) is not None)
        return f"Draft({given})"


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
    # most ids hold neither character, and the membership tests are cheaper than translate()
    return value.translate(_SEGMENT_ESCAPES) if "/" in value or "%" in value else value


def _need(draft: Draft, value: str | None, what: str) -> str:
    if value is None:
        raise _malformed(f"a {draft.kind} event needs the {what}", draft.where)
    return _segment(value)


def subject_for(draft: Draft) -> str:
    kind = draft.kind
    if kind == "job" or kind == "task" or kind == "task_instance":
        subject = f"jobs/{_need(draft, draft.job_id, 'job id')}"
        if kind == "task":
            subject += f"/tasks/{_need(draft, draft.task_name, 'task name')}"
        elif kind == "task_instance":
            if draft.instance_index is None:
                raise _malformed("a task_instance event needs the instance index", draft.where)
            if draft.instance_index < 0:
                raise _malformed(f"instance index {draft.instance_index} is negative", draft.where)
            task = _segment(draft.task_name) if draft.task_name is not None else NO_TASK
            subject += f"/tasks/{task}/instances/{draft.instance_index}"
        return subject
    subject = f"environments/{_need(draft, draft.environment_id, 'environment id')}"
    if kind == "node":
        subject += f"/nodes/{_need(draft, draft.node_id, 'node id')}"
    return subject


_dumps = orjson.dumps
_SORT_KEYS = orjson.OPT_SORT_KEYS
_blake2b = hashlib.blake2b


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
    canonical = _dumps(material, option=_SORT_KEYS)
    return _blake2b(canonical, digest_size=16).hexdigest()


def build_event(draft: Draft) -> CloudEvent:
    """Assemble the canonical CloudEvent; raises MalformedPayloadError when an id the subject needs is missing."""
    transition = draft.transition or draft.state
    subject = subject_for(draft)
    created, started, ended = draft.created, draft.started, draft.ended
    times: Times = {"created": created, "started": started, "ended": ended}
    time = draft.time
    if time is None:
        # priority_changed has no timestamp of its own (the job's creation time would date it wrongly)
        own = _TIME_FOR_TRANSITION.get(transition)
        if own is not None:
            time = created if own == "created" else started if own == "started" else ended
    priority: Priority | None = None
    if draft.priority_from is not None and draft.priority_to is not None:
        priority = {"from": draft.priority_from, "to": draft.priority_to}

    job_id, job_name = draft.job_id, draft.job_name
    env_id, env_name = draft.environment_id, draft.environment_name
    node_id, node_instance, node_address = draft.node_id, draft.node_instance_id, draft.node_address
    error_code, error_message = draft.error_code, draft.error_message
    stdout, stderr = draft.stdout, draft.stderr
    cpu, memory = draft.cpu, draft.memory_gib
    data: BatchEvent = {
        "provider": draft.provider,
        "region": draft.region,
        "kind": draft.kind,
        "transition": transition,
        "state": draft.state,
        "native": {"event": draft.native_event, "state": draft.native_state},
        "job": None if job_id is None and job_name is None else {"id": job_id, "name": job_name},
        "task": None if draft.task_name is None else {"name": draft.task_name},
        "instance": None if draft.instance_index is None else {"index": draft.instance_index},
        "environment": None if env_id is None and env_name is None else {"id": env_id, "name": env_name},
        "node": None
        if node_id is None and node_instance is None and node_address is None
        else {"id": node_id, "instance_id": node_instance, "address": node_address},
        "exit_code": draft.exit_code,
        "retry_count": draft.retry_count,
        "progress": draft.progress,
        "error": None
        if error_code is None and error_message is None
        else {"code": error_code, "message": error_message},
        "times": times,
        "logs": None if stdout is None and stderr is None else {"stdout": stdout, "stderr": stderr},
        "resources": None if cpu is None and memory is None else {"cpu": cpu, "memory_gib": memory},
        "priority": priority,
        "vars": draft.vars,
        "raw": draft.raw,
    }
    id_ = event_id(draft.provider, draft.region, subject, transition, draft.state, time, priority, draft.raw)
    source = f"batch://{draft.provider}/{draft.region or '-'}"
    type_ = f"batch.{draft.kind}.{transition}"
    # two literals rather than inserting "time" into one: each dict is built at its final size
    # subject_for made sure the id the partition key names is there
    kind = draft.kind
    partitionkey = job_id if kind == "job" or kind == "task" or kind == "task_instance" else env_id
    event: Any
    if time is None:
        event = {
            "specversion": SPECVERSION,
            "id": id_,
            "source": source,
            "type": type_,
            "subject": subject,
            "partitionkey": partitionkey,
            "datacontenttype": DATACONTENTTYPE,
            "dataschema": DATASCHEMA,
            "data": data,
        }
    else:
        event = {
            "specversion": SPECVERSION,
            "id": id_,
            "source": source,
            "type": type_,
            "subject": subject,
            "time": time,
            "sequence": _sequence(time, draft.state),
            "partitionkey": partitionkey,
            "datacontenttype": DATACONTENTTYPE,
            "dataschema": DATASCHEMA,
            "data": data,
        }
        if event["sequence"] is None:  # only for a time outside what a sequence can express
            del event["sequence"]
    built: CloudEvent = event
    return built


def ordering_key(event: Mapping[str, Any]) -> str | None:
    """The job id, else the environment id: events of one job (or pool) keep their order on every backend."""
    data = event.get("data")
    # exact-dict tests first: they are what events hold, and an ABC isinstance costs far more
    if data.__class__ is not dict and not isinstance(data, Mapping):
        return None
    for ref in ("job", "environment"):
        obj = data.get(ref)
        if obj.__class__ is dict or isinstance(obj, Mapping):
            value = obj.get("id")
            if isinstance(value, str) and value:
                return value
    return None
