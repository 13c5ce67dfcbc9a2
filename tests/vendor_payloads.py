"""Shared test data: builders for native vendor events and envelopes, and the schema check.

Everything here is built from the samples bundled in ``core/samples`` (the project never reads the
shared seed documents at test time).
"""

from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "core" / "samples"
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "core" / "schema"

SAMPLE_FILES = sorted(p.name for p in SAMPLES_DIR.iterdir() if p.is_file())


def sample_bytes(name: str) -> bytes:
    return (SAMPLES_DIR / name).read_bytes()


def sample_json(name: str) -> Any:
    return json.loads(sample_bytes(name))


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


# --- Tencent ------------------------------------------------------------------------------------------

TENCENT_NAMES: dict[str, tuple[str, str]] = {
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

TENCENT_SUBJECTS = {
    "job": "jobs/job-4cbvwgg5",
    "task": "jobs/job-4cbvwgg5/tasks/render",
    "task_instance": "jobs/job-4cbvwgg5/tasks/render/instances/3",
    "environment": "environments/env-ptoxdb1t",
    "node": "environments/env-ptoxdb1t/nodes/node-0iy7wxyo",
}


def camel(name: str) -> str:
    """``JOB_FAILED`` -> ``JobFailed`` (Tencent's CLI/config spelling)."""
    return "".join(part.capitalize() for part in name.split("_"))


def tencent_element(name: str, *, time: str | None = "2018-06-15T15:02:41Z", **batch: Any) -> dict[str, Any]:
    """One element of ``Events[]`` whose ``Batch`` carries every id any kind needs."""
    fields: dict[str, Any] = {
        "JobId": "job-4cbvwgg5",
        "JobName": "render-frames",
        "TaskName": "render",
        "TaskInstanceIndex": 3,
        "EnvId": "env-ptoxdb1t",
        "EnvName": "batch-env",
        "ComputeNodeId": "node-0iy7wxyo",
        "ComputeNodeInstanceId": "ins-9rikj9kw",
    }
    fields.update(batch)
    element: dict[str, Any] = {
        "EventVersion": "1.0",
        "Region": "ap-guangzhou",
        "Batch": fields,
        "EventName": name,
        "EventVars": [],
    }
    if time is not None:
        element["EventTime"] = time
    return element


def tencent_message(*elements: dict[str, Any]) -> dict[str, Any]:
    return {"Events": list(elements)}


# --- Alibaba ------------------------------------------------------------------------------------------

ALIBABA_SUFFIXES = {
    "Waiting": "pending",
    "Running": "running",
    "Stopped": "stopped",
    "Finished": "succeeded",
    "Failed": "failed",
}


def alibaba_job(event: str, **fields: Any) -> dict[str, Any]:
    """A ``Category: Job`` message shaped like the seed's samples, for any OnJob/OnTask/OnInstance event."""
    if event.startswith("OnJob") or event == "OnPriorityChange":
        msg = copy.deepcopy(sample_json("alibaba-mns-job-waiting.json"))
        if event == "OnPriorityChange":
            msg = copy.deepcopy(sample_json("alibaba-mns-job-priority-change.json"))
    elif event.startswith("OnTask"):
        msg = copy.deepcopy(sample_json("alibaba-mns-task-waiting.json"))
    else:
        msg = copy.deepcopy(sample_json("alibaba-mns-instance-waiting.json"))
    msg["Event"] = event
    for suffix in ALIBABA_SUFFIXES:
        if event.endswith(suffix):
            msg["State"] = suffix
    msg.update(fields)
    return msg


def alibaba_cluster(event: str, **fields: Any) -> dict[str, Any]:
    name = (
        "alibaba-mns-cluster-deleted.json"
        if event == "OnClusterDeleted"
        else "alibaba-mns-cluster-instance-created.json"
    )
    msg = copy.deepcopy(sample_json(name))
    msg["Event"] = event
    msg.update(fields)
    return msg


def mns_xml(message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<Notification xmlns="http://mns.aliyuncs.com/doc/v1/">\n'
        "  <TopicOwner>1692545896541241</TopicOwner>\n"
        "  <TopicName>test-topic</TopicName>\n"
        "  <Subscriber>1692545896541241</Subscriber>\n"
        "  <SubscriptionName>batchbridge</SubscriptionName>\n"
        "  <MessageId>C39FB8C345BBFBA8-1-1687F6FAADD-200000015</MessageId>\n"
        "  <MessageMD5>CAA1E9F5E9F854ACD8297B100BF8CCF9</MessageMD5>\n"
        f"  <Message>{escape(message)}</Message>\n"
        "  <PublishTime>1550216302888</PublishTime>\n"
        "</Notification>\n"
    ).encode()


def mns_json(message: str) -> dict[str, Any]:
    return {
        "TopicOwner": "1692545896541241",
        "TopicName": "test-topic",
        "Subscriber": "1692545896541241",
        "SubscriptionName": "batchbridge",
        "MessageId": "C39FB8C345BBFBA8-1-1687F6FAADD-200000015",
        "MessageMD5": "CAA1E9F5E9F854ACD8297B100BF8CCF9",
        "Message": message,
        "PublishTime": 1550216302888,
    }


def cmq_push(body: str, *, camel_case: bool = False) -> dict[str, Any]:
    if camel_case:
        return {
            "TopicOwner": 100015036,
            "TopicName": "job-message",
            "SubscriptionName": "bb",
            "MsgId": "6942316962",
            "MsgBody": body,
            "PublishTime": 11203432,
        }
    return {
        "TopicOwner": 100015036,
        "topicName": "job-message",
        "subscriptionName": "bb",
        "msgId": "6942316962",
        "msgBody": body,
        "publishTime": 11203432,
    }


# --- AWS ----------------------------------------------------------------------------------------------

AWS_STATUSES = {
    "PENDING": "pending",
    "RUNNABLE": "pending",
    "STARTING": "starting",
    "RUNNING": "running",
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
}


def aws_event(status: str = "SUCCEEDED", **detail: Any) -> dict[str, Any]:
    event = copy.deepcopy(sample_json("aws-eventbridge-job-succeeded.json"))
    event["detail"]["status"] = status
    event["detail"].update(detail)
    return event


def aws_array_child() -> dict[str, Any]:
    return copy.deepcopy(sample_json("aws-eventbridge-array-child-failed.json"))


# --- GCP ----------------------------------------------------------------------------------------------

GCP_JOB_STATES = {
    "QUEUED": "pending",
    "SCHEDULED": "pending",
    "RUNNING": "running",
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
    "DELETION_IN_PROGRESS": "deleting",
}
GCP_TASK_STATES = {
    "PENDING": "pending",
    "ASSIGNED": "starting",
    "RUNNING": "running",
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
    "UNEXECUTED": "stopped",
}


def gcp_message(kind: str = "job", state: str = "SUCCEEDED", **attributes: str) -> dict[str, Any]:
    """A Pub/Sub *message* (not the push wrapper) as Batch publishes it."""
    if kind == "job":
        msg = copy.deepcopy(sample_json("gcp-pubsub-push-job-succeeded.json")["message"])
        msg["attributes"]["NewJobState"] = state
    else:
        msg = copy.deepcopy(sample_json("gcp-pubsub-push-task-failed.json")["message"])
        msg["attributes"]["NewTaskState"] = state
    msg["attributes"].update(attributes)
    return msg


def pubsub_push(message: dict[str, Any]) -> dict[str, Any]:
    return {"message": message, "subscription": "projects/example-project/subscriptions/push"}


def pubsub_data(payload: bytes, **attributes: str) -> dict[str, Any]:
    msg: dict[str, Any] = {"data": b64(payload), "messageId": "42", "publishTime": "2024-01-01T00:00:00Z"}
    if attributes:
        msg["attributes"] = attributes
    return msg


# --- Azure --------------------------------------------------------------------------------------------


def azure_records(name: str = "azure-records-task-failed-pair.json") -> dict[str, Any]:
    return copy.deepcopy(sample_json(name))


def azure_task_record(operation: str, **execution: Any) -> dict[str, Any]:
    record = copy.deepcopy(azure_records()["records"][1])
    record["operationName"] = operation
    props = record["properties"]
    props["executionInfo"] = {"retryCount": 0, **execution}
    return record


def azure_pool_record(operation: str, **properties: Any) -> dict[str, Any]:
    record = copy.deepcopy(azure_records("azure-records-pool-events.json")["records"][0])
    record["operationName"] = operation
    record["properties"] = {"id": "render-pool", **properties}
    return record


# --- a corpus of valid payloads (for schema and determinism checks) -----------------------------------


def corpus() -> list[tuple[str, bytes]]:
    """Every sample plus one payload per vendor mapping row and per envelope, as bytes."""
    items = [(f"sample {name}", sample_bytes(name)) for name in SAMPLE_FILES]
    for name in TENCENT_NAMES:
        items.append((f"tencent {name}", compact(tencent_message(tencent_element(name)))))
        items.append((f"tencent {camel(name)}", compact(tencent_message(tencent_element(camel(name))))))
    for prefix in ("OnJob", "OnTask", "OnInstance"):
        for suffix in ALIBABA_SUFFIXES:
            items.append((f"alibaba {prefix}{suffix}", compact(alibaba_job(prefix + suffix))))
    items.append(("alibaba OnPriorityChange", compact(alibaba_job("OnPriorityChange"))))
    for event in ("OnClusterDeleted", "OnInstanceCreated", "OnInstanceActive"):
        items.append((f"alibaba {event}", compact(alibaba_cluster(event))))
    for status in AWS_STATUSES:
        items.append((f"aws {status}", compact(aws_event(status))))
    for state in GCP_JOB_STATES:
        items.append((f"gcp job {state}", compact(pubsub_push(gcp_message("job", state)))))
    for state in GCP_TASK_STATES:
        items.append((f"gcp task {state}", compact(gcp_message("task", state))))
    items.append(("azure start", compact(azure_task_record("TaskStartEvent", startTime="2024-03-05T10:16:02Z"))))
    for op in ("PoolCreateEvent", "PoolDeleteStartEvent", "PoolDeleteCompleteEvent", "PoolResizeCompleteEvent"):
        items.append((f"azure {op}", compact(azure_pool_record(op))))
    node = sample_bytes("tencent-cmq-node-created.json")
    items.append(("base64 tencent", b64(node).encode()))
    items.append(("cmq push tencent", compact(cmq_push(node.decode()))))
    items.append(("mns xml alibaba", mns_xml(sample_bytes("alibaba-mns-job-waiting.json").decode())))
    items.append(("mns json alibaba", compact(mns_json(sample_bytes("alibaba-mns-job-waiting.json").decode()))))
    return items


# --- schema validation ------------------------------------------------------------------------------


def _load_schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / name).read_text())
    return schema


BATCH_EVENT_SCHEMA = _load_schema("batch-event-v1.json")
CLOUDEVENT_SCHEMA = _load_schema("cloudevent-v1.json")
_REGISTRY = Registry().with_resource(BATCH_EVENT_SCHEMA["$id"], Resource.from_contents(BATCH_EVENT_SCHEMA))
CLOUDEVENT_VALIDATOR = Draft202012Validator(CLOUDEVENT_SCHEMA, registry=_REGISTRY, format_checker=FormatChecker())

_SOURCE = re.compile(r"batch://([^/]+)/(.+)")


def validate_event(event: dict[str, Any]) -> None:
    """Schema-valid, and consistent where a schema cannot say so (type, source vs data)."""
    errors = sorted(CLOUDEVENT_VALIDATOR.iter_errors(event), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
    data = event["data"]
    assert event["type"] == f"batch.{data['kind']}.{data['transition']}"
    match = _SOURCE.fullmatch(event["source"])
    assert match is not None
    assert match.group(1) == data["provider"]
    assert match.group(2) == (data["region"] or "-")
