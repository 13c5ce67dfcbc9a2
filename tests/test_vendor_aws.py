from __future__ import annotations

from typing import Any

import pytest
from batchbridge.core.errors import MalformedPayloadError, UnsupportedEventError
from batchbridge.core.event import ordering_key
from batchbridge.core.normalizing import normalize
from vendor_payloads import AWS_STATUSES, aws_array_child, aws_event, compact, sample_json, validate_event

JOB_ID = "4c7599ae-0a82-49aa-ba5a-4727fcce14a8"
PARENT = "7b5d3c40-3e9b-4f3c-bc36-0c4d2a9a1f10"


def one(event: dict[str, Any]) -> dict[str, Any]:
    events = normalize(compact(event))
    assert len(events) == 1
    validate_event(events[0])
    return events[0]


@pytest.mark.parametrize(("status", "state"), sorted(AWS_STATUSES.items()))
def test_every_status_maps_to_a_job_state(status: str, state: str) -> None:
    event = one(aws_event(status))
    data = event["data"]
    assert (data["kind"], data["state"], data["transition"]) == ("job", state, state)
    assert event["type"] == f"batch.job.{state}"
    assert event["subject"] == f"jobs/{JOB_ID}"
    assert event["source"] == "batch://aws/us-east-1"
    assert data["native"] == {"event": "Batch Job State Change", "state": status}
    assert event["time"] == "2022-01-11T23:45:31Z"


def test_succeeded_job_fields() -> None:
    data = one(aws_event("SUCCEEDED"))["data"]
    assert data["job"] == {"id": JOB_ID, "name": "event-test"}
    assert data["exit_code"] == 0
    assert data["retry_count"] == 0
    assert data["error"] is None
    assert data["times"] == {
        "created": "2022-01-11T23:36:40.058Z",
        "started": "2022-01-11T23:41:10.213Z",
        "ended": "2022-01-11T23:45:31.052Z",
    }
    assert data["resources"] == {"cpu": 2, "memory_gib": 2}
    stream = (
        "arn:aws:logs:us-east-1:123456789012:log-group:/aws/batch/job"
        ":log-stream:first-run-job-definition/default/0ac4b1a7"
    )
    assert data["logs"] == {"stdout": stream, "stderr": stream}


def test_array_child_is_a_task_instance_of_its_parent() -> None:
    event = one(aws_array_child())
    data = event["data"]
    assert event["type"] == "batch.task_instance.failed"
    assert event["subject"] == f"jobs/{PARENT}/tasks/-/instances/7"
    assert data["job"] == {"id": PARENT, "name": "thumbnails"}
    assert data["instance"] == {"index": 7}
    assert data["task"] is None
    assert data["exit_code"] == 1
    assert data["retry_count"] == 1  # two attempts
    assert data["error"] == {"code": None, "message": "Essential container in task exited"}
    assert data["logs"]["stdout"].endswith(":log-group:/batch/thumbs:log-stream:thumbs/default/22bb")
    assert data["resources"] == {"cpu": 1, "memory_gib": 0.5}
    assert data["times"]["ended"] == "2022-01-12T08:15:09.123Z"
    # children of one array job share the parent's ordering key
    assert ordering_key(event) == PARENT


def test_array_child_index_comes_from_the_job_id_when_array_properties_are_missing() -> None:
    event = aws_array_child()
    del event["detail"]["arrayProperties"]
    assert one(event)["data"]["instance"] == {"index": 7}


def test_array_parent_stays_a_job() -> None:
    event = aws_event("RUNNING", arrayProperties={"size": 10, "statusSummary": {}})
    assert one(event)["data"]["kind"] == "job"


def test_exit_code_falls_back_to_the_last_attempt() -> None:
    event = aws_event("FAILED", statusReason="boom")
    del event["detail"]["container"]["exitCode"]
    event["detail"]["attempts"][0]["container"]["exitCode"] = 3
    data = one(event)["data"]
    assert data["exit_code"] == 3
    assert data["error"] == {"code": None, "message": "boom"}


def test_fractional_fargate_vcpus_are_left_in_raw() -> None:
    event = aws_event("RUNNING")
    event["detail"]["container"]["resourceRequirements"] = [
        {"type": "VCPU", "value": "0.25"},
        {"type": "MEMORY", "value": "512"},
    ]
    assert one(event)["data"]["resources"] == {"cpu": None, "memory_gib": 0.5}


def test_other_batch_detail_types_are_unsupported() -> None:
    event = aws_event()
    event["detail-type"] = "Batch Service Job State Change"
    with pytest.raises(UnsupportedEventError):
        normalize(compact(event))


def test_unknown_status_is_unsupported() -> None:
    with pytest.raises(UnsupportedEventError):
        normalize(compact(aws_event("TELEPORTED")))


