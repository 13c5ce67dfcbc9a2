from __future__ import annotations

from typing import Any

import pytest
from batchbridge.core.errors import MalformedPayloadError, UnsupportedEventError
from batchbridge.core.normalizing import normalize
from batchbridge.core.vendors.alibaba import CLUSTER_EVENTS, JOB_EVENTS
from vendor_payloads import (
    ALIBABA_SUFFIXES,
    alibaba_cluster,
    alibaba_job,
    compact,
    mns_xml,
    sample_bytes,
    sample_json,
    validate_event,
)

JOB_ID = "job-0000000058524720000077E900007257"
CLUSTER_ID = "cls-hr2rbl6qt5gki7392b8001"


def one(msg: dict[str, Any] | bytes) -> dict[str, Any]:
    events = normalize(msg if isinstance(msg, bytes) else compact(msg))
    assert len(events) == 1
    validate_event(events[0])
    return events[0]


def test_all_nineteen_seed_event_names_are_mapped() -> None:
    assert len(JOB_EVENTS) + len(CLUSTER_EVENTS) == 19
    assert set(CLUSTER_EVENTS) == {"OnClusterDeleted", "OnInstanceCreated", "OnInstanceActive"}


JOB_CASES = [
    (f"{prefix}{suffix}", kind, state, subject)
    for prefix, kind, subject in (
        ("OnJob", "job", f"jobs/{JOB_ID}"),
        ("OnTask", "task", f"jobs/{JOB_ID}/tasks/Echo"),
        ("OnInstance", "task_instance", f"jobs/{JOB_ID}/tasks/Echo/instances/0"),
    )
    for suffix, state in ALIBABA_SUFFIXES.items()
]


@pytest.mark.parametrize(("name", "kind", "state", "subject"), JOB_CASES)
def test_job_category_events(name: str, kind: str, state: str, subject: str) -> None:
    event = one(alibaba_job(name))
    data = event["data"]
    assert (data["kind"], data["state"], data["transition"]) == (kind, state, state)
    assert event["type"] == f"batch.{kind}.{state}"
    assert event["subject"] == subject
    assert event["source"] == "batch://alibaba/-"
    assert data["region"] is None
    assert data["native"]["event"] == name
    assert data["job"]["id"] == JOB_ID


@pytest.mark.parametrize(
    ("name", "kind", "state", "subject"),
    [
        ("OnClusterDeleted", "environment", "deleted", f"environments/{CLUSTER_ID}"),
        ("OnInstanceCreated", "node", "created", f"environments/{CLUSTER_ID}/nodes/i-wz9c51g2s6zsrtnqi4fa"),
        ("OnInstanceActive", "node", "running", f"environments/{CLUSTER_ID}/nodes/i-wz9c51g2s6zsrtnqi4fa"),
    ],
)
def test_cluster_category_events(name: str, kind: str, state: str, subject: str) -> None:
    event = one(alibaba_cluster(name))
    assert (event["type"], event["subject"]) == (f"batch.{kind}.{state}", subject)
    assert event["data"]["job"] is None


def test_seed_cluster_deleted_sample() -> None:
    event = one(sample_bytes("alibaba-mns-cluster-deleted.json"))
    data = event["data"]
    assert data["environment"] == {"id": CLUSTER_ID, "name": "test-cluster"}
    assert data["native"] == {"event": "OnClusterDeleted", "state": "Deleted"}
    assert data["times"]["created"] == "2016-11-01T15:25:02.837728Z"
    # the creation time does not date a deletion, so the event has no time
    assert "time" not in event


def test_seed_instance_created_sample_is_a_cluster_vm() -> None:
    event = one(sample_bytes("alibaba-mns-cluster-instance-created.json"))
    data = event["data"]
    assert data["kind"] == "node"
    assert data["node"] == {
        "id": "i-wz9c51g2s6zsrtnqi4fa",
        "instance_id": "i-wz9c51g2s6zsrtnqi4fa",
        "address": "10.45.168.26",
    }
    assert data["native"]["state"] == "Starting"
    assert data["instance"] is None
    assert event["time"] == "2016-11-01T15:25:02.837728Z"


def test_category_decides_what_on_instance_means() -> None:
    job = one(alibaba_job("OnInstanceRunning"))
    assert job["data"]["kind"] == "task_instance"
    assert job["data"]["instance"] == {"index": 0}
    assert job["data"]["node"] is None

    cluster = one(alibaba_cluster("OnInstanceActive"))
    assert cluster["data"]["kind"] == "node"
    assert cluster["data"]["instance"] is None


@pytest.mark.parametrize(
    "msg",
    [
        alibaba_cluster("OnInstanceRunning"),
        alibaba_job("OnInstanceCreated", Category="Job"),
        alibaba_job("OnJobRunning", Category="Queue"),
        alibaba_job("OnJobExploded"),
    ],
)
def test_events_outside_their_category_are_unsupported(msg: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedEventError):
        normalize(compact(msg))


