"""Tencent Cloud Batch: CMQ messages ``{"Events": [{"EventName", "EventTime", "Region", "Batch", "EventVars"}]}``.

Only the compute-node event has a published sample, so the ``Batch`` fields of job, task and
task-instance events are read leniently under the names Tencent's API uses for those resources
(``JobId``, ``TaskName``, ``TaskInstanceIndex``, ``ExitCode``, ``StateReason``, ...); anything else
stays in ``raw``. Event names are accepted in the message form (``JOB_FAILED``) and in the CamelCase
form Tencent's CLI/config uses (``JobFailed``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from ..errors import MalformedPayloadError, UnsupportedEventError
from ..event import CloudEvent, Draft, Kind, Reader, State, build_event
from . import vendor

PROVIDER: Final = "tencent"

#: every documented event name (message form) -> the resource kind and its canonical state
EVENTS: dict[str, tuple[Kind, State]] = {
    "JOB_RUNNING": ("job", "running"),
    "JOB_SUCCEED": ("job", "succeeded"),
    "JOB_FAILED": ("job", "failed"),
    "JOB_FAILED_INTERRUPTED": ("job", "interrupted"),
    "TASK_RUNNING": ("task", "running"),
    "TASK_SUCCEED": ("task", "succeeded"),
    "TASK_FAILED": ("task", "failed"),
    "TASK_FAILED_INTERRUPTED": ("task", "interrupted"),
    "TASK_INSTANCE_RUNNING": ("task_instance", "running"),
    "TASK_INSTANCE_SUCCEED": ("task_instance", "succeeded"),
    "TASK_INSTANCE_FAILED": ("task_instance", "failed"),
    "TASK_INSTANCE_FAILED_INTERRUPTED": ("task_instance", "interrupted"),
    "COMPUTE_ENV_CREATED": ("environment", "created"),
    "COMPUTE_ENV_DELETED": ("environment", "deleted"),
    "COMPUTE_NODE_CREATED": ("node", "created"),
    "COMPUTE_NODE_CREATION_FAILED": ("node", "creation_failed"),
    "COMPUTE_NODE_RUNNING": ("node", "running"),
    "COMPUTE_NODE_ABNORMAL": ("node", "abnormal"),
    "COMPUTE_NODE_DELETING": ("node", "deleting"),
}

# the field that carries the resource's own (native) state, by kind
_STATE_FIELD: dict[Kind, str] = {
    "job": "JobState",
    "task": "TaskState",
    "task_instance": "TaskInstanceState",
    "environment": "EnvState",
    "node": "ComputeNodeState",
}

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


# names already spelled out: a stream repeats the same few dozen names
_MESSAGE_NAMES: dict[str, str] = {}
_MESSAGE_NAMES_MAX = 1024


def message_name(name: str) -> str:
    """``JobFailed``/``job_failed``/``JOB_FAILED`` -> ``JOB_FAILED`` (the key of :data:`EVENTS`)."""
    known = _MESSAGE_NAMES.get(name)
    if known is None:
        known = _message_name(name)
        if len(_MESSAGE_NAMES) < _MESSAGE_NAMES_MAX:
            _MESSAGE_NAMES[name] = known
    return known


def _message_name(name: str) -> str:
    key = name.strip()
    if "_" not in key:
        key = _CAMEL_BOUNDARY.sub("_", key)
    key = key.upper().replace("-", "_")
    # "Succeeded" is what users write when they follow the canonical names
    return key.replace("_SUCCEEDED", "_SUCCEED")


#: :func:`matches` is false unless one of these keys is present (a cheap pre-test for the dispatcher)
MATCH_KEYS = ("Events", "EventName")


def matches(obj: Mapping[str, Any]) -> bool:
    """A CMQ message (``Events`` array) or one element of it."""
    if isinstance(obj.get("Events"), list):
        return True
    return isinstance(obj.get("EventName"), str) and isinstance(obj.get("Batch"), dict)


def normalize(obj: dict[str, Any], where: str) -> list[CloudEvent]:
    if "Events" not in obj:
        return [_event(obj, where)]
    events = Reader(obj, where).array("Events")
    if not events:
        raise MalformedPayloadError("Events is empty", where=f"{where}.Events")
    out: list[CloudEvent] = []
    for index, element in enumerate(events):
        path = f"{where}.Events[{index}]"
        if not isinstance(element, dict):
            raise MalformedPayloadError("an element of Events must be an object", where=path)
        out.append(_event(element, path))
    return out


def _vars(value: Any, top: Reader) -> dict[str, Any]:
    """``EventVars``: ``[{"name", "value"}]`` as the config declares them (a plain object is accepted too)."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return dict(value)
    where = top.path("EventVars")  # formatted only for a list, whose entries need it
    if not isinstance(value, list):
        raise MalformedPayloadError("EventVars must be a list of {name, value}", where=where)
    out: dict[str, Any] = {}
    for index, item in enumerate(value):
        path = f"{where}[{index}]"
        if not isinstance(item, dict):
            raise MalformedPayloadError("an EventVars entry must be an object", where=path)
        name = Reader(item, path).text("name", "Name")
        if name is None:
            raise MalformedPayloadError("an EventVars entry needs a name", where=f"{path}.name")
        out[name] = item.get("value", item.get("Value"))
    return out


