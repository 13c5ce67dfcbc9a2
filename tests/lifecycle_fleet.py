"""A fleet of jobs across the five vendors, as the vendors would deliver their lifecycle events:
tasks, instances, environments and nodes, each resource with its true final state.

``fleet(jobs)`` returns the HTTP bodies to post (a vendor's own multi-event container where it has one:
Tencent's ``Events[]``, Azure's ``records``; one event per body otherwise) and the truth: subject ->
the canonical state of the resource's last transition. Times increase along each resource's life; an
AWS job's RUNNING and SUCCEEDED share one second (then the state's rank orders them).
"""

from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from vendor_payloads import alibaba_job, aws_event, compact, gcp_message, sample_json, tencent_element

_BASE = datetime(2026, 3, 1, tzinfo=timezone.utc)
VENDORS = ("tencent", "alibaba", "aws", "gcp", "azure")


def _t(job: int, step: int, micros: bool = False) -> str:
    moment = _BASE + timedelta(minutes=job, seconds=step, microseconds=137 * step if micros else 0)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micros else "%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Fleet:
    #: (vendor, body): one delivery each; a container body holds several events
    bodies: list[tuple[str, bytes]] = field(default_factory=list)
    #: subject -> true final state
    truth: dict[str, str] = field(default_factory=dict)
    #: events in all the bodies
    events: int = 0


@dataclass
class _Items:
    """Native events of one vendor: (native event, subject, state) with its life order."""

    items: list[tuple[Any, str, str]] = field(default_factory=list)

    def add(self, native: Any, subject: str, state: str) -> None:
        self.items.append((native, subject, state))


def _tencent(j: int, out: _Items) -> None:
    job = f"job-t{j:04d}"
    ids = {"JobId": job, "JobName": "render", "TaskName": "frames", "EnvId": f"env-t{j // 20:03d}"}
    out.add(tencent_element("JOB_RUNNING", time=_t(j, 1), **ids), f"jobs/{job}", "running")
    out.add(tencent_element("TASK_RUNNING", time=_t(j, 2), **ids), f"jobs/{job}/tasks/frames", "running")
    for i in range(2):
        sub = f"jobs/{job}/tasks/frames/instances/{i}"
        out.add(tencent_element("TASK_INSTANCE_RUNNING", time=_t(j, 3 + i), TaskInstanceIndex=i, **ids), sub, "running")
        last = "TASK_INSTANCE_FAILED" if j % 7 == 0 and i == 1 else "TASK_INSTANCE_SUCCEED"
        out.add(tencent_element(last, time=_t(j, 10 + i), TaskInstanceIndex=i, **ids), sub,
                "failed" if last.endswith("FAILED") else "succeeded")
    out.add(tencent_element("TASK_SUCCEED", time=_t(j, 20), **ids), f"jobs/{job}/tasks/frames", "succeeded")
    out.add(tencent_element("JOB_SUCCEED", time=_t(j, 21), **ids), f"jobs/{job}", "succeeded")
    if j % 20 == 0:  # an environment per 20 jobs, with one node
        env = ids["EnvId"]
        out.add(tencent_element("COMPUTE_ENV_CREATED", time=_t(j, 0), **ids), f"environments/{env}", "created")
        node = {**ids, "ComputeNodeId": f"node-{env}", "ComputeNodeInstanceId": f"ins-{env}"}
        nsub = f"environments/{env}/nodes/node-{env}"
        for step, (name, state) in enumerate((("COMPUTE_NODE_CREATED", "created"), ("COMPUTE_NODE_RUNNING", "running"),
                                              ("COMPUTE_NODE_DELETING", "deleting"))):
            out.add(tencent_element(name, time=_t(j, 30 + step), **node), nsub, state)


def _alibaba(j: int, out: _Items) -> None:
    job = f"job-a{j:04d}"
    times = {"CreationTime": _t(j, 0, True), "StartTime": _t(j, 5, True), "EndTime": _t(j, 30, True)}
    for event, state in (("OnJobWaiting", "pending"), ("OnJobRunning", "running"), ("OnJobFinished", "succeeded")):
        out.add(alibaba_job(event, JobId=job, **times), f"jobs/{job}", state)
    task_times = {"StartTime": _t(j, 6, True), "EndTime": _t(j, 25, True)}
    for event, state in (("OnTaskRunning", "running"), ("OnTaskFinished", "succeeded")):
        out.add(alibaba_job(event, JobId=job, Task="echo", **task_times), f"jobs/{job}/tasks/echo", state)
    for i in range(2):
        inst = {"StartTime": _t(j, 7 + i, True), "EndTime": _t(j, 20 + i, True)}
        for event, state in (("OnInstanceRunning", "running"), ("OnInstanceFinished", "succeeded")):
            out.add(alibaba_job(event, JobId=job, Task="echo", InstanceId=str(i), **inst),
                    f"jobs/{job}/tasks/echo/instances/{i}", state)


def _aws(j: int, out: _Items) -> None:
    job = f"4c7599ae-0a82-49aa-ba5a-{j:012d}"
    for step, status, state in ((0, "RUNNABLE", "pending"), (2, "STARTING", "starting"), (9, "RUNNING", "running"),
                                (9, "SUCCEEDED", "succeeded")):
        e = aws_event(status, jobId=job)
        e["time"] = _t(j, step)
        out.add(e, f"jobs/{job}", state)
    child = f"{job}:0"
    failed = j % 5 == 0
    for step, status, state in ((3, "RUNNING", "running"), (8, "FAILED" if failed else "SUCCEEDED",
                                                            "failed" if failed else "succeeded")):
        e = aws_event(status, jobId=child)
        e["time"] = _t(j, step)
        out.add(e, f"jobs/{job}/tasks/-/instances/0", state)


