from __future__ import annotations

import json
from typing import Any

import pytest
from batchbridge.core.errors import MalformedPayloadError, UnsupportedEventError
from batchbridge.core.normalizing import normalize
from vendor_payloads import (
    azure_pool_record,
    azure_records,
    azure_task_record,
    compact,
    sample_bytes,
    validate_event,
)


def events_of(payload: dict[str, Any] | bytes, **kwargs: Any) -> list[dict[str, Any]]:
    events = normalize(payload if isinstance(payload, bytes) else compact(payload), **kwargs)
    for event in events:
        validate_event(event)
    return events


def one(payload: dict[str, Any]) -> dict[str, Any]:
    events = events_of(payload)
    assert len(events) == 1
    return events[0]


def test_fail_and_complete_records_of_one_failure_share_one_id() -> None:
    fail, complete = events_of(sample_bytes("azure-records-task-failed-pair.json"))
    assert fail["data"]["native"]["event"] == "TaskFailEvent"
    assert complete["data"]["native"]["event"] == "TaskCompleteEvent"
    assert fail["id"] == complete["id"]
    assert fail["type"] == complete["type"] == "batch.task.failed"
    assert fail["subject"] == "jobs/render-job/tasks/frame-0042"
    # dated by executionInfo.endTime, not by either record's own (different) time
    assert fail["time"] == complete["time"] == "2024-03-05T10:18:45.7654321Z"
    assert fail["data"]["raw"]["time"] != complete["data"]["raw"]["time"]


def test_task_fields() -> None:
    data = events_of(sample_bytes("azure-records-task-failed-pair.json"))[1]["data"]
    assert data["job"] == {"id": "render-job", "name": None}
    assert data["task"] == {"name": "frame-0042"}
    assert data["environment"] == {"id": "render-pool", "name": None}
    assert data["node"] == {"id": "tvmps_5f0c9e3c2b_d_20240305t101500z", "instance_id": None, "address": None}
    assert data["exit_code"] == 1
    assert data["retry_count"] == 2
    assert data["error"] == {
        "code": "FailureExitCode",
        "message": "The task process exited with an unexpected exit code",
    }
    assert data["times"] == {
        "created": None,
        "started": "2024-03-05T10:16:02.1234567Z",
        "ended": "2024-03-05T10:18:45.7654321Z",
    }
    assert data["region"] == "westeurope"


def test_properties_as_json_text_or_object_are_the_same_event() -> None:
    record = azure_task_record("TaskCompleteEvent", endTime="2024-03-05T10:18:45Z", exitCode=0)
    as_text = dict(record, properties=json.dumps(record["properties"]))
    assert one(as_text)["id"] == one(record)["id"]


def test_start_is_dated_by_start_time_not_the_record_time() -> None:
    event = one(azure_task_record("TaskStartEvent", startTime="2024-03-05T10:16:02.5Z"))
    assert event["type"] == "batch.task.running"
    assert event["time"] == "2024-03-05T10:16:02.5Z"


def test_start_without_start_time_has_no_time() -> None:
    event = one(azure_task_record("TaskStartEvent"))
    assert "time" not in event


@pytest.mark.parametrize(
    ("execution", "state"),
    [
        ({"exitCode": 0}, "succeeded"),
        ({"exitCode": 0, "result": "Success"}, "succeeded"),
        ({"exitCode": 3}, "failed"),
        ({"exitCode": 0, "result": "Failure"}, "failed"),
        ({"failureInfo": {"code": "TaskEnded", "message": "terminated"}}, "failed"),
    ],
)
def test_complete_is_succeeded_or_failed_by_exit_code_and_result(execution: dict[str, Any], state: str) -> None:
    event = one(azure_task_record("TaskCompleteEvent", endTime="2024-03-05T10:18:45Z", **execution))
    assert event["type"] == f"batch.task.{state}"
    assert event["time"] == "2024-03-05T10:18:45Z"


@pytest.mark.parametrize(
    ("operation", "state", "transition"),
    [
        ("PoolCreateEvent", "created", "created"),
        ("PoolDeleteStartEvent", "deleting", "deleting"),
        ("PoolDeleteCompleteEvent", "deleted", "deleted"),
        ("PoolResizeStartEvent", "running", "resizing"),
        ("PoolResizeCompleteEvent", "running", "resized"),
        ("PoolAutoscaleEvent", "running", "autoscaled"),
    ],
)
def test_pool_events(operation: str, state: str, transition: str) -> None:
    event = one(azure_pool_record(operation))
    data = event["data"]
    assert event["type"] == f"batch.environment.{transition}"
    assert (data["state"], data["transition"]) == (state, transition)
    assert event["subject"] == "environments/render-pool"
    assert event["time"] == "2024-03-05T09:58:12.5000000Z"  # the record's own time