def test_without_category_the_event_name_decides() -> None:
    msg = alibaba_cluster("OnInstanceActive")
    del msg["Category"]
    assert one(msg)["data"]["kind"] == "node"
    msg = alibaba_job("OnInstanceFailed")
    del msg["Category"]
    assert one(msg)["data"]["kind"] == "task_instance"


def test_seed_instance_sample_numbers_arrive_as_strings() -> None:
    data = one(sample_bytes("alibaba-mns-instance-waiting.json"))["data"]
    assert data["instance"] == {"index": 0}
    assert data["retry_count"] == 0
    assert data["progress"] == 0
    assert data["exit_code"] == 0
    assert data["error"] is None  # ErrorCode and ErrorMessage are both ""
    assert data["task"] == {"name": "Echo"}


def test_log_paths_are_mapped_by_field_name_even_when_crossed() -> None:
    sample = sample_json("alibaba-mns-instance-waiting.json")
    logs = one(sample_bytes("alibaba-mns-instance-waiting.json"))["data"]["logs"]
    assert logs == {"stdout": sample["StdoutRedirectPath"], "stderr": sample["StderrRedirectPath"]}
    # the seed's quirk, preserved: the stdout field really names a stderr file
    assert "/logs/stderr." in logs["stdout"]


def test_priority_change_carries_from_to_and_the_state_from_state() -> None:
    event = one(sample_bytes("alibaba-mns-job-priority-change.json"))
    data = event["data"]
    assert event["type"] == "batch.job.priority_changed"
    assert data["priority"] == {"from": 10, "to": 20}
    assert data["state"] == "pending"
    assert data["transition"] == "priority_changed"
    assert data["native"] == {"event": "OnPriorityChange", "state": "Waiting"}
    assert "time" not in event


def test_priority_change_in_a_running_job() -> None:
    event = one(alibaba_job("OnPriorityChange", State="Running", From="20", To="5"))
    assert event["data"]["state"] == "running"
    assert event["data"]["priority"] == {"from": 20, "to": 5}


@pytest.mark.parametrize("fields", [{"State": ""}, {"State": "Exploded"}, {"To": ""}, {"From": None}])
def test_priority_change_without_state_or_priorities_is_malformed(fields: dict[str, Any]) -> None:
    with pytest.raises(MalformedPayloadError):
        normalize(compact(alibaba_job("OnPriorityChange", **fields)))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("OnJobWaiting", "2016-11-01T15:25:02.837728Z"),  # pending: creation time
        ("OnJobRunning", "2016-11-01T15:35:02.837728Z"),  # running: start time
        ("OnJobFinished", "2016-11-01T15:45:02.837728Z"),  # succeeded: end time
        ("OnJobStopped", "2016-11-01T15:45:02.837728Z"),
        ("OnJobFailed", "2016-11-01T15:45:02.837728Z"),
    ],
)
def test_time_is_the_timestamp_matching_the_transition(name: str, expected: str) -> None:
    assert one(alibaba_job(name))["time"] == expected


def test_failed_instance_in_an_mns_xml_push() -> None:
    event = one(sample_bytes("alibaba-mns-xml-push-instance-failed.xml"))
    data = event["data"]
    assert event["type"] == "batch.task_instance.failed"
    assert data["exit_code"] == 137
    assert data["retry_count"] == 1
    assert data["progress"] == 100
    assert data["error"] == {"code": "InstanceKilled", "message": "the instance was killed by the OOM killer"}


def test_job_message_is_the_error_message() -> None:
    data = one(alibaba_job("OnJobFailed", Message="disk full"))["data"]
    assert data["error"] == {"code": None, "message": "disk full"}


@pytest.mark.parametrize(
    ("field", "value"), [("ExitCode", "zero"), ("RetryCount", "1.5"), ("InstanceId", "i-abc"), ("Progress", [])]
)
def test_non_numeric_strings_are_malformed_and_located(field: str, value: Any) -> None:
    with pytest.raises(MalformedPayloadError) as info:
        normalize(compact(alibaba_job("OnInstanceRunning", **{field: value})))
    assert info.value.where == f"$.{field}"


def test_region_is_used_when_a_message_names_one() -> None:
    event = one(alibaba_job("OnJobRunning", Region="cn-hangzhou"))
    assert event["source"] == "batch://alibaba/cn-hangzhou"


def test_same_message_via_mns_xml_and_plain_json_has_one_id() -> None:
    msg = alibaba_job("OnInstanceFailed")
    text = compact(msg).decode()
    assert one(mns_xml(text))["id"] == one(msg)["id"]
