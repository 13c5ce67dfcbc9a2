"""The ``sequence`` and ``partitionkey`` extensions (contract v1.1, "Extensions").

``sequence`` is ``{T}.{R}``: ``T`` the event's ``time`` as microseconds since the Unix epoch,
zero-padded to 17 digits, ``R`` the two-digit rank of ``data.state``. Compared as plain strings, two
sequences of one subject order its events by their place in the resource's life: a later time wins,
and at the same time a later state (``succeeded`` after ``running``). An event is *stale* when an
event of the same subject with a higher sequence has already been seen.

Everything here is vendor-free: a consumer orders and supersedes by ``sequence`` alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime, timezone
from typing import Any

#: the rank of each canonical state within a resource's life (the contract's table)
STATE_RANK: dict[str, int] = {
    "pending": 10,
    "created": 10,
    "starting": 20,
    "running": 30,
    "abnormal": 40,
    "creation_failed": 50,
    "deleting": 60,
    "deleted": 70,
    "succeeded": 90,
    "failed": 90,
    "stopped": 90,
    "interrupted": 90,
}
_RANK_TEXT = {state: f"{rank:02d}" for state, rank in STATE_RANK.items()}

#: ``T`` has 17 digits: times after 5138-11-16 (and before 1970) are clamped to the ends, which keeps
#: every sequence the same length and so comparable as text
_MAX_MICROS = 10**17 - 1
SEQUENCE_PATTERN = re.compile(r"[0-9]{17}\.[0-9]{2}")

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
# the microseconds at the start of each minute seen: a stream names a few minutes thousands of times,
# and a hit leaves only the seconds and the fraction to read (the normaliser's hot path)
_MINUTE_MICROS: dict[str, int] = {}
_MINUTE_MICROS_MAX = 4096
_PAD = ("000000", "00000", "0000", "000", "00", "0", "")
_TIME = re.compile(r"(\d{1,4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?Z")


def _minute_micros(minute: str) -> int:
    micros = _MINUTE_MICROS.get(minute)
    if micros is None:
        days = date(int(minute[:4]), int(minute[5:7]), int(minute[8:10])).toordinal() - _EPOCH_ORDINAL
        micros = (days * 1440 + int(minute[11:13]) * 60 + int(minute[14:16])) * 60_000_000
        if len(_MINUTE_MICROS) >= _MINUTE_MICROS_MAX:
            _MINUTE_MICROS.clear()
        _MINUTE_MICROS[minute] = micros
    return micros


def time_micros(time: str) -> int | None:
    """Microseconds since the epoch of a ``time`` in RFC 3339 UTC with ``Z`` (digits past the sixth
    fractional one are cut, not rounded); None when ``time`` is not in that form."""
    match = _TIME.fullmatch(time)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction = match.groups()
    try:
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=timezone.utc)
    except ValueError:
        return None
    whole = (moment.toordinal() - _EPOCH_ORDINAL) * 86_400 + moment.hour * 3600 + moment.minute * 60 + moment.second
    return whole * 1_000_000 + (int(fraction[:6].ljust(6, "0")) if fraction else 0)


def _text(micros: int, rank: str) -> str:
    if micros < 0:
        micros = 0
    elif micros > _MAX_MICROS:
        micros = _MAX_MICROS
    return str(micros).zfill(17) + "." + rank  # cheaper than a format spec, the same text


def sequence(time: str | None, state: str) -> str | None:
    """The ``sequence`` of a built event with this ``time`` (as :func:`~batchbridge.core.event.as_time`
    writes it) and ``data.state``; None without a time, or with a state outside the contract."""
    if time is None:
        return None
    rank = _RANK_TEXT.get(state)
    if rank is None:
        return None
    # One function for the time already in the normaliser's form, ``YYYY-MM-DDTHH:MM:SS[.f...]Z``
    # (every event goes through here); anything else takes the validating parser.
    if len(time) >= 20 and time[10] == "T" and time[4] == "-":
        end = time[19]
        micros: int | None = None
        try:
            minute = _MINUTE_MICROS.get(time[:16])
            if minute is None:
                minute = _minute_micros(time[:16])
            if end == "Z":
                micros = minute + int(time[17:19]) * 1_000_000
            elif end == ".":
                fraction = time[20:26] if len(time) > 26 else time[20:-1]  # digits past the sixth are cut
                micros = minute + int(time[17:19] + fraction + _PAD[len(fraction)])
        except ValueError:
            pass
        if micros is not None:
            return _text(micros, rank)
    micros = time_micros(time)
    return None if micros is None else _text(micros, rank)


def sequence_for(event: Mapping[str, Any]) -> str | None:
    """The ``sequence`` the contract gives an event (from its ``time`` and ``data.state``), whatever
    its ``sequence`` attribute says; None when it has no time."""
    data = event.get("data")
    state = data.get("state") if isinstance(data, Mapping) else None
    time = event.get("time")
    if not isinstance(time, str) or not isinstance(state, str) or state not in _RANK_TEXT:
        return None
    micros = time_micros(time)  # validated: the event may come from anywhere
    return None if micros is None else _text(micros, _RANK_TEXT[state])


def sequence_of(event: Mapping[str, Any]) -> str | None:
    """The event's ``sequence`` attribute when it is a well-formed one, else None."""
    value = event.get("sequence")
    if value.__class__ is str and len(value) == 20 and SEQUENCE_PATTERN.fullmatch(value):
        text: str = value
        return text
    return None


def partition_key(event: Mapping[str, Any]) -> str | None:
    """The ``partitionkey`` the contract gives an event: its job id (job, task and task-instance
    events) or environment id (environment and node events), read from ``data``."""
    data = event.get("data")
    if not isinstance(data, Mapping):
        return None
    ref = data.get("environment") if data.get("kind") in ("environment", "node") else data.get("job")
    if isinstance(ref, Mapping):
        value = ref.get("id")
        if isinstance(value, str) and value:
            return value
    return None


def with_extensions(event: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a canonical event with ``sequence`` and ``partitionkey`` filled in from its own
    ``time``, ``data.state`` and ids where they are missing (a binary-mode message whose backend had
    no attribute slot left for them)."""
    out = dict(event)
    if "sequence" not in out:
        seq = sequence_for(out)
        if seq is not None:
            out["sequence"] = seq
    if "partitionkey" not in out:
        key = partition_key(out)
        if key is not None:
            out["partitionkey"] = key
    return out