def test_pool_completion_is_dated_by_its_end_time() -> None:
    event = one(azure_pool_record("PoolDeleteCompleteEvent", endTime="2024-03-05T11:00:00Z"))
    assert event["time"] == "2024-03-05T11:00:00Z"


def test_failed_resize_reports_its_result() -> None:
    record = azure_pool_record("PoolResizeCompleteEvent", resultCode="AllocationFailed", resultMessage="no quota")
    assert one(record)["data"]["error"] == {"code": "AllocationFailed", "message": "no quota"}


def test_records_wrapper_yields_every_record() -> None:
    events = events_of(sample_bytes("azure-records-pool-events.json"))
    assert [e["type"] for e in events] == ["batch.environment.created", "batch.environment.resized"]
    assert events[0]["data"]["environment"] == {"id": "render-pool", "name": "Render pool"}


def test_unmapped_operations_fail_the_export_unless_skipped() -> None:
    export = azure_records()
    export["records"].append(azure_pool_record("JobStartEvent"))
    with pytest.raises(UnsupportedEventError) as info:
        events_of(export)
    assert info.value.where == "$.records[2].operationName"
    assert len(events_of(export, skip_unsupported=True)) == 2


def test_other_log_categories_are_unsupported() -> None:
    record = azure_pool_record("PoolCreateEvent")
    record["category"] = "AuditLog"
    with pytest.raises(UnsupportedEventError):
        events_of(record)


@pytest.mark.parametrize(
    ("location", "source"), [("West Europe", "batch://azure/westeurope"), (None, "batch://azure/-")]
)
def test_region_from_location(location: str | None, source: str) -> None:
    record = azure_pool_record("PoolCreateEvent")
    record["location"] = location
    assert one(record)["source"] == source


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: r.update(properties="{not json"),
        lambda r: r.update(properties=[1, 2]),
        lambda r: r["properties"].pop("jobId"),
        lambda r: r["properties"]["executionInfo"].update(exitCode="one"),
        lambda r: r["properties"]["executionInfo"].update(endTime="2024-13-45T00:00:00Z"),
    ],
)
def test_broken_task_records_are_malformed(mutate: Any) -> None:
    record = azure_task_record("TaskCompleteEvent", endTime="2024-03-05T10:18:45Z", exitCode=0)
    mutate(record)
    with pytest.raises(MalformedPayloadError):
        events_of(record)


def test_empty_records_are_malformed() -> None:
    with pytest.raises(MalformedPayloadError):
        events_of({"records": []})


# --- the rows after the first contract table (documented shapes in core/samples) -------------------


def test_schedule_fail_is_a_pending_task_with_the_scheduling_error() -> None:
    event = events_of(sample_bytes("azure-records-task-scheduling-events.json"))[0]
    data = event["data"]
    assert event["type"] == "batch.task.schedule_failed"
    assert (data["kind"], data["state"], data["transition"]) == ("task", "pending", "schedule_failed")
    assert event["subject"] == "jobs/render-job/tasks/frame-0107"
    assert data["error"] == {
        "code": "JobPreparationTaskFailed",
        "message": "Task cannot run because the job preparation task failed on node",
    }
    # no execution yet: dated by the record; the blank nodeId Azure writes is no node
    assert event["time"] == "2025-06-12T08:00:03.2140000Z"
    assert data["node"] is None
    assert data["environment"] == {"id": "render-pool", "name": None}


def test_requeue_is_a_pending_task_dated_by_its_record() -> None:
    event = events_of(sample_bytes("azure-records-task-scheduling-events.json"))[1]
    data = event["data"]
    assert event["type"] == "batch.task.requeued"
    assert (data["state"], data["transition"]) == ("pending", "requeued")
    assert event["time"] == "2025-06-12T08:20:41.9030000Z"
    assert data["times"]["ended"] == "2025-06-12T08:20:40.1000000Z"
    assert data["error"] is None


def test_requeue_keeps_an_execution_error_when_azure_reports_one() -> None:
    record = azure_task_record("TaskRequeueEvent", exitCode=11, result="failure",
                               schedulingError={"category": "UserError", "code": "BadCommandType",
                                                "message": "Task has invalid command", "details": []})
    data = one(record)["data"]
    assert data["state"] == "pending"
    assert data["error"] == {"code": "BadCommandType", "message": "Task has invalid command"}


