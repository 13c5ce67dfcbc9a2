"""Event-name spellings a router accepts (batchbridge.core.names)."""

from __future__ import annotations

import pytest
from batchbridge.core.names import canonical_type_for_name, known_types, name_matches
from batchbridge.core.normalizing import normalize
from vendor_payloads import TENCENT_NAMES, camel, compact, tencent_element, tencent_message


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("JobFailed", {"batch.job.failed"}),
        ("JOB_FAILED", {"batch.job.failed"}),
        ("OnJobFailed", {"batch.job.failed"}),
        ("batch.job.failed", {"batch.job.failed"}),
        ("BATCH.JOB.FAILED", {"batch.job.failed"}),
        ("JobSucceed", {"batch.job.succeeded"}),
        ("JOB_SUCCEED", {"batch.job.succeeded"}),
        ("OnJobFinished", {"batch.job.succeeded"}),
        ("job_succeeded", {"batch.job.succeeded"}),
        ("JobFailedInterrupted", {"batch.job.interrupted"}),
        ("TaskInstanceSucceed", {"batch.task_instance.succeeded"}),
        ("OnInstanceFinished", {"batch.task_instance.succeeded"}),
        ("OnInstanceCreated", {"batch.node.created"}),
        ("OnInstanceActive", {"batch.node.running"}),
        ("ComputeNodeCreationFailed", {"batch.node.creation_failed"}),
        ("COMPUTE_ENV_DELETED", {"batch.environment.deleted"}),
        ("OnClusterDeleted", {"batch.environment.deleted"}),
        ("OnPriorityChange", {"batch.job.priority_changed"}),
        ("TaskCompleteEvent", {"batch.task.succeeded", "batch.task.failed"}),
        ("TaskFailEvent", {"batch.task.failed"}),
        ("PoolResizeCompleteEvent", {"batch.environment.resized"}),
    ],
)
def test_spellings_resolve_to_canonical_types(name: str, expected: set[str]) -> None:
    assert canonical_type_for_name(name) == expected


@pytest.mark.parametrize("name", ["", "  ", "JobExploded", "batch.job.exploded", "OnJob"])
def test_unknown_names_resolve_to_nothing(name: str) -> None:
    assert canonical_type_for_name(name) == frozenset()


def test_globs_select_known_types() -> None:
    jobs = canonical_type_for_name("batch.job.*")
    assert {"batch.job.failed", "batch.job.succeeded", "batch.job.priority_changed"} <= jobs
    assert all(t.startswith("batch.job.") for t in jobs)
    assert canonical_type_for_name("*") == known_types()


def test_vendor_notification_types_cover_their_outcomes() -> None:
    assert "batch.task_instance.failed" in canonical_type_for_name("TASK_STATE_CHANGED")
    assert "batch.job.deleting" in canonical_type_for_name("JOB_STATE_CHANGED")
    assert "batch.task_instance.failed" in canonical_type_for_name("Batch Job State Change")


@pytest.mark.parametrize("name", sorted(TENCENT_NAMES))
def test_a_config_name_matches_the_events_it_names(name: str) -> None:
    event = normalize(compact(tencent_message(tencent_element(name))))[0]
    assert name_matches(camel(name), event["type"])
    assert name_matches(name, event["type"])
    assert event["type"] in known_types()


def test_a_config_name_does_not_match_other_events() -> None:
    assert not name_matches("JobFailed", "batch.job.succeeded")
    assert not name_matches("JobFailed", "batch.task.failed")
