from __future__ import annotations

from typing import Any

import pytest
from batchbridge.core.errors import MalformedPayloadError, UnsupportedEventError
from batchbridge.core.normalizing import normalize
from vendor_payloads import (
    GCP_JOB_STATES,
    GCP_TASK_STATES,
    b64,
    compact,
    gcp_message,
    pubsub_push,
    sample_bytes,
    validate_event,
)

JOB_UID = "nightly-render-3c8e0f5a-7d4b-4c61-a000"


def one(payload: dict[str, Any] | bytes) -> dict[str, Any]:
    events = normalize(payload if isinstance(payload, bytes) else compact(payload))
    assert len(events) == 1
    validate_event(events[0])
    return events[0]


@pytest.mark.parametrize(("native", "state"), sorted(GCP_JOB_STATES.items()))
def test_every_job_state(native: str, state: str) -> None:
    event = one(pubsub_push(gcp_message("job", native)))
    data = event["data"]
    assert (data["kind"], data["state"], data["transition"]) == ("job", state, state)
    assert event["type"] == f"batch.job.{state}"
    assert event["subject"] == f"jobs/{JOB_UID}"
    assert data["native"] == {"event": "JOB_STATE_CHANGED", "state": native}


@pytest.mark.parametrize(("native", "state"), sorted(GCP_TASK_STATES.items()))
def test_every_task_state(native: str, state: str) -> None:
    event = one(pubsub_push(gcp_message("task", native)))
    data = event["data"]
    assert (data["kind"], data["state"]) == ("task_instance", state)
    assert event["type"] == f"batch.task_instance.{state}"
    assert event["subject"] == f"jobs/{JOB_UID}/tasks/group0/instances/3"
    assert data["native"] == {"event": "TASK_STATE_CHANGED", "state": native}


def test_job_name_gives_region_and_name_and_job_uid_the_id() -> None:
    event = one(sample_bytes("gcp-pubsub-push-job-succeeded.json"))
    data = event["data"]
    assert data["region"] == "us-central1"
    assert event["source"] == "batch://gcp/us-central1"
    assert data["job"] == {"id": JOB_UID, "name": "nightly-render"}
    assert event["time"] == "2024-03-05T10:21:44.417Z"
    # the raw event is the Pub/Sub message, not the push wrapper
    assert set(data["raw"]) >= {"attributes", "data", "messageId"}
    assert "subscription" not in data["raw"]


def test_task_failure_keeps_exit_code_and_description() -> None:
    event = one(sample_bytes("gcp-pubsub-push-task-failed.json"))
    data = event["data"]
    assert data["region"] == "europe-west4"
    assert data["instance"] == {"index": 3}
    assert data["task"] == {"name": "group0"}
    assert data["exit_code"] == 3
    assert data["error"]["message"].startswith("Task state is updated from RUNNING to FAILED")
    assert event["time"] == "2024-03-05T10:19:02.119384Z"


def test_task_index_from_a_task_name_path() -> None:
    msg = gcp_message("task", "RUNNING")
    del msg["attributes"]["TaskUID"]
    msg["attributes"]["TaskName"] = "projects/p/locations/us-east1/jobs/j/taskGroups/group1/tasks/12"
    event = one(msg)
    assert event["subject"] == f"jobs/{JOB_UID}/tasks/group1/instances/12"


def test_task_uid_without_a_group_still_gives_the_index() -> None:
    event = one(gcp_message("task", "RUNNING", TaskUID="abc-17"))
    assert event["subject"] == f"jobs/{JOB_UID}/tasks/-/instances/17"


def test_json_body_description_is_read() -> None:
    msg = gcp_message("job", "FAILED")
    msg["data"] = b64(compact({"description": "Job failed: exit code 42"}))
    data = one(msg)["data"]
    assert data["exit_code"] == 42
    assert data["error"] == {"code": None, "message": "Job failed: exit code 42"}


def test_pulled_message_without_publish_time_has_no_time() -> None:
    msg = gcp_message("job", "RUNNING")
    del msg["publishTime"], msg["publish_time"]
    event = one(msg)
    assert "time" not in event


def test_job_name_without_location_leaves_region_unknown() -> None:
    event = one(gcp_message("job", "RUNNING", JobName="plain-name"))
    assert event["source"] == "batch://gcp/-"
    assert event["data"]["job"]["name"] == "plain-name"


@pytest.mark.parametrize("state", ["STATE_UNSPECIFIED", "CANCELLATION_IN_PROGRESS", "EXPLODED"])
def test_unmapped_states_are_unsupported(state: str) -> None:
    with pytest.raises(UnsupportedEventError):
        normalize(compact(gcp_message("job", state)))


def test_unmapped_type_is_unsupported() -> None:
    with pytest.raises(UnsupportedEventError):
        normalize(compact(gcp_message("job", "RUNNING", Type="JOB_DELETED")))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m["attributes"].pop("TaskUID"),
        lambda m: m["attributes"].pop("NewTaskState"),
        lambda m: m.update(data="***"),
        lambda m: m.update(data=b64(b"\xff\xfe")),
        lambda m: m.update(publishTime="now"),
    ],
)
def test_broken_task_notifications_are_malformed(mutate: Any) -> None:
    msg = gcp_message("task", "RUNNING")
    mutate(msg)
    with pytest.raises(MalformedPayloadError):
        normalize(compact(msg))
