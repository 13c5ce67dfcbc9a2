"""The consumer-side helper: stale events dropped by sequence alone, from lists and from a subscriber."""

from __future__ import annotations

import random
import uuid

import pytest
from batchbridge.core import ConfigError, SequenceTracker, drop_stale, open_publisher, open_subscriber
from batchbridge.core.subscriber import Received
from conformance import make_event


def _life(job: str) -> list[dict]:  # type: ignore[type-arg]
    """One job's life: pending, running, succeeded in one second (the rank decides), then a re-run."""
    return [make_event(job, 0, state="pending"), make_event(job, 0, state="running"),
            make_event(job, 0, state="succeeded"), make_event(job, 5, state="pending")]


def test_a_late_running_after_succeeded_is_dropped_a_later_pending_is_not() -> None:
    pending, running, succeeded, rerun = _life("j1")
    got = list(drop_stale([pending, succeeded, running, succeeded, rerun, running]))
    assert [e["id"] for e in got] == [pending["id"], succeeded["id"], succeeded["id"], rerun["id"]]


def test_shuffled_duplicated_stream_never_goes_back_per_subject() -> None:
    events = [e for j in range(50) for e in _life(f"job-{j}")] * 2
    random.Random(7).shuffle(events)
    last: dict[str, str] = {}
    for e in drop_stale(events):
        assert e["sequence"] >= last.get(e["subject"], "")
        last[e["subject"]] = e["sequence"]
    assert last == {f"jobs/job-{j}": _life(f"job-{j}")[-1]["sequence"] for j in range(50)}


def test_unjudgeable_items_pass_and_dropped_ones_reach_on_stale() -> None:
    newer, older = make_event("j2", 9), make_event("j2", 1)
    no_sequence = {k: v for k, v in older.items() if k != "sequence"}
    dropped: list[object] = []
    out = list(drop_stale([newer, older, no_sequence, {"sequence": "x"}], on_stale=dropped.append))
    assert out == [newer, no_sequence, {"sequence": "x"}] and dropped == [older]


def test_a_tracker_keeps_memory_across_calls_and_forgets_the_least_recent() -> None:
    tracker = SequenceTracker(max_subjects=2)
    a, b, c = make_event("a", 5), make_event("b", 5), make_event("c", 5)
    assert list(drop_stale([a, b], tracker=tracker)) == [a, b]
    assert tracker.is_stale(make_event("a", 1)) and not tracker.is_stale(make_event("a", 6))
    list(drop_stale([a, c], tracker=tracker))  # "a" is the more recent: "b" is forgotten
    assert len(tracker) == 2 and tracker.latest("jobs/b") is None and tracker.latest("jobs/a") == a["sequence"]
    assert list(drop_stale([make_event("b", 1)], tracker=tracker)) == [make_event("b", 1)]
    with pytest.raises(ConfigError, match="max_subjects"):
        SequenceTracker(0)


def test_drop_stale_over_a_real_subscriber_acks_what_it_drops() -> None:
    uri = f"memory://stale-{uuid.uuid4().hex[:8]}"
    pending, running, succeeded, _ = _life("j3")
    with open_publisher(uri) as pub, open_subscriber(uri) as sub:
        assert all(r.ok for r in pub.publish([pending, succeeded, running]))
        fresh: list[Received] = []
        for r in drop_stale(sub, on_stale=lambda r: sub.ack([r])):
            fresh.append(r)
            sub.ack([r])
            if len(fresh) == 2:
                break
        assert [r.event["id"] for r in fresh if r.event] == [pending["id"], succeeded["id"]]
        assert sub.receive(timeout=0.5) == []  # the stale running was acknowledged, not left to redeliver
