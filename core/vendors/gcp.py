"""Google Cloud Batch: Pub/Sub notifications, whose facts are in the message *attributes*.

``Type`` is ``JOB_STATE_CHANGED`` (with ``NewJobState``) or ``TASK_STATE_CHANGED`` (with
``NewTaskState`` and ``TaskUID``); ``JobName`` is ``projects/P/locations/L/jobs/NAME`` (region L,
job name NAME) and ``JobUID`` is the job id. The body is a human description (or JSON); an
``exit code N`` in it is kept. The native event is the Pub/Sub message itself, and its
``publishTime`` dates the transition — it is stamped once by Pub/Sub, so redeliveries keep it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from ..envelopes import decode_base64, load_json
from ..errors import MalformedPayloadError, UnsupportedEventError
from ..event import CloudEvent, Draft, Kind, Reader, State, as_str, build_event
from . import vendor

PROVIDER: Final = "gcp"

#: ``Type`` -> (kind, the attribute holding the new state)
TYPES: dict[str, tuple[Kind, str]] = {
    "JOB_STATE_CHANGED": ("job", "NewJobState"),
    "TASK_STATE_CHANGED": ("task_instance", "NewTaskState"),
}

#: job and task states -> canonical state
STATES: dict[str, State] = {
    "QUEUED": "pending",
    "SCHEDULED": "pending",
    "PENDING": "pending",
    "ASSIGNED": "starting",
    "RUNNING": "running",
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
    "DELETION_IN_PROGRESS": "deleting",
    "UNEXECUTED": "stopped",
    # not in the spec's table; a cancelled job has stopped for good
    "CANCELLED": "stopped",
}

_JOB_NAME = re.compile(r"projects/[^/]+/locations/(?P<location>[^/]+)/jobs/(?P<job>[^/]+)")
_TASK_PATH = re.compile(r"(?:.*/)?taskGroups/(?P<group>[^/]+)/tasks/(?P<index>\d{1,18})")
# TaskUID is "<job uid>-<task group>-<index>"; only the index is certain to be there
_TASK_UID = re.compile(r"(?:.*-)?(?P<group>group\d+)-(?P<index>\d{1,18})|(?:.*-)?(?P<bare>\d{1,18})")
_EXIT_CODE = re.compile(r"exit code (-?\d{1,10})\b")


def _attributes(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    attrs = obj.get("attributes")
    return attrs if isinstance(attrs, dict) else None


#: :func:`matches` is false unless one of these keys is present (a cheap pre-test for the dispatcher)
MATCH_KEYS = ("attributes",)


def matches(obj: Mapping[str, Any]) -> bool:
    attrs = _attributes(obj)
    return attrs is not None and isinstance(attrs.get("Type"), str) and ("JobUID" in attrs or "JobName" in attrs)


def _body(obj: Mapping[str, Any], where: str) -> str | None:
    """The notification body's description: the decoded text, or its ``description`` when it is JSON."""
    data = obj.get("data")
    if data is None or data == "":
        return None
    if not isinstance(data, str):
        raise MalformedPayloadError("Pub/Sub data must be a Base64 string", where=where)
    try:
        text = decode_base64(data, where).decode("utf-8").strip()
    except UnicodeDecodeError:
        raise MalformedPayloadError("Pub/Sub data is not UTF-8 text", where=where) from None
    if text.startswith("{"):
        parsed = load_json(text, where)
        if isinstance(parsed, dict):
            return as_str(parsed.get("description", parsed.get("message")), f"{where}.description")
    return text or None


def _task_position(attrs: Reader) -> tuple[str | None, int | None]:
    for key in ("TaskName", "TaskUID"):
        value = attrs.text(key)
        if value is None:
            continue
        match = _TASK_PATH.fullmatch(value) or _TASK_UID.fullmatch(value)
        if match is not None:
            return match["group"], int(match["index"] or match["bare"])
    return None, None


def normalize(obj: dict[str, Any], where: str) -> list[CloudEvent]:
    msg = Reader(obj, where)
    if _attributes(obj) is None:
        raise MalformedPayloadError("missing attributes", where=msg.path("attributes"))
    attrs = msg.sub("attributes")
    kind_type = attrs.require("Type")
    mapped = TYPES.get(kind_type)
    if mapped is None:
        raise UnsupportedEventError(
            f"Batch notification type {kind_type[:40]!r} is not mapped", where=attrs.path("Type")
        )
    kind, state_key = mapped
    native_state = attrs.require(state_key)
    state = STATES.get(native_state)
    if state is None:
        raise UnsupportedEventError(f"Batch state {native_state[:40]!r} is not mapped", where=attrs.path(state_key))

    job_name = attrs.text("JobName")
    region: str | None = None
    if job_name is not None:
        match = _JOB_NAME.fullmatch(job_name)
        if match is not None:
            region = match["location"]
        job_name = job_name.rsplit("/", 1)[-1] or None
    region = attrs.region_of(region or attrs.text("Region"), "JobName")
    description = _body(obj, msg.path("data"))
    exit_match = _EXIT_CODE.search(description or "")

    draft = Draft(
        provider=PROVIDER,
        kind=kind,
        state=state,
        native_event=kind_type,
        native_state=native_state,
        raw=obj,
        where=where,
        region=region,
        time=msg.time("publishTime", "publish_time"),
        job_id=attrs.text("JobUID") or job_name,
        job_name=job_name,
        exit_code=int(exit_match[1]) if exit_match else None,
        error_message=description if state == "failed" else None,
    )
    if kind == "task_instance":
        draft.task_name, draft.instance_index = _task_position(attrs)
        if draft.instance_index is None:
            raise MalformedPayloadError("cannot find the task index in TaskUID", where=attrs.path("TaskUID"))
    return [build_event(draft)]


def event_names() -> dict[str, set[str]]:
    states = set(STATES.values())
    return {name: {f"batch.{kind}.{s}" for s in states} for name, (kind, _attr) in TYPES.items()}


VENDOR = vendor(PROVIDER, MATCH_KEYS, matches, normalize, event_names)
