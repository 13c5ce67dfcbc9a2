"""The CloudEvent id: deterministic across processes, shared by redeliveries, distinct per transition."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from batchbridge.core.normalizing import normalize
from vendor_payloads import (
    alibaba_job,
    b64,
    cmq_push,
    compact,
    corpus,
    mns_xml,
    pubsub_data,
    pubsub_push,
    sample_bytes,
    tencent_element,
    tencent_message,
)

HEX32 = re.compile(r"[0-9a-f]{32}")

_CHILD = """
import json, sys
from batchbridge.core.normalizing import normalize
items = json.load(sys.stdin)
print(json.dumps({name: [e["id"] for e in normalize(payload.encode("latin-1"))] for name, payload in items}))
"""


def _ids_in_subprocess(items: list[tuple[str, bytes]], seed: str) -> dict[str, list[str]]:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    stdin = json.dumps([(name, payload.decode("latin-1")) for name, payload in items])
    done = subprocess.run(
        [sys.executable, "-c", _CHILD],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parent,
        check=True,
        timeout=120,
    )
    result: dict[str, list[str]] = json.loads(done.stdout)
    return result


def test_ids_are_identical_in_separate_processes() -> None:
    items = corpus()
    here = {name: [e["id"] for e in normalize(payload)] for name, payload in items}
    first = _ids_in_subprocess(items, "1")
    second = _ids_in_subprocess(items, "4242")
    assert first == here
    assert second == here
    assert all(HEX32.fullmatch(i) for ids in here.values() for i in ids)


def test_a_known_id_never_drifts() -> None:
    # pinned: a change here breaks de-duplication against events already published
    assert normalize(sample_bytes("tencent-cmq-node-created.json"))[0]["id"] == "433e15ca17a1b84d11433e72e11f7360"


def test_different_transitions_of_one_resource_have_different_ids() -> None:
    time = "2018-06-15T15:02:41Z"
    names = ["JOB_RUNNING", "JOB_SUCCEED", "JOB_FAILED", "JOB_FAILED_INTERRUPTED"]
    ids = {normalize(compact(tencent_message(tencent_element(n, time=time))))[0]["id"] for n in names}
    assert len(ids) == len(names)
    events = ["OnJobWaiting", "OnJobRunning", "OnJobStopped", "OnJobFinished", "OnJobFailed"]
    same_times = {"CreationTime": time, "StartTime": time, "EndTime": time}
    ids = {normalize(compact(alibaba_job(e, **same_times)))[0]["id"] for e in events}
    assert len(ids) == len(events)


def test_the_same_transition_at_another_time_is_another_event() -> None:
    a = normalize(compact(tencent_message(tencent_element("JOB_RUNNING", time="2018-06-15T15:02:41Z"))))
    b = normalize(compact(tencent_message(tencent_element("JOB_RUNNING", time="2018-06-15T15:02:42Z"))))
    assert a[0]["id"] != b[0]["id"]


def test_priority_changes_differ_by_their_priorities() -> None:
    a = normalize(compact(alibaba_job("OnPriorityChange", From="10", To="20")))[0]["id"]
    b = normalize(compact(alibaba_job("OnPriorityChange", From="20", To="10")))[0]["id"]
    assert a != b


def test_redelivery_in_any_envelope_keeps_the_id() -> None:
    node = sample_bytes("tencent-cmq-node-created.json")
    expected = normalize(node)[0]["id"]
    deliveries = [
        json.dumps(json.loads(node), indent=3).encode(),
        b64(node).encode(),
        compact(cmq_push(b64(node))),
        compact(pubsub_push(pubsub_data(node))),
    ]
    assert {normalize(d)[0]["id"] for d in deliveries} == {expected}


def test_without_a_time_the_raw_event_decides() -> None:
    waiting = alibaba_job("OnTaskWaiting")  # a task message has no CreationTime: no time
    first = normalize(compact(waiting))[0]
    assert "time" not in first
    # redelivered, even re-serialised with other key order and via MNS XML: same id
    reordered = json.dumps(dict(reversed(list(waiting.items()))))
    assert normalize(mns_xml(reordered))[0]["id"] == first["id"]
    # a different native event of the same transition is another occurrence
    assert normalize(compact({**waiting, "StartTime": "2016-11-02T00:00:00Z"}))[0]["id"] != first["id"]


def test_equal_instants_in_other_offsets_share_an_id() -> None:
    z = normalize(compact(tencent_message(tencent_element("JOB_RUNNING", time="2018-06-15T15:02:41Z"))))
    plus8 = normalize(compact(tencent_message(tencent_element("JOB_RUNNING", time="2018-06-15T23:02:41+08:00"))))
    assert z[0]["time"] == plus8[0]["time"] == "2018-06-15T15:02:41Z"
    assert z[0]["id"] == plus8[0]["id"]
