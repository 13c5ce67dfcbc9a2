"""Azure Batch: diagnostic ``ServiceLog`` records (``{"time", "resourceId", "category", "operationName",
"properties"}``), one per record; Azure Monitor exports wrap them in ``{"records": [...]}``.

``properties`` arrives as an object or as a JSON string. Task records are dated by the task's own
``executionInfo`` (``endTime`` for complete/fail, ``startTime`` for start) rather than the record's
``time``, so the ``TaskFailEvent`` Azure writes beside a failed ``TaskCompleteEvent`` yields the same
transition, state and time — hence the same id — and de-duplicates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ..envelopes import load_json
from ..errors import MalformedPayloadError, UnsupportedEventError
from ..event import CloudEvent, Draft, Reader, State, as_region, build_event
from . import vendor

PROVIDER: Final = "azure"
CATEGORIES = ("ServiceLog", "ServiceLogs")

#: pool operations -> (canonical state, transition when it differs from the state)
POOL_EVENTS: dict[str, tuple[State, str | None]] = {
    "PoolCreateEvent": ("created", None),
    "PoolDeleteStartEvent": ("deleting", None),
    "PoolDeleteCompleteEvent": ("deleted", None),
    # a resized pool is up and serving; the resize itself is the transition
    "PoolResizeCompleteEvent": ("running", "resized"),
}

TASK_EVENTS = ("TaskStartEvent", "TaskCompleteEvent", "TaskFailEvent")


#: :func:`matches` is false unless one of these keys is present (a cheap pre-test for the dispatcher)
MATCH_KEYS = ("operationName",)


def matches(obj: Mapping[str, Any]) -> bool:
    if not isinstance(obj.get("operationName"), str) or "properties" not in obj:
        return False
    resource = obj.get("resourceId")
    return obj.get("category") in CATEGORIES or (isinstance(resource, str) and "/MICROSOFT.BATCH/" in resource.upper())


def _properties(obj: Mapping[str, Any], where: str) -> dict[str, Any]:
    value = obj.get("properties")
    if isinstance(value, str):
        value = load_json(value, where)
    if not isinstance(value, dict):
        raise MalformedPayloadError("properties must be an object (or its JSON text)", where=where)
    return value


def _region(record: Reader) -> str | None:
    location = record.text("location", "region")
    # Azure spells locations both "westeurope" and "West Europe"
    return as_region(location.replace(" ", "").lower() if location else None, record.path("location"))


def _task_failed(operation: str, execution: Reader) -> bool:
    if operation == "TaskFailEvent":
        return True
    result = (execution.text("result") or "").lower()
    if result in ("failure", "failed"):
        return True
    if result == "success":
        return False
    if execution.obj.get("failureInfo") is not None:
        return True
    exit_code = execution.integer("exitCode")
    return exit_code is not None and exit_code != 0


def normalize(obj: dict[str, Any], where: str) -> list[CloudEvent]:
    record = Reader(obj, where)
    operation = record.require("operationName")
    category = record.text("category")
    if category is not None and category not in CATEGORIES:
        raise UnsupportedEventError(
            f"Azure log category {category[:40]!r} is not mapped", where=record.path("category")
        )
    props = Reader(_properties(obj, record.path("properties")), record.path("properties"))
    region = _region(record)

    if operation in TASK_EVENTS:
        execution = props.sub("executionInfo")
        node_info = props.sub("nodeInfo")
        failure = execution.sub("failureInfo")
        started = execution.time("startTime")
        ended = execution.time("endTime")
        if operation == "TaskStartEvent":
            state: State = "running"
            time = started
        else:
            state = "failed" if _task_failed(operation, execution) else "succeeded"
            time = ended
        draft = Draft(
            provider=PROVIDER,
            kind="task",
            state=state,
            native_event=operation,
            raw=obj,
            where=where,
            region=region,
            time=time,
            job_id=props.require("jobId"),
            task_name=props.require("id"),
            environment_id=node_info.text("poolId") or props.text("poolId"),
            node_id=node_info.text("nodeId"),
            exit_code=execution.integer("exitCode"),
            retry_count=execution.integer("retryCount", minimum=0),
            error_code=failure.text("code"),
            error_message=failure.text("message"),
            created=props.time("creationTime"),
            started=started,
            ended=ended,
        )
        return [build_event(draft)]

    pool = POOL_EVENTS.get(operation)
    if pool is None:
        raise UnsupportedEventError(f"Azure Batch {operation[:60]!r} is not mapped", where=record.path("operationName"))
    state, transition = pool
    result_code = props.text("resultCode")
    failed_resize = result_code is not None and result_code.lower() != "success"
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
        # pool records have no execution times of their own except for completions
        time=(ended if operation.endswith("CompleteEvent") else None) or record.time("time"),
        environment_id=props.require("id"),
        environment_name=props.text("displayName"),
        error_code=result_code if failed_resize else None,
        error_message=props.text("resultMessage") if failed_resize else None,
        created=props.time("creationTime"),
        started=started,
        ended=ended,
    )
    return [build_event(draft)]


def event_names() -> dict[str, set[str]]:
    """``TaskCompleteEvent`` is either outcome: it covers both types."""
    names = {"TaskStartEvent": {"batch.task.running"},
             "TaskCompleteEvent": {"batch.task.succeeded", "batch.task.failed"},
             "TaskFailEvent": {"batch.task.failed"}}
    names.update({name: {f"batch.environment.{transition or state}"}
                  for name, (state, transition) in POOL_EVENTS.items()})
    return names


VENDOR = vendor(PROVIDER, MATCH_KEYS, matches, normalize, event_names)