def _event(element: dict[str, Any], where: str) -> CloudEvent:
    top = Reader(element, where)
    name = top.require("EventName")
    mapped = EVENTS.get(message_name(name))
    if mapped is None:
        raise UnsupportedEventError(f"Tencent Batch event {name[:60]!r} is not mapped", where=top.path("EventName"))
    kind, state = mapped
    batch = top.sub("Batch")
    redirect = batch.sub("RedirectInfo")
    draft = Draft(
        provider=PROVIDER,
        kind=kind,
        state=state,
        native_event=name,
        native_state=batch.text(_STATE_FIELD[kind]),
        raw=element,
        where=where,
        region=top.region("Region"),
        time=top.time("EventTime"),
        job_id=batch.text("JobId"),
        job_name=batch.text("JobName"),
        task_name=batch.text("TaskName"),
        instance_index=batch.integer("TaskInstanceIndex"),
        environment_id=batch.text("EnvId", "ComputeEnvId"),
        environment_name=batch.text("EnvName", "ComputeEnvName"),
        node_id=batch.text("ComputeNodeId"),
        node_instance_id=batch.text("ComputeNodeInstanceId"),
        node_address=batch.text("PrivateIpAddress", "InnerIpAddress", "ComputeNodeIp"),
        exit_code=batch.integer("ExitCode"),
        retry_count=batch.integer("RetryCount", minimum=0),
        error_code=batch.text("ErrorCode", "StateReasonCode"),
        error_message=batch.text("StateReason", "ErrorMessage", "Message", "Reason"),
        created=batch.time("ResourceCreatedTime", "CreateTime"),
        started=batch.time("RunningTime", "LaunchTime", "StartTime"),
        ended=batch.time("EndTime"),
        stdout=batch.text("StdoutRedirectPath") or redirect.text("StdoutRedirectPath"),
        stderr=batch.text("StderrRedirectPath") or redirect.text("StderrRedirectPath"),
        cpu=batch.integer("Cpu", minimum=0),
        memory_gib=batch.number("Mem", minimum=0),
        # "event_vars" is how the config spells them; a relay may keep that spelling
        vars=_vars(element.get("EventVars", element.get("event_vars")), top),
    )
    return build_event(draft)


def event_names() -> dict[str, set[str]]:
    """``JobSucceed`` / ``JOB_SUCCEED`` (any spelling) -> its canonical type."""
    return {name: {f"batch.{kind}.{state}"} for name, (kind, state) in EVENTS.items()}


VENDOR = vendor(PROVIDER, MATCH_KEYS, matches, normalize, event_names)
