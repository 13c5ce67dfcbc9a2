"""Azure Batch: diagnostic ``ServiceLog`` records (``{"time", "resourceId", "category", "operationName",
"properties"}``), one per record; Azure Monitor exports wrap them in ``{"records": [...]}``.

``properties`` arrives as an object or as a JSON string. Task records are dated by the task's own
``executionInfo`` (``endTime`` for complete/fail, ``startTime`` for start) rather than the record's
``time``, so the ``TaskFailEvent`` Azure writes beside a failed ``TaskCompleteEvent`` yields the same
transition, state and time — hence the same id — and de-duplicates. Schedule failures and requeues
happen between runs and are dated by the record's ``time``.

A failed task's reason is wherever the event's version put it: ``executionInfo.failureInfo``,
``executionInfo.schedulingError`` or the top-level ``schedulingError``. Job preparation and release
tasks (``taskType`` ``JobPrep``/``JobRelease``) are tasks of their job named by ``taskName``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ..envelopes import load_json
from ..errors import MalformedPayloadError, UnsupportedEventError
from ..event import CloudEvent, Draft, Reader, State, build_event
from . import vendor

PROVIDER: Final = "azure"
CATEGORIES = ("ServiceLog", "ServiceLogs")

#: pool operations -> (canonical state, transition when it differs from the state)
POOL_EVENTS: dict[str, tuple[State, str | None]] = {
    "PoolCreateEvent": ("created", None),
    "PoolDeleteStartEvent": ("deleting", None),
    "PoolDeleteCompleteEvent": ("deleted", None),
    # a pool being resized or rescaled is up and serving; the change itself is the transition
    "PoolResizeStartEvent": ("running", "resizing"),
    "PoolResizeCompleteEvent": ("running", "resized"),
    "PoolAutoscaleEvent": ("running", "autoscaled"),
}

#: task operations -> (canonical state, None when the outcome decides; transition when it differs)
TASK_EVENTS: dict[str, tuple[State | None, str | None]] = {
    "TaskStartEvent": ("running", None),
    "TaskCompleteEvent": (None, None),
    "TaskFailEvent": ("failed", None),
    # a temporary failure: the service retries the scheduling, so the task is still waiting
    "TaskScheduleFailEvent": ("pending", "schedule_failed"),
    "TaskRequeueEvent": ("pending", "requeued"),
    # job preparation and release tasks (and start tasks, which belong to no job)
    "SpecialTaskEvent": (None, None),
}

#: ``taskType`` values of the special tasks that are part of a job; their name is in ``taskName``
JOB_SPECIAL_TASKS = ("JobPrep", "JobRelease")
#: outcome events: dated by the task's own end time; the others (but start) by the record's time
_ENDED = ("TaskCompleteEvent", "TaskFailEvent", "SpecialTaskEvent")

#: :func:`matches` is false unless one of these keys is present (a cheap pre-test for the dispatcher)
MATCH_KEYS = ("operationName",)


def matches(obj: Mapping[str, Any]) -> bool:
    if not isinstance(obj.get("operationName"), str) or "properties" not in obj:
        return False
    resource = obj.get("resourceId")
    return obj.get("category") in CATEGORIES or (isinstance(resource, str) and "/MICROSOFT.BATCH/" in resource.upper())


def _properties(obj: Mapping[str, Any], record: Reader) -> dict[str, Any]:
    value = obj.get("properties")
    if value.__class__ is dict:  # its path is formatted only for text to parse, or an error
        found: dict[str, Any] = value
        return found
    if isinstance(value, str):
        value = load_json(value, record.path("properties"))
    if not isinstance(value, dict):
        raise MalformedPayloadError("properties must be an object (or its JSON text)", where=record.path("properties"))
    return value


def _region(record: Reader) -> str | None:
    location = record.text("location", "region")
    # Azure spells locations both "westeurope" and "West Europe"
    return record.region_of(location.replace(" ", "").lower() if location else None, "location")


def _task_failed(execution: Reader, error: tuple[str | None, str | None]) -> bool:
    result = (execution.text("result") or "").lower()
    if result in ("failure", "failed"):
        return True
    if result == "success":
        return False
    if execution.obj.get("failureInfo") is not None or error != (None, None):
        return True
    exit_code = execution.integer("exitCode")
    return exit_code is not None and exit_code != 0


def _task_error(props: Reader, execution: Reader) -> tuple[str | None, str | None]:
    """The task's reason, wherever this event's version puts it: ``failureInfo`` (task complete/fail),
    ``executionInfo.schedulingError`` (current task fail, requeue, special tasks) or the top-level
    ``schedulingError`` (schedule fail). An error object with neither code nor message (special tasks
    send ``{"details": []}`` on success) is no error."""
    for error in (execution.sub("failureInfo"), execution.sub("schedulingError"), props.sub("schedulingError")):
        code, message = error.text("code"), error.text("message")
        if code is not None or message is not None:
            return code, message
    return None, None


def _task(operation: str, record: Reader, props: Reader, region: str | None, obj: dict[str, Any],
          where: str) -> CloudEvent:
    fixed_state, transition = TASK_EVENTS[operation]
    task_type = props.text("taskType")
    special = task_type in JOB_SPECIAL_TASKS
    if operation == "SpecialTaskEvent" and not special:
        # start tasks run per node, outside any job: no resource of the contract to report them on
        raise UnsupportedEventError(
            f"Azure Batch special task type {(task_type or '')[:40]!r} is not mapped", where=props.path("taskType")
        )
    execution = props.sub("executionInfo")
    node_info = props.sub("nodeInfo")
    error_code, error_message = _task_error(props, execution)
    started = execution.time("startTime")
    ended = execution.time("endTime")
    if fixed_state is not None:
        state: State = fixed_state
    else:
        state = "failed" if _task_failed(execution, (error_code, error_message)) else "succeeded"
    if operation == "TaskStartEvent":
        time = started
    elif operation in _ENDED:
        time = ended
    else:
        # schedule failures and requeues happen between runs: the record's own time dates them
        time = record.time("time")
    draft = Draft(
        provider=PROVIDER,
        kind="task",
        state=state,
        transition=transition,
        native_event=operation,
        raw=obj,
        where=where,
        region=region,
        time=time,
        job_id=props.require("jobId"),
        task_name=props.require("taskName", "id") if special else props.require("id"),
        environment_id=node_info.text("poolId") or props.text("poolId"),
        node_id=node_info.text("nodeId"),
        exit_code=execution.integer("exitCode"),
        retry_count=execution.integer("retryCount", minimum=0),
        error_code=error_code,
        error_message=error_message,
        created=props.time("creationTime"),
        started=started,
        ended=ended,
    )
    return build_event(draft)


def normalize(obj: dict[str, Any], where: str) -> list[CloudEvent]:
    record = Reader(obj, where)
    operation = record.require("operationName")
    category = record.text("category")
    if category is not None and category not in CATEGORIES:
        raise UnsupportedEventError(
            f"Azure log category {category[:40]!r} is not mapped", where=record.path("category")
        )
    props = Reader(_properties(obj, record), record, "properties")
    region = _region(record)

    if operation in TASK_EVENTS:
        return [_task(operation, record, props, region, obj, where)]

    pool = POOL_EVENTS.get(operation)
    if pool is None:
        raise UnsupportedEventError(f"Azure Batch {operation[:60]!r} is not mapped", where=record.path("operationName"))
    state, transition = pool
    result_code = props.text("resultCode")
    failed_resize = result_code is not None and result_code.lower() != "success"
    error_code = result_code if failed_resize else None
    error_message = props.text("resultMessage") if failed_resize else None
    if operation == "PoolAutoscaleEvent":
        autoscale_error = props.sub("error")
        error_code, error_message = autoscale_error.text("code"), autoscale_error.text("message")
    started = props.time("startTime")
    ended = props.time("endTime")
    draft = Draft(
        provider=PROVIDER,
        kind="environment",
        state=state,
        transition=transition,
        native_event=operation,
        raw=obj,
        where=where,
        region=region,
        # pool records have no times of their own except completions and the autoscale run's timestamp
        time=(ended if operation.endswith("CompleteEvent") else props.time("timestamp")) or record.time("time"),
        environment_id=props.require("id", "poolId"),
        environment_name=props.text("displayName"),
        error_code=error_code,
        error_message=error_message,
        created=props.time("creationTime"),
        started=started,
        ended=ended,
    )
    return [build_event(draft)]


def event_names() -> dict[str, set[str]]:
    """An outcome event (``TaskCompleteEvent``, the special tasks') is either outcome: it covers both types."""
    names = {name: ({"batch.task.succeeded", "batch.task.failed"} if state is None
                    else {f"batch.task.{transition or state}"})
             for name, (state, transition) in TASK_EVENTS.items()}
    names.update({name: {f"batch.environment.{transition or state}"}
                  for name, (state, transition) in POOL_EVENTS.items()})
    return names


VENDOR = vendor(PROVIDER, MATCH_KEYS, matches, normalize, event_names)