def _gcp(j: int, out: _Items) -> None:
    uid = f"nightly-{j:04d}-3c8e0f5a"
    name = f"projects/p/locations/europe-west4/jobs/nightly-{j:04d}"
    for step, state_name, state in ((0, "QUEUED", "pending"), (4, "RUNNING", "running"),
                                    (30, "SUCCEEDED", "succeeded")):
        m = gcp_message("job", state_name, JobUID=uid, JobName=name)
        m["publishTime"] = _t(j, step, True)
        out.add({"message": m, "subscription": "projects/p/subscriptions/batch"}, f"jobs/{uid}", state)
    for step, state_name, state in ((1, "PENDING", "pending"), (2, "ASSIGNED", "starting"), (5, "RUNNING", "running"),
                                    (20, "SUCCEEDED", "succeeded")):
        m = gcp_message("task", state_name, JobUID=uid, JobName=name, TaskUID=f"{uid}-group0-0")
        m["publishTime"] = _t(j, step, True)
        out.add({"message": m, "subscription": "projects/p/subscriptions/batch"},
                f"jobs/{uid}/tasks/group0/instances/0", state)


_AZURE = sample_json("azure-records-task-failed-pair.json")["records"][0]
_AZURE_POOL = sample_json("azure-records-pool-events.json")["records"][0]


def _azure(j: int, out: _Items) -> None:
    job = f"render-{j:04d}"
    for t in range(2):
        task = f"frame-{t}"
        start, end = _t(j, 2 + t, True), _t(j, 40 + t, True)
        for op, state in (("TaskStartEvent", "running"), ("TaskCompleteEvent", "succeeded")):
            r = copy.deepcopy(_AZURE)
            r["operationName"] = op
            props = json.loads(r["properties"])
            props.update({"jobId": job, "id": task})
            info: dict[str, Any] = {"startTime": start, "retryCount": 0, "requeueCount": 0}
            if op == "TaskCompleteEvent":
                info.update({"endTime": end, "exitCode": 0, "result": "Success"})
            props["executionInfo"] = info
            r["properties"] = json.dumps(props)
            r["time"] = end if op == "TaskCompleteEvent" else start
            out.add(r, f"jobs/{job}/tasks/{task}", state)
    if j % 25 == 0:
        pool = f"pool-{j:04d}"
        for step, (op, state) in enumerate((("PoolCreateEvent", "created"), ("PoolDeleteStartEvent", "deleting"),
                                            ("PoolDeleteCompleteEvent", "deleted"))):
            r = copy.deepcopy(_AZURE_POOL)
            r["operationName"] = op
            r["properties"] = {**r["properties"], "id": pool}
            r["time"] = _t(j, 50 + step, True)
            out.add(r, f"environments/{pool}", state)


_MAKERS = {"tencent": _tencent, "alibaba": _alibaba, "aws": _aws, "gcp": _gcp, "azure": _azure}
#: natives per container body for the vendors that have one
CONTAINER = 100


def fleet(jobs: int = 1000, *, duplicate: bool = True, seed: int = 17) -> Fleet:
    """``jobs`` jobs spread over the five vendors; every native event delivered twice (``duplicate``);
    the whole stream shuffled, then cut into bodies."""
    rng = random.Random(seed)
    out = Fleet()
    per_vendor: dict[str, _Items] = {v: _Items() for v in VENDORS}
    for j in range(jobs):
        vendor = VENDORS[j % len(VENDORS)]
        _MAKERS[vendor](j // len(VENDORS), per_vendor[vendor])
    for vendor, items in per_vendor.items():
        for _native, subject, state in items.items:
            out.truth[subject] = state  # each resource's life is added in order: the last one is final
        deliveries = [n for n, _, _ in items.items] * (2 if duplicate else 1)
        rng.shuffle(deliveries)
        out.events += len(deliveries)
        if vendor == "tencent":
            out.bodies += [(vendor, compact({"Events": deliveries[i:i + CONTAINER]}))
                           for i in range(0, len(deliveries), CONTAINER)]
        elif vendor == "azure":
            out.bodies += [(vendor, compact({"records": deliveries[i:i + CONTAINER]}))
                           for i in range(0, len(deliveries), CONTAINER)]
        else:
            out.bodies += [(vendor, compact(n)) for n in deliveries]
    rng.shuffle(out.bodies)
    return out


def superseding_app(tmp_path: Path, token: str, other: dict[str, Any], **outbox: Any) -> Any:
    """A ``serve`` app whose route ``current`` (to ``fresh.jsonl``) supersedes, beside ``other``."""
    from batchbridge.core.config import config_from_dict
    from batchbridge.core.serve import create_app

    return create_app(config_from_dict({
        "outbox": {"path": str(tmp_path / "outbox.db"), **outbox},
        "serve": {"token": token},
        "routes": [{"name": "current", "to": f"file://{tmp_path}/fresh.jsonl", "supersede": True}, other],
    }))
