from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from batchbridge.core.errors import MalformedPayloadError, UnsupportedEventError
from batchbridge.core.normalizing import normalize
from batchbridge.core.vendors.tencent import EVENTS, message_name
from vendor_payloads import (
    TENCENT_NAMES,
    TENCENT_SUBJECTS,
    camel,
    compact,
    sample_bytes,
    sample_json,
    tencent_element,
    tencent_message,
    validate_event,
)


def one(payload: bytes) -> dict[str, Any]:
    events = normalize(payload)
    assert len(events) == 1
    validate_event(events[0])
    return events[0]


def test_the_table_maps_all_nineteen_documented_names() -> None:
    assert set(EVENTS) == set(TENCENT_NAMES)
    assert len(EVENTS) == 19


@pytest.mark.parametrize("name", sorted(TENCENT_NAMES))
def test_every_event_name_maps_to_its_kind_state_type_and_subject(name: str) -> None:
    kind, state = TENCENT_NAMES[name]
    event = one(compact(tencent_message(tencent_element(name))))
    data = event["data"]
    assert (data["kind"], data["state"], data["transition"]) == (kind, state, state)
    assert event["type"] == f"batch.{kind}.{state}"
    assert event["subject"] == TENCENT_SUBJECTS[kind]
    assert event["source"] == "batch://tencent/ap-guangzhou"
    assert data["native"] == {"event": name, "state": None}
    assert event["time"] == "2018-06-15T15:02:41Z"


@pytest.mark.parametrize("name", sorted(TENCENT_NAMES))
def test_camel_case_config_spelling_is_the_same_event(name: str) -> None:
    upper = one(compact(tencent_message(tencent_element(name))))
    camel_event = one(compact(tencent_message(tencent_element(camel(name)))))
    assert camel_event["type"] == upper["type"]
    assert camel_event["id"] == upper["id"]
    # native keeps the vendor's own spelling
    assert camel_event["data"]["native"]["event"] == camel(name)


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("JobFailed", "JOB_FAILED"),
        ("JobSucceed", "JOB_SUCCEED"),
        ("JOB_FAILED", "JOB_FAILED"),
        ("job_failed", "JOB_FAILED"),
        ("TaskInstanceFailedInterrupted", "TASK_INSTANCE_FAILED_INTERRUPTED"),
        ("ComputeNodeCreationFailed", "COMPUTE_NODE_CREATION_FAILED"),
        ("ComputeEnvDeleted", "COMPUTE_ENV_DELETED"),
        ("JobSucceeded", "JOB_SUCCEED"),
    ],
)
def test_message_name_canonicalises_spellings(spelling: str, expected: str) -> None:
    assert message_name(spelling) == expected


def test_seed_node_sample_maps_every_field() -> None:
    message = sample_json("tencent-cmq-node-created.json")
    event = one(sample_bytes("tencent-cmq-node-created.json"))
    data = event["data"]
    assert event["type"] == "batch.node.created"
    assert event["subject"] == "environments/env-ptoxdb1t/nodes/node-0iy7wxyo"
    assert event["time"] == "2018-06-15T14:43:17Z"
    assert data["region"] == "ap-guangzhou"
    assert data["native"] == {"event": "COMPUTE_NODE_CREATED", "state": "CREATED"}
    assert data["environment"] == {"id": "env-ptoxdb1t", "name": "batch-env"}
    assert data["node"] == {"id": "node-0iy7wxyo", "instance_id": "ins-9rikj9kw", "address": None}
    assert data["resources"] == {"cpu": 4, "memory_gib": 8}
    assert data["times"] == {"created": "2018-06-15T14:43:18Z", "started": None, "ended": None}
    assert data["job"] is None and data["task"] is None and data["instance"] is None
    assert data["vars"] == {}
    # raw is the one element of Events[], not the whole CMQ message
    assert data["raw"] == message["Events"][0]


def test_a_message_with_several_events_yields_each_with_its_own_raw() -> None:
    events = normalize(sample_bytes("tencent-cmq-http-push-job-failed.json"))
    assert [e["type"] for e in events] == ["batch.job.failed", "batch.task_instance.failed"]
    for event in events:
        validate_event(event)
        assert "Events" not in event["data"]["raw"]
    job, instance = events
    assert job["data"]["vars"] == {"team": "render"}
    assert job["data"]["error"] == {"code": None, "message": "task render failed"}
    assert instance["data"]["exit_code"] == 2
    assert instance["data"]["instance"] == {"index": 3}
    assert instance["data"]["logs"]["stdout"].endswith("/stdout.job-4cbvwgg5.render.3")
    assert instance["data"]["logs"]["stderr"].endswith("/stderr.job-4cbvwgg5.render.3")


