"""What the benchmarks share: the result line ``run.py`` collects, the machine description, and a
streaming generator of realistic, varied vendor payloads.

The result contract
-------------------
A benchmark prints, for each figure it measures, one line::

    RESULT {"name": ..., "figure": ..., "unit": ..., "baseline": ..., "ratio": ..., "target": ..., "pass": ...}

``name`` (str) names the figure; ``figure`` (number) is the measured value in ``unit`` (str);
``baseline`` (number or null) is what it is compared against, *measured in the same run*;
``ratio`` (number or null) is the compared quantity and ``target`` (str, e.g. ``"<= 2.0"``) what it
should be; ``pass`` (bool or null: no target) says whether it is. Optional keys: ``verdict``
(``"PASS"``/``"WARN"``/``"FAIL"`` when there is a band between target and failure), ``note`` (str).
Any other output is free-form. The exit status is 0 whenever the measurement completed, whatever
the figures: a missed target is reported in the RESULT line, not by the exit status.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import platform
import random
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "core" / "samples"

RESULT_PREFIX = "RESULT "


def emit_result(
    name: str,
    figure: float,
    unit: str,
    *,
    baseline: float | None = None,
    ratio: float | None = None,
    target: str | None = None,
    passed: bool | None = None,
    **extra: Any,
) -> None:
    record: dict[str, Any] = {
        "name": name,
        "figure": figure,
        "unit": unit,
        "baseline": baseline,
        "ratio": ratio,
        "target": target,
        "pass": passed,
    }
    record.update(extra)
    print(RESULT_PREFIX + json.dumps(record), flush=True)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()} on {sys.platform}"


def peak_rss_mib() -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the payload generator -----------------------------------------------------------------------------
#
# Shapes come from the bundled samples; what varies per payload is what varies in real traffic: ids,
# names, times (several RFC 3339 spellings and epoch millis), states, exit codes, envelopes. Each
# payload is built fresh and serialised at once, so a stream of any length holds one payload at a time.


def _sample(name: str) -> Any:
    return orjson.loads((SAMPLES / name).read_bytes())


_EPOCH0 = datetime(2024, 1, 1, tzinfo=timezone.utc)

_TENCENT_EVENTS = {
    "job": ["JOB_RUNNING", "JOB_SUCCEED", "JOB_FAILED", "JOB_FAILED_INTERRUPTED"],
    "task": ["TASK_RUNNING", "TASK_SUCCEED", "TASK_FAILED", "TASK_FAILED_INTERRUPTED"],
    "task_instance": ["TASK_INSTANCE_RUNNING", "TASK_INSTANCE_SUCCEED", "TASK_INSTANCE_FAILED"],
    "environment": ["COMPUTE_ENV_CREATED", "COMPUTE_ENV_DELETED"],
    "node": ["COMPUTE_NODE_CREATED", "COMPUTE_NODE_RUNNING", "COMPUTE_NODE_ABNORMAL", "COMPUTE_NODE_DELETING"],
}
_TENCENT_KINDS = ["job", "task", "task_instance", "task_instance", "task_instance", "environment", "node", "node"]
_TENCENT_REGIONS = ["ap-guangzhou", "ap-shanghai", "ap-beijing", "ap-singapore"]

_ALIBABA_SUFFIXES = ["Waiting", "Running", "Stopped", "Finished", "Failed"]
_AWS_STATUSES = ["SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED"]
_AWS_REGIONS = ["us-east-1", "us-west-2", "eu-west-1", "ap-northeast-1"]
_GCP_JOB_STATES = ["QUEUED", "SCHEDULED", "RUNNING", "SUCCEEDED", "FAILED", "DELETION_IN_PROGRESS"]
_GCP_TASK_STATES = ["PENDING", "ASSIGNED", "RUNNING", "SUCCEEDED", "FAILED"]
_GCP_LOCATIONS = ["us-central1", "europe-west4", "asia-east1"]
_AZURE_LOCATIONS = ["westeurope", "eastus", "West Europe", "southeastasia"]
_POOL_OPS = ["PoolCreateEvent", "PoolDeleteStartEvent", "PoolDeleteCompleteEvent", "PoolResizeCompleteEvent"]


class PayloadGenerator:
    """Deterministic (seeded) mixed payloads from all five vendors, as compact JSON Lines bodies."""

    #: vendor/envelope -> weight; roughly what a bridge fed by every vendor sees
    MIX = (
        ("tencent", 17),
        ("tencent_push", 4),
        ("tencent_base64", 1),
        ("alibaba", 15),
        ("alibaba_mns_json", 5),
        ("aws", 20),
        ("gcp", 18),
        ("azure", 20),
    )

    def __init__(self, seed: int = 8) -> None:
        self.rng = random.Random(seed)
        self.aws_job = _sample("aws-eventbridge-job-succeeded.json")
        self.aws_child = _sample("aws-eventbridge-array-child-failed.json")
        self.gcp_job = _sample("gcp-pubsub-push-job-succeeded.json")
        self.gcp_task = _sample("gcp-pubsub-push-task-failed.json")
        self.azure_task = _sample("azure-records-task-failed-pair.json")["records"][1]
        self.azure_pool = _sample("azure-records-pool-events.json")["records"]
        self.alibaba_instance = _sample("alibaba-mns-instance-waiting.json")
        self.mns_envelope = {
            "TopicOwner": "1692545896541241",
            "TopicName": "batch-events",
            "Subscriber": "1692545896541241",
            "SubscriptionName": "batchbridge",
            "MessageId": "",
            "MessageMD5": "CAA1E9F5E9F854ACD8297B100BF8CCF9",
            "Message": "",
            "PublishTime": 0,
        }
        names = [name for name, weight in self.MIX for _ in range(weight)]
        self._choices = names
        self._n = 0

    # -- small pieces

    def _moment(self) -> datetime:
        self._n += 1
        return _EPOCH0 + timedelta(seconds=self._n * 3 + self.rng.randrange(3), microseconds=self.rng.randrange(10**6))

    def _rfc3339(self, moment: datetime, style: int) -> str:
        if style == 0:
            return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        if style == 1:
            return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
        if style == 2:
            return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if style == 3:  # Azure's 7-digit fractions
            return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"
        return (moment + timedelta(hours=8)).strftime("%Y-%m-%dT%H:%M:%S+08:00")

    def _hex(self, n: int) -> str:
        return f"{self.rng.getrandbits(n * 4):0{n}x}"

    # -- vendors

    def _tencent_element(self) -> dict[str, Any]:
        rng = self.rng
        kind = rng.choice(_TENCENT_KINDS)
        name = rng.choice(_TENCENT_EVENTS[kind])
        moment = self._moment()
        job = f"job-{self._hex(8)}"
        batch: dict[str, Any]
        if kind in ("job", "task", "task_instance"):
            batch = {"JobId": job, "JobName": rng.choice(["render-frames", "nightly-etl", "train"])}
            if kind != "job":
                batch["TaskName"] = rng.choice(["render", "extract", "load"])
            if kind == "task_instance":
                batch["TaskInstanceIndex"] = rng.randrange(64)
                batch["ComputeNodeInstanceId"] = f"ins-{self._hex(8)}"
            if "FAILED" in name:
                batch["ExitCode"] = rng.choice([1, 2, 137])
                batch["StateReason"] = "task exited with a non-zero code"
            batch[{"job": "JobState", "task": "TaskState", "task_instance": "TaskInstanceState"}[kind]] = (
                name.rsplit("_", 1)[-1]
            )
            if kind == "task_instance":
                batch["StdoutRedirectPath"] = f"cos://bucket-1250000000/logs/stdout.{job}.render"
                batch["StderrRedirectPath"] = f"cos://bucket-1250000000/logs/stderr.{job}.render"
        else:
            batch = {"EnvId": f"env-{self._hex(8)}", "EnvName": "batch-env"}
            if kind == "node":
                batch.update({
                    "ComputeNodeId": f"node-{self._hex(8)}",
                    "ComputeNodeInstanceId": f"ins-{self._hex(8)}",
                    "ComputeNodeState": name.rsplit("_", 1)[-1],
                    "Cpu": rng.choice([2, 4, 8]),
                    "Mem": rng.choice([4, 8, 16]),
                    "ResourceCreatedTime": self._rfc3339(moment, 0),
                })
        element: dict[str, Any] = {
            "EventVersion": "1.0",
            "Region": rng.choice(_TENCENT_REGIONS),
            "Batch": batch,
            "EventName": name,
            "EventVars": [{"name": "team", "value": "render"}] if rng.random() < 0.3 else [],
        }
        # a few relays drop the time: then the raw event decides the id (the slow, hashed path)
        if rng.random() >= 0.03:
            element["EventTime"] = self._rfc3339(moment, rng.choice((0, 0, 0, 4)))
        return element

    def tencent(self) -> bytes:
        return orjson.dumps({"Events": [self._tencent_element()]})

    def tencent_push(self) -> bytes:
        elements = [self._tencent_element() for _ in range(self.rng.choice((1, 1, 2)))]
        return orjson.dumps({
            "TopicOwner": 1250000000,
            "topicName": "job-message",
            "subscriptionName": "batchbridge",
            "msgId": str(self.rng.randrange(10**10)),
            "msgBody": orjson.dumps({"Events": elements}).decode(),
            "publishTime": 1529074961 + self._n,
        })

    def tencent_base64(self) -> bytes:
        return base64.b64encode(self.tencent())

    def _alibaba_message(self) -> dict[str, Any]:
        rng = self.rng
        moment = self._moment()
        job = f"job-{self._hex(32).upper()}"
        pick = rng.randrange(20)
        created = self._rfc3339(moment - timedelta(minutes=10), 2)
        started = self._rfc3339(moment - timedelta(minutes=5), 2)
        ended = self._rfc3339(moment, 2)
        if pick < 2:
            cluster = f"cls-{self._hex(22)}"
            event = rng.choice(["OnClusterDeleted", "OnInstanceCreated", "OnInstanceActive"])
            msg: dict[str, Any] = {"Category": "Cluster", "ClusterId": cluster, "ClusterName": "test-cluster"}
            if event != "OnClusterDeleted":
                msg.update({"Group": "group1", "InstanceId": f"i-{self._hex(20)}", "InnerIpAddress": "10.45.168.26",
                            "Hints": ""})
            msg.update({"State": "Deleted" if event == "OnClusterDeleted" else "Starting", "CreationTime": created,
                        "Event": event})
            return msg
        if pick == 2:
            return {"Category": "Job", "JobId": job, "JobName": "test-job", "Event": "OnPriorityChange",
                    "State": "Waiting", "CreationTime": created, "StartTime": started, "EndTime": ended,
                    "Message": "", "From": str(rng.randrange(10)), "To": str(10 + rng.randrange(10))}
        suffix = rng.choice(_ALIBABA_SUFFIXES)
        level = rng.choice(["Job", "Task", "Instance", "Instance"])
        if level == "Instance":
            msg = dict(self.alibaba_instance)
            msg.update({"JobId": job, "InstanceId": str(rng.randrange(100)), "Event": f"OnInstance{suffix}",
                        "State": suffix, "StartTime": started, "EndTime": ended,
                        "ExitCode": "1" if suffix == "Failed" else "0",
                        "Progress": str(rng.randrange(101))})
            return msg
        msg = {"Category": "Job", "JobId": job}
        if level == "Job":
            msg["JobName"] = "test-job"
        else:
            msg["Task"] = rng.choice(["Echo", "Map", "Reduce"])
        msg.update({"Event": f"On{level}{suffix}", "State": suffix, "CreationTime": created, "StartTime": started,
                    "EndTime": ended, "Message": ""})
        return msg

    def alibaba(self) -> bytes:
        return orjson.dumps(self._alibaba_message())

    def alibaba_mns_json(self) -> bytes:
        envelope = dict(self.mns_envelope)
        envelope["MessageId"] = f"{self._hex(16).upper()}-1-{self._hex(11).upper()}-200000015"
        envelope["Message"] = orjson.dumps(self._alibaba_message()).decode()
        envelope["PublishTime"] = 1550216302888 + self._n
        return orjson.dumps(envelope)

    def aws(self) -> bytes:
        rng = self.rng
        moment = self._moment()
        child = rng.random() < 0.25
        template = self.aws_child if child else self.aws_job
        event = dict(template)
        detail = dict(template["detail"])
        event["detail"] = detail
        region = rng.choice(_AWS_REGIONS)
        job_id = f"{self._hex(8)}-{self._hex(4)}-{self._hex(4)}-{self._hex(4)}-{self._hex(12)}"
        if child:
            index = rng.randrange(1000)
            job_id = f"{job_id}:{index}"
            detail["arrayProperties"] = {"index": index}
        status = rng.choice(_AWS_STATUSES)
        millis = int(moment.timestamp() * 1000)
        event.update({"id": f"{self._hex(8)}-{self._hex(4)}-{self._hex(4)}-{self._hex(4)}-{self._hex(12)}",
                      "time": self._rfc3339(moment, 0), "region": region,
                      "resources": [f"arn:aws:batch:{region}:123456789012:job/{job_id}"]})
        detail.update({"jobArn": f"arn:aws:batch:{region}:123456789012:job/{job_id}", "jobId": job_id,
                       "status": status, "createdAt": millis - 300_000})
        if status in ("SUCCEEDED", "FAILED", "RUNNING"):
            detail["startedAt"] = millis - 200_000
        if status in ("SUCCEEDED", "FAILED"):
            detail["stoppedAt"] = millis
        return orjson.dumps(event)

    def gcp(self) -> bytes:
        rng = self.rng
        moment = self._moment()
        task = rng.random() < 0.6
        template = self.gcp_task if task else self.gcp_job
        message = dict(template["message"])
        attributes = dict(message["attributes"])
        message["attributes"] = attributes
        uid = f"job-{self._hex(8)}-{self._hex(4)}-{self._hex(4)}-{self._hex(4)}"
        attributes["JobName"] = f"projects/example-project/locations/{rng.choice(_GCP_LOCATIONS)}/jobs/{uid[:12]}"
        attributes["JobUID"] = uid
        if task:
            state = rng.choice(_GCP_TASK_STATES)
            attributes["NewTaskState"] = state
            attributes["TaskUID"] = f"{uid}-group0-{rng.randrange(500)}"
        else:
            state = rng.choice(_GCP_JOB_STATES)
            attributes["NewJobState"] = state
        text = f"Task state is updated from RUNNING to {state}"
        if state == "FAILED":
            text += f" with exit code {rng.choice((1, 2, 137))}."
        message["data"] = base64.b64encode(text.encode()).decode()
        message["messageId"] = str(10214960731234567 + self._n)
        message.pop("message_id", None)
        message.pop("publish_time", None)
        message["publishTime"] = self._rfc3339(moment, rng.choice((1, 2)))
        return orjson.dumps({"message": message, "subscription": template["subscription"]})

    def _azure_record(self, moment: datetime, location: str) -> dict[str, Any]:
        rng = self.rng
        if rng.random() < 0.8:
            record = dict(self.azure_task)
            props = dict(record["properties"])
            op = rng.choice(["TaskStartEvent", "TaskCompleteEvent", "TaskCompleteEvent", "TaskFailEvent"])
            start = moment - timedelta(seconds=rng.randrange(60, 600))
            execution: dict[str, Any] = {"startTime": self._rfc3339(start, 3), "retryCount": rng.randrange(3),
                                         "requeueCount": 0}
            if op != "TaskStartEvent":
                failed = op == "TaskFailEvent" or rng.random() < 0.2
                execution.update({"endTime": self._rfc3339(moment, 3), "exitCode": 1 if failed else 0,
                                  "result": "Failure" if failed else "Success"})
                if failed:
                    execution["failureInfo"] = {"category": "UserError", "code": "FailureExitCode",
                                                "message": "The task process exited with an unexpected exit code"}
            props.update({"jobId": f"job-{self._hex(6)}", "id": f"frame-{rng.randrange(10000):04d}",
                          "executionInfo": execution})
            record.update({"operationName": op, "properties": props})
            # Azure sometimes exports properties as a JSON string
            if rng.random() < 0.3:
                record["properties"] = orjson.dumps(props).decode()
        else:
            op = rng.choice(_POOL_OPS)
            record = dict(self.azure_pool[1] if op == "PoolResizeCompleteEvent" else self.azure_pool[0])
            props = dict(record["properties"])
            props["id"] = f"pool-{self._hex(6)}"
            if op == "PoolResizeCompleteEvent":
                props["startTime"] = self._rfc3339(moment - timedelta(seconds=300), 3)
                props["endTime"] = self._rfc3339(moment, 3)
            record.update({"operationName": op, "properties": props})
        record["time"] = self._rfc3339(moment + timedelta(milliseconds=300), 3)
        record["location"] = location
        return record

    def azure(self) -> bytes:
        moment = self._moment()
        location = self.rng.choice(_AZURE_LOCATIONS)
        count = self.rng.choice((1, 1, 1, 2, 3))
        return orjson.dumps({"records": [self._azure_record(moment, location) for _ in range(count)]})

    # -- the stream

    def lines(self, n: int) -> Iterator[bytes]:
        """``n`` payloads, one compact JSON (or Base64) line each, without the newline."""
        choose = self.rng.choice
        choices = self._choices
        for _ in range(n):
            yield getattr(self, choose(choices))()


def payload_lines(n: int, seed: int = 8) -> Iterator[bytes]:
    return PayloadGenerator(seed).lines(n)


def payload_chunks(n: int, chunk: int = 1000, seed: int = 8) -> Iterator[bytes]:
    """The same stream as newline-terminated JSON Lines text, ``chunk`` lines per bytes object."""
    lines = payload_lines(n, seed)
    while True:
        block = list(itertools.islice(lines, chunk))
        if not block:
            return
        yield b"\n".join(block) + b"\n"


def bench_events(n: int, jobs: int = 200) -> list[dict[str, Any]]:
    """``n`` canonical-shaped events over ``jobs`` ordering keys, each with its own id: what the
    publish benchmarks send through batchbridge and, pre-encoded, through the raw SDKs."""
    events = []
    for i in range(n):
        job = f"job-{i % jobs:04d}"
        events.append({
            "specversion": "1.0",
            "id": f"{i:08x}{random.getrandbits(96):024x}",
            "source": "batch://tencent/ap-guangzhou",
            "type": "batch.job.running",
            "subject": f"jobs/{job}",
            "time": "2024-01-01T00:00:00Z",
            "datacontenttype": "application/json",
            "dataschema": "urn:batchbridge:batch-event:1",
            "data": {
                "provider": "tencent", "region": "ap-guangzhou", "kind": "job", "transition": "running",
                "state": "running", "native": {"event": "JOB_RUNNING", "state": "RUNNING"},
                "job": {"id": job, "name": "nightly-etl"}, "task": None, "instance": None, "environment": None,
                "node": None, "exit_code": None, "retry_count": None, "progress": i % 100, "error": None,
                "times": {"created": "2024-01-01T00:00:00Z", "started": None, "ended": None}, "logs": None,
                "resources": None, "priority": None, "vars": {}, "raw": {"n": i},
            },
        })
    return events


def timed_publish(pub: Any, events: list[dict[str, Any]]) -> float:
    """Seconds ``pub.publish(events)`` took; exits if the backend did not confirm every event, since a
    throughput that counts failures would flatter batchbridge."""
    start = time.perf_counter()
    results = pub.publish(events)
    elapsed = time.perf_counter() - start
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise SystemExit(f"batchbridge: {len(failed)} events failed, first: {failed[0]}")
    return elapsed
