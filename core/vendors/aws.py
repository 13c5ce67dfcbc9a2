"""AWS Batch: EventBridge ``Batch Job State Change`` and ``Batch Job Queue Blocked`` events.

An array job's children have ids ``<parent uuid>:<index>`` and a multi-node parallel job's nodes
``<parent uuid>#<node index>``; both become ``task_instance`` events of the parent job (AWS has no
task level, so their subject's task segment is ``-``). Timestamps in ``detail`` are epoch
milliseconds; the event's own ``time`` dates the transition.

A queue-blocked event names the ``RUNNABLE`` job at the head of a queue that cannot run it; it is
the job's transition ``blocked`` (state ``pending``), its ``statusReason`` the error, so it never
collides with the job's own ``pending`` event.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from ..errors import MalformedPayloadError, UnsupportedEventError
from ..event import CloudEvent, Draft, Reader, State, build_event
from . import vendor

PROVIDER: Final = "aws"
DETAIL_TYPE = "Batch Job State Change"
QUEUE_BLOCKED = "Batch Job Queue Blocked"
#: detail-type -> transition when it differs from the state
DETAIL_TYPES: dict[str, str | None] = {DETAIL_TYPE: None, QUEUE_BLOCKED: "blocked"}

#: ``detail.status`` -> canonical state (SUBMITTED is not in the spec's table but precedes PENDING)
STATUSES: dict[str, State] = {
    "SUBMITTED": "pending",
    "PENDING": "pending",
    "RUNNABLE": "pending",
    "STARTING": "starting",
    "RUNNING": "running",
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
}

#: an array child ``parent:index`` or a multi-node parallel node ``parent#index``
_CHILD = re.compile(r"(?P<parent>.+)[:#](?P<index>\d{1,9})")
_DEFAULT_LOG_GROUP = "/aws/batch/job"


#: :func:`matches` is false unless one of these keys is present (a cheap pre-test for the dispatcher)
MATCH_KEYS = ("source",)


def matches(obj: Mapping[str, Any]) -> bool:
    return obj.get("source") == "aws.batch" and isinstance(obj.get("detail-type"), str)


def _resources(container: Reader) -> tuple[int | None, int | float | None]:
    cpu: int | None = None
    memory_mib: int | float | None = None
    for index, item in enumerate(container.array("resourceRequirements")):
        if not isinstance(item, dict):
            continue
        req = Reader(item, container, f"resourceRequirements[{index}]")
        kind = req.text("type")
        if kind == "VCPU":
            vcpus = req.number("value", minimum=0)
            # fractional Fargate vCPUs do not fit BatchEvent's integer cpu; raw keeps them
            cpu = vcpus if isinstance(vcpus, int) else None
        elif kind == "MEMORY":
            memory_mib = req.number("value", minimum=0)
    if cpu is None:
        cpu = container.integer("vcpus", minimum=0)
    if memory_mib is None:
        memory_mib = container.number("memory", minimum=0)
    memory_gib = None if memory_mib is None else round(memory_mib / 1024, 6)
    return cpu, memory_gib


def _log_stream(container: Reader, region: str | None, account: str | None) -> str | None:
    """The CloudWatch log stream ARN: AWS Batch writes stdout and stderr to that one stream."""
    stream = container.text("logStreamName")
    if stream is None:
        return None
    options = container.sub("logConfiguration").sub("options")
    group = options.text("awslogs-group") or _DEFAULT_LOG_GROUP
    log_region = options.text("awslogs-region") or region or ""
    return f"arn:aws:logs:{log_region}:{account or ''}:log-group:{group}:log-stream:{stream}"


def normalize(obj: dict[str, Any], where: str) -> list[CloudEvent]:
    r = Reader(obj, where)
    detail_type = r.require("detail-type")
    if detail_type not in DETAIL_TYPES:
        raise UnsupportedEventError(
            f"AWS Batch {detail_type[:60]!r} events are not mapped", where=r.path("detail-type")
        )
    if not isinstance(obj.get("detail"), dict):
        raise MalformedPayloadError("missing detail object", where=r.path("detail"))
    detail = r.sub("detail")
    status = detail.require("status")
    transition = DETAIL_TYPES[detail_type]
    # a blocked queue holds its job back: whatever AWS reports, the job is still waiting
    state: State | None = "pending" if transition == "blocked" else STATUSES.get(status)
    if state is None:
        raise UnsupportedEventError(f"AWS Batch status {status[:40]!r} is not mapped", where=detail.path("status"))

    region = r.region("region")
    job_id = detail.require("jobId")
    index = detail.sub("arrayProperties").integer("index", minimum=0)
    if index is None and "nodeDetails" in detail.obj:
        index = detail.sub("nodeDetails").integer("nodeIndex", minimum=0)
    # most ids are a plain uuid: the pattern needs one of its separators
    child = _CHILD.fullmatch(job_id) if ":" in job_id or "#" in job_id else None
    parent_id = job_id
    if child is not None:
        parent_id = child["parent"]
        index = int(child["index"]) if index is None else index

    container = detail.sub("container")
    attempts = detail.array("attempts")
    last_attempt = attempts[-1] if attempts and isinstance(attempts[-1], dict) else {}
    attempt_container = Reader(last_attempt, detail, f"attempts[{len(attempts) - 1}]").sub("container")
    exit_code = container.integer("exitCode")
    if exit_code is None:
        exit_code = attempt_container.integer("exitCode")
    cpu, memory_gib = _resources(container)
    account = r.text("account")
    log = _log_stream(container, region, account) or _log_stream(attempt_container, region, account)

    draft = Draft(
        provider=PROVIDER,
        kind="task_instance" if index is not None else "job",
        state=state,
        transition=transition,
        native_event=detail_type,
        native_state=status,
        raw=obj,
        where=where,
        region=region,
        time=r.time("time"),
        job_id=parent_id,
        job_name=detail.text("jobName"),
        instance_index=index,
        exit_code=exit_code,
        retry_count=max(len(attempts) - 1, 0) if "attempts" in detail.obj else None,
        created=detail.millis("createdAt"),
        started=detail.millis("startedAt"),
        ended=detail.millis("stoppedAt"),
        stdout=log,
        stderr=log,
        cpu=cpu,
        memory_gib=memory_gib,
    )
    if state == "failed" or transition == "blocked":
        attempt = Reader(last_attempt, "")
        draft.error_message = (
            detail.text("statusReason")
            or container.text("reason")
            or attempt.text("statusReason")
            or attempt_container.text("reason")
        )
    return [build_event(draft)]


def event_names() -> dict[str, set[str]]:
    """The state-change detail-type covers every status of jobs and of array and multi-node children;
    a blocked queue is one type."""
    states = set(STATUSES.values())
    return {DETAIL_TYPE: {f"batch.{kind}.{s}" for kind in ("job", "task_instance") for s in states},
            QUEUE_BLOCKED: {"batch.job.blocked"}}


VENDOR = vendor(PROVIDER, MATCH_KEYS, matches, normalize, event_names)
