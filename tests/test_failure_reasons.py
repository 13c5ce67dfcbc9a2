"""The contract's failure-reason rule: every vendor's reason lands in ``error``, wherever the vendor
put it, and a failed event with a reason in its payload never has ``error: null``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from batchbridge.core.normalizing import normalize
from vendor_payloads import (
    alibaba_job,
    aws_event,
    azure_task_record,
    b64,
    compact,
    gcp_message,
    pubsub_push,
    tencent_element,
    tencent_message,
    validate_event,
)

REASON = "the reason the vendor gave"


def _aws(where: str) -> dict[str, Any]:
    event = aws_event("FAILED", statusReason="")
    detail = event["detail"]
    detail["container"]["reason"] = ""
    attempt = detail["attempts"][-1]
    attempt.pop("statusReason", None)
    attempt["container"].pop("reason", None)
    if where == "statusReason":
        detail["statusReason"] = REASON
    elif where == "container.reason":
        detail["container"]["reason"] = REASON
    elif where == "attempts[-1].statusReason":
        attempt["statusReason"] = REASON
    else:
        attempt["container"]["reason"] = REASON
    return event


def _azure(where: str) -> dict[str, Any]:
    error = {"category": "UserError", "code": "SomeCode", "message": REASON}
    if where == "executionInfo.failureInfo":
        return azure_task_record("TaskFailEvent", endTime="2024-03-05T10:18:45Z", exitCode=1, failureInfo=error)
    if where == "executionInfo.schedulingError":
        return azure_task_record("TaskFailEvent", endTime="2024-03-05T10:18:45Z", exitCode=1, schedulingError=error)
    record = azure_task_record("TaskFailEvent", endTime="2024-03-05T10:18:45Z", exitCode=1)
    record["properties"]["schedulingError"] = error
    return record


_ALIBABA_EMPTY = {"ErrorCode": "", "ErrorMessage": "", "Detail": ""}

CASES: list[tuple[str, Callable[[], Any]]] = [
    *((f"aws {w}", lambda w=w: _aws(w)) for w in
      ("statusReason", "container.reason", "attempts[-1].statusReason", "attempts[-1].container.reason")),
    *((f"azure {w}", lambda w=w: _azure(w)) for w in
      ("executionInfo.failureInfo", "executionInfo.schedulingError", "schedulingError")),
    *((f"alibaba {f}", lambda f=f: alibaba_job("OnInstanceFailed", **(_ALIBABA_EMPTY | {f: REASON})))
      for f in ("ErrorMessage", "Detail")),
    ("alibaba job Message", lambda: alibaba_job("OnJobFailed", Message=REASON)),
    *((f"tencent {f}", lambda f=f: tencent_message(tencent_element("JOB_FAILED", **{f: REASON})))
      for f in ("StateReason", "ErrorMessage", "Message", "Reason")),
    ("gcp body", lambda: pubsub_push(gcp_message("task", "FAILED") | {"data": b64(REASON)})),
]


@pytest.mark.parametrize("build", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_a_failed_event_carries_its_reason(build: Callable[[], Any]) -> None:
    [event] = normalize(compact(build()))
    validate_event(event)
    assert event["data"]["state"] == "failed"
    error = event["data"]["error"]
    assert error is not None
    assert error["message"] == REASON


def test_a_failed_event_without_any_reason_has_no_error() -> None:
    bare = aws_event("FAILED", statusReason="")
    bare["detail"]["container"]["reason"] = ""
    for attempt in bare["detail"]["attempts"]:
        attempt.pop("statusReason", None)
        attempt["container"].pop("reason", None)
    [event] = normalize(compact(bare))
    assert event["data"]["error"] is None