def test_event_vars_become_a_dict() -> None:
    element = tencent_element("JOB_SUCCEED", JobState="SUCCEED")
    element["EventVars"] = [{"name": "jobSucceed", "value": "Success"}, {"name": "n", "value": "1"}]
    event = one(compact(tencent_message(element)))
    assert event["data"]["vars"] == {"jobSucceed": "Success", "n": "1"}
    assert event["data"]["native"]["state"] == "SUCCEED"


def test_event_vars_in_the_config_spelling() -> None:
    element = tencent_element("JOB_FAILED")
    del element["EventVars"]
    element["event_vars"] = [{"name": "team", "value": "render"}]
    assert one(compact(tencent_message(element)))["data"]["vars"] == {"team": "render"}


@pytest.mark.parametrize("value", [None, [], ""])
def test_missing_or_empty_event_vars_are_an_empty_dict(value: object) -> None:
    element = tencent_element("JOB_RUNNING")
    if value is None:
        del element["EventVars"]
    else:
        element["EventVars"] = value
    assert one(compact(tencent_message(element)))["data"]["vars"] == {}


@pytest.mark.parametrize("value", [5, [1], [{"value": "x"}]])
def test_malformed_event_vars_are_reported_with_their_path(value: object) -> None:
    element = tencent_element("JOB_RUNNING")
    element["EventVars"] = value
    with pytest.raises(MalformedPayloadError) as info:
        normalize(compact(tencent_message(element)))
    assert "Events[0].EventVars" in (info.value.where or "")


def test_a_single_element_without_the_events_array_is_accepted() -> None:
    event = one(compact(tencent_element("TASK_SUCCEED")))
    assert event["type"] == "batch.task.succeeded"


def test_fields_beyond_the_node_sample_are_read_leniently() -> None:
    element = tencent_element(
        "TASK_INSTANCE_FAILED",
        ExitCode="137",
        StateReason="OOM",
        CreateTime="2018-06-15 15:00:00",
        RunningTime="2018-06-15T23:01:00+08:00",
        EndTime="2018-06-15T15:02:40.250Z",
        RedirectInfo={"StdoutRedirectPath": "cos://b/out", "StderrRedirectPath": "cos://b/err"},
        SomethingNew={"kept": "in raw"},
    )
    data = one(compact(tencent_message(element)))["data"]
    assert data["exit_code"] == 137
    assert data["error"] == {"code": None, "message": "OOM"}
    assert data["times"] == {
        "created": "2018-06-15T15:00:00Z",
        "started": "2018-06-15T15:01:00Z",
        "ended": "2018-06-15T15:02:40.250Z",
    }
    assert data["logs"] == {"stdout": "cos://b/out", "stderr": "cos://b/err"}
    assert data["raw"]["Batch"]["SomethingNew"] == {"kept": "in raw"}


def test_without_event_time_the_transition_timestamp_is_used() -> None:
    element = tencent_element("JOB_SUCCEED", time=None, EndTime="2018-06-15T15:10:00Z")
    assert one(compact(tencent_message(element)))["time"] == "2018-06-15T15:10:00Z"
    # a running job without RunningTime: no time at all, never the time of receipt
    element = tencent_element("JOB_RUNNING", time=None)
    assert "time" not in one(compact(tencent_message(element)))


def test_unknown_event_name_is_unsupported() -> None:
    with pytest.raises(UnsupportedEventError) as info:
        normalize(compact(tencent_message(tencent_element("JOB_QUEUED"))))
    assert info.value.where == "$.Events[0].EventName"
    assert info.value.provider == "tencent"


def test_missing_job_id_is_malformed_and_located() -> None:
    element = tencent_element("JOB_FAILED")
    del element["Batch"]["JobId"]
    with pytest.raises(MalformedPayloadError) as info:
        normalize(compact(tencent_message(tencent_element("JOB_RUNNING"), element)))
    assert info.value.where == "$.Events[1]"
    assert "job id" in info.value.reason


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m.update(Events=[]),
        lambda m: m.update(Events=["x"]),
        lambda m: m["Events"][0].update(Batch=[]),
        lambda m: m["Events"][0].update(EventTime="yesterday"),
        lambda m: m["Events"][0]["Batch"].update(TaskInstanceIndex="three"),
        lambda m: m["Events"][0].update(Region="ap guangzhou/1"),
    ],
)
def test_broken_messages_are_malformed(mutate: Callable[[dict[str, Any]], None]) -> None:
    message = tencent_message(tencent_element("TASK_INSTANCE_RUNNING"))
    mutate(message)
    with pytest.raises(MalformedPayloadError):
        normalize(compact(message))
