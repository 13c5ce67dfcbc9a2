"""Alibaba Cloud BatchCompute: MNS notification messages (``{"Category", "Event", "State", ...}``).

Quirks handled here rather than "fixed": every number arrives as a string; ``OnInstance*`` is a task
instance under ``"Category": "Job"`` but a cluster VM under ``"Category": "Cluster"`` (so the
Category decides, and ``InstanceId`` means an index in one and a VM id in the other); log paths are
mapped by their field names even where the documented sample has them crossed. Messages carry no
region, so ``source`` is ``batch://alibaba/-`` unless one names a ``Region``/``RegionId``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ..errors import MalformedPayloadError, UnsupportedEventError
from ..event import CloudEvent, Draft, Kind, Reader, State, build_event
from . import vendor

PROVIDER: Final = "alibaba"

_SUFFIX_STATES: dict[str, State] = {
    "Waiting": "pending",
    "Running": "running",
    "Stopped": "stopped",
    "Finished": "succeeded",
    "Failed": "failed",
}

#: ``"Category": "Job"`` events -> kind and canonical state (None: state comes from ``State``)
JOB_EVENTS: dict[str, tuple[Kind, State | None]] = {
    **{f"OnJob{suffix}": ("job", state) for suffix, state in _SUFFIX_STATES.items()},
    **{f"OnTask{suffix}": ("task", state) for suffix, state in _SUFFIX_STATES.items()},
    **{f"OnInstance{suffix}": ("task_instance", state) for suffix, state in _SUFFIX_STATES.items()},
    "OnPriorityChange": ("job", None),
}

#: ``"Category": "Cluster"`` events
CLUSTER_EVENTS: dict[str, tuple[Kind, State | None]] = {
    "OnClusterDeleted": ("environment", "deleted"),
    "OnInstanceCreated": ("node", "created"),
    "OnInstanceActive": ("node", "running"),
}

_CATEGORIES = {"Job": JOB_EVENTS, "Cluster": CLUSTER_EVENTS}

# the resource's own ``State`` values, for OnPriorityChange (whose state is the job's current one)
_STATE_VALUES: dict[str, State] = {
    "waiting": "pending",
    "running": "running",
    "stopped": "stopped",
    "finished": "succeeded",
    "failed": "failed",
    "deleted": "deleted",
}


#: :func:`matches` is false unless one of these keys is present (a cheap pre-test for the dispatcher)
MATCH_KEYS = ("Event",)


def matches(obj: Mapping[str, Any]) -> bool:
    event = obj.get("Event")
    if not (isinstance(event, str) and event.startswith("On")):
        return False
    category = obj.get("Category")
    return (isinstance(category, str) and category in _CATEGORIES) or "JobId" in obj or "ClusterId" in obj


def _category(reader: Reader, event: str) -> str:
    category = reader.text("Category")
    if category is not None:
        return category
    # without a Category only the event names that exist in one category alone are unambiguous
    if event in CLUSTER_EVENTS:
        return "Cluster"
    return "Job"


def normalize(obj: dict[str, Any], where: str) -> list[CloudEvent]:
    r = Reader(obj, where)
    event = r.require("Event")
    category = _category(r, event)
    table = _CATEGORIES.get(category)
    if table is None:
        raise UnsupportedEventError(f"Alibaba Category {category[:40]!r} is not mapped", where=r.path("Category"))
    mapped = table.get(event)
    if mapped is None:
        raise UnsupportedEventError(
            f"Alibaba event {event[:60]!r} is not mapped under Category {category!r}", where=r.path("Event")
        )
    kind, state = mapped
    native_state = r.text("State")
    transition: str | None = None
    if state is None:
        transition = "priority_changed"
        state = _STATE_VALUES.get((native_state or "").lower())
        if state is None:
            raise MalformedPayloadError(
                f"OnPriorityChange needs the job's State, got {native_state!r}", where=r.path("State")
            )

    draft = Draft(
        provider=PROVIDER,
        kind=kind,
        state=state,
        transition=transition,
        native_event=event,
        native_state=native_state,
        raw=obj,
        where=where,
        region=r.region_of(r.first(("Region", "RegionId"))[1], "Region"),
        created=r.time("CreationTime"),
        started=r.time("StartTime"),
        ended=r.time("EndTime"),
        error_code=r.text("ErrorCode"),
        # an instance may leave ErrorCode/ErrorMessage empty and say what happened in Detail
        error_message=r.text("ErrorMessage", "Message", "Detail"),
    )
    if category == "Cluster":
        draft.environment_id = r.text("ClusterId")
        draft.environment_name = r.text("ClusterName")
        if kind == "node":
            draft.node_id = draft.node_instance_id = r.require("InstanceId")
            draft.node_address = r.text("InnerIpAddress")
    else:
        draft.job_id = r.require("JobId")
        draft.job_name = r.text("JobName")
        draft.task_name = r.text("Task", "TaskName")
        if kind == "task_instance":
            draft.instance_index = r.integer("InstanceId")
        draft.exit_code = r.integer("ExitCode")
        draft.retry_count = r.integer("RetryCount", minimum=0)
        draft.progress = r.integer("Progress")
        draft.stdout = r.text("StdoutRedirectPath")
        draft.stderr = r.text("StderrRedirectPath")
        if transition == "priority_changed":
            draft.priority_from = r.integer("From")
            draft.priority_to = r.integer("To")
            if draft.priority_from is None or draft.priority_to is None:
                raise MalformedPayloadError("OnPriorityChange needs From and To", where=r.path("To"))
    return [build_event(draft)]


def event_names() -> dict[str, set[str]]:
    return {name: {f"batch.{kind}.{state or 'priority_changed'}"}
            for events in (JOB_EVENTS, CLUSTER_EVENTS) for name, (kind, state) in events.items()}


VENDOR = vendor(PROVIDER, MATCH_KEYS, matches, normalize, event_names)
