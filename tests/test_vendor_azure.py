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
        ("PoolResizeCompleteEvent", "running", "resized"),
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
    export["records"].append(azure_pool_record("PoolResizeStartEvent"))
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