def test_non_batch_aws_events_are_unsupported() -> None:
    event = aws_event()
    event["source"] = "aws.ec2"
    event["detail-type"] = "EC2 Instance State-change Notification"
    with pytest.raises(UnsupportedEventError):
        normalize(compact(event))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: e.pop("detail"),
        lambda e: e.update(detail="nope"),
        lambda e: e["detail"].pop("jobId"),
        lambda e: e["detail"].update(createdAt="yesterday"),
        lambda e: e["detail"].update(createdAt=10**20),
        lambda e: e.update(time="11/01/2022"),
    ],
)
def test_broken_events_are_malformed(mutate: Any) -> None:
    event = aws_event()
    mutate(event)
    with pytest.raises(MalformedPayloadError):
        normalize(compact(event))


# --- the rows after the first contract table (documented shapes in core/samples) -------------------

BLOCKED_JOB = "9d3f1c2e-6a7b-4c8d-9e0f-1a2b3c4d5e6f"
MNP_JOB = "3f6a8b1c-2d4e-4f5a-9b6c-7d8e9f0a1b2c"


def test_queue_blocked_is_the_job_blocked_with_its_reason() -> None:
    event = one(sample_json("aws-eventbridge-job-queue-blocked.json"))
    data = event["data"]
    assert event["type"] == "batch.job.blocked"
    assert (data["kind"], data["state"], data["transition"]) == ("job", "pending", "blocked")
    assert event["subject"] == f"jobs/{BLOCKED_JOB}"
    assert data["native"] == {"event": "Batch Job Queue Blocked", "state": "RUNNABLE"}
    assert data["error"] == {
        "code": None,
        "message": "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - The job resource requirement (vCPU/memory/GPU) "
                   "is higher than that can be met by the CE(s) attached to the job queue.",
    }
    assert event["time"] == "2022-01-11T23:36:40Z"
    assert data["resources"] == {"cpu": 64, "memory_gib": 256}


def test_queue_blocked_and_runnable_of_one_moment_are_different_events() -> None:
    blocked = sample_json("aws-eventbridge-job-queue-blocked.json")
    runnable = dict(blocked, **{"detail-type": "Batch Job State Change"})
    first, second = one(blocked), one(runnable)
    assert (first["data"]["state"], second["data"]["state"]) == ("pending", "pending")
    assert first["id"] != second["id"]
    assert second["data"]["error"] is None  # a RUNNABLE job is not an error by itself


def test_multi_node_parallel_node_is_a_task_instance_of_its_job() -> None:
    event = one(sample_json("aws-eventbridge-mnp-node-failed.json"))
    data = event["data"]
    assert event["type"] == "batch.task_instance.failed"
    assert event["subject"] == f"jobs/{MNP_JOB}/tasks/-/instances/2"
    assert data["job"] == {"id": MNP_JOB, "name": "mpi-solver"}
    assert data["instance"] == {"index": 2}
    assert data["exit_code"] == 137
    # statusReason is empty: the container's reason is the error
    assert data["error"] == {"code": None, "message": "OutOfMemoryError: Container killed due to memory usage"}
    assert ordering_key(event) == MNP_JOB


def test_multi_node_index_comes_from_the_job_id_without_node_details() -> None:
    event = sample_json("aws-eventbridge-mnp-node-failed.json")
    del event["detail"]["nodeDetails"]
    assert one(event)["subject"] == f"jobs/{MNP_JOB}/tasks/-/instances/2"


def test_multi_node_main_job_stays_a_job() -> None:
    event = aws_event("RUNNING", nodeProperties={"numNodes": 3, "mainNode": 0})
    assert one(event)["data"]["kind"] == "job"


def test_failure_reason_falls_back_to_the_last_attempt() -> None:
    event = aws_event("FAILED", statusReason="")
    event["detail"]["container"]["reason"] = ""
    event["detail"]["attempts"][0]["statusReason"] = "Host EC2 (instance i-0a1b) terminated."
    assert one(event)["data"]["error"] == {"code": None, "message": "Host EC2 (instance i-0a1b) terminated."}


@pytest.mark.parametrize(("change", "where"), [
    (lambda d: d["container"].update(exitCode="x"), "$.detail.container.exitCode"),
    (lambda d: d.update(attempts=[{"container": {"exitCode": "y"}}]) or d["container"].pop("exitCode"),
     "$.detail.attempts[0].container.exitCode"),
    (lambda d: d["container"].update(resourceRequirements=[{"type": "MEMORY", "value": 1},
                                                           {"type": "VCPU", "value": "-1"}]),
     "$.detail.container.resourceRequirements[1].value"),
    (lambda d: d["container"].update(logConfiguration={"options": []}), "$.detail.container.logConfiguration.options"),
])
def test_a_bad_nested_field_is_named_by_its_whole_path(change: Any, where: str) -> None:
    # nested readers join their path only for an error: it must still be the field's whole JSON path
    event = aws_event("SUCCEEDED")
    change(event["detail"])
    with pytest.raises(MalformedPayloadError) as caught:
        normalize(compact(event))
    assert caught.value.where == where


def test_a_bad_region_is_named_by_its_path() -> None:
    event = aws_event("SUCCEEDED")
    event["region"] = "bad region!"
    with pytest.raises(MalformedPayloadError, match="not a region name") as caught:
        normalize(compact(event))
    assert caught.value.where == "$.region"