def test_current_task_fail_reads_its_reason_from_execution_scheduling_error() -> None:
    event = events_of(sample_bytes("azure-records-task-scheduling-events.json"))[2]
    data = event["data"]
    assert event["type"] == "batch.task.failed"
    assert data["error"] == {"code": "BadCommandType", "message": "Task has invalid command"}
    assert data["exit_code"] == 11
    assert event["time"] == "2025-06-12T08:31:16.8000000Z"


def test_failure_info_wins_over_a_scheduling_error() -> None:
    record = azure_task_record("TaskFailEvent", endTime="2024-03-05T10:18:45Z", exitCode=1,
                               failureInfo={"code": "FailureExitCode", "message": "exit 1"},
                               schedulingError={"code": "Other", "message": "other"})
    assert one(record)["data"]["error"] == {"code": "FailureExitCode", "message": "exit 1"}


def test_complete_with_only_a_scheduling_error_is_failed() -> None:
    record = azure_task_record("TaskCompleteEvent", endTime="2024-03-05T10:18:45Z",
                               schedulingError={"code": "ResourceFileDownloadFailed", "message": "403"})
    event = one(record)
    assert event["type"] == "batch.task.failed"
    assert event["data"]["error"] == {"code": "ResourceFileDownloadFailed", "message": "403"}


def test_job_preparation_and_release_tasks_are_tasks_named_by_task_name() -> None:
    prep, release = events_of(sample_bytes("azure-records-job-prep-release.json"))
    assert prep["type"] == "batch.task.succeeded"
    assert prep["subject"] == "jobs/render-job/tasks/jobprep-render"
    assert prep["data"]["task"] == {"name": "jobprep-render"}
    assert prep["data"]["native"] == {"event": "SpecialTaskEvent", "state": None}
    # the empty schedulingError of a success is no error
    assert prep["data"]["error"] is None
    assert prep["time"] == "2025-06-12T07:47:57Z"
    assert release["type"] == "batch.task.failed"
    assert release["subject"] == "jobs/render-job/tasks/jobrelease-render"
    assert release["data"]["exit_code"] == 2
    assert release["data"]["error"] == {
        "code": "FailureExitCode",
        "message": "The task process exited with an unexpected exit code",
    }


@pytest.mark.parametrize(("exit_code", "result", "state"), [(0, None, "succeeded"), (1, None, "failed"),
                                                              (0, "failure", "failed"), (1, "success", "succeeded")])
def test_special_task_outcome_by_exit_code_and_result(exit_code: int, result: str | None, state: str) -> None:
    record = json.loads(sample_bytes("azure-records-job-prep-release.json"))["records"][0]
    record["properties"]["executionInfo"] = {"endTime": "2025-06-12T07:47:57Z", "exitCode": exit_code,
                                             **({"result": result} if result else {})}
    assert one(record)["data"]["state"] == state


def test_start_tasks_are_unsupported() -> None:
    record = json.loads(sample_bytes("azure-records-job-prep-release.json"))["records"][0]
    record["properties"]["taskType"] = "StartTask"
    del record["properties"]["jobId"]
    with pytest.raises(UnsupportedEventError) as info:
        events_of(record)
    assert info.value.where == "$.properties.taskType"


def test_pool_resize_start_and_autoscale() -> None:
    resizing, autoscaled = events_of(sample_bytes("azure-records-pool-scaling.json"))
    assert resizing["type"] == "batch.environment.resizing"
    assert resizing["time"] == "2025-06-12T07:40:00.5000000Z"
    assert resizing["data"]["error"] is None
    assert autoscaled["type"] == "batch.environment.autoscaled"
    assert autoscaled["data"]["state"] == "running"
    # the autoscale run's own timestamp, not the record's
    assert autoscaled["time"] == "2025-06-12T07:54:56.204Z"
    assert autoscaled["data"]["error"] == {
        "code": "InsufficientSampleData",
        "message": "Autoscale evaluation failed due to insufficient sample data",
    }


def test_successful_autoscale_has_no_error() -> None:
    record = azure_pool_record("PoolAutoscaleEvent", timestamp="2025-06-12T07:54:56Z", formula="$x=1", results="")
    data = one(record)["data"]
    assert data["error"] is None
    assert data["transition"] == "autoscaled"
