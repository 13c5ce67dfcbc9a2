"""One conformance suite for every subject-state store (``core/state.py``: the ``StateStore``
interface), driven the way the bridge drives it: through its outbox's intake with an
:class:`~batchbridge.core.supersede.IntakeGate`, so that what is tested is the observation *inside
the intake transaction* -- the priors the gate sees, the rows it lets through, and the state left
behind -- and then the reads (``query``, ``recent``) and retention (``forget_idle``).

A store's test module subclasses :class:`StateConformance` and provides a ``stores`` fixture: a
function opening another outbox object (another process, another replica) on the *same* fresh
outbox each time it is called; ``outbox.state`` is its state store.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import pytest
from batchbridge.core.outbox import OutboxRow
from batchbridge.core.state import HISTORY_LENGTH, Observation
from batchbridge.core.supersede import Candidate, IntakeGate
from conformance import make_event

FRESH = "file:///tmp/bb-state-fresh.jsonl"
ALL = "file:///tmp/bb-state-all.jsonl"
STALE = "file:///tmp/bb-state-stale.jsonl"
WEEK = 7 * 24 * 3600.0

Opener = Callable[..., Any]


def gate_of(events: Sequence[dict[str, Any]], *, stale_to: str | None = None, retention: float = WEEK) -> IntakeGate:
    """The gate the bridge builds for one request: each event to a supersede route and to a plain one."""
    gate = IntakeGate()
    gate.add([(Observation.of(e), [Candidate(OutboxRow.of(FRESH, e), "fresh", stale_to, retention),
                                   Candidate(OutboxRow.of(ALL, e))]) for e in events])
    return gate


def intake(store: Any, events: Sequence[dict[str, Any]], **kw: Any) -> IntakeGate:
    gate = gate_of(events, **kw)
    store.put([], [], gate)
    return gate


def rows_at(store: Any, destination: str) -> list[dict[str, Any]]:
    """Every row waiting for ``destination``, in intake order."""
    take = getattr(store, "claim", None) or store.fetch
    return [orjson.loads(p.body) for p in take(destination, 1_000_000)]


class StateConformance:
    @pytest.fixture
    def stores(self) -> Opener:  # pragma: no cover - every subclass provides it
        raise NotImplementedError

    def test_the_newest_event_per_subject_wins_and_older_ones_are_stale(self, stores: Opener) -> None:
        s = stores()
        pending, running, succeeded = (make_event("j1", n, state=st) for n, st in
                                       ((0, "pending"), (1, "running"), (2, "succeeded")))
        gates = [intake(s, [e], stale_to=STALE) for e in (pending, succeeded, running, succeeded)]
        assert [sum(g.stale[0].values()) for g in gates] == [0, 0, 1, 0]
        assert [r["id"] for r in rows_at(s, FRESH)] == [pending["id"], succeeded["id"], succeeded["id"]]
        assert [r["id"] for r in rows_at(s, ALL)] == [e["id"] for e in (pending, succeeded, running, succeeded)]
        assert [r["id"] for r in rows_at(s, STALE)] == [running["id"]]
        [state] = s.state.query("jobs/j1")
        assert (state.state, state.id, state.sequence, state.provider) == ("succeeded", succeeded["id"],
                                                                           succeeded["sequence"], "tencent")
        assert state.type == "batch.job.succeeded" and state.time == succeeded["time"]
        assert [h[1] for h in state.history] == ["pending", "running", "succeeded"]  # true order, once each
        # another replica sees the same state, and judges against it
        other = stores()
        assert [r.id for r in other.state.query("jobs/j1")] == [succeeded["id"]]
        assert sum(intake(other, [running]).stale[0].values()) == 1

    def test_one_request_observes_its_events_in_order(self, stores: Opener) -> None:
        s = stores()
        newer, older, newest = make_event("j2", 5), make_event("j2", 1), make_event("j2", 9)
        gate = intake(s, [newer, older, newest, make_event("j3", 1)])
        assert gate.stale == [{"fresh": 1}] and gate.rows_per_request == [7]
        assert {r.subject: r.id for r in s.state.query()} == {"jobs/j2": newest["id"],
                                                              "jobs/j3": make_event("j3", 1)["id"]}

    def test_equal_sequences_resolve_by_id_whatever_the_arrival_order(self, stores: Opener) -> None:
        a, b = stores(), stores()
        for job, store, order in (("j4", a, 1), ("j5", b, -1)):
            twins = [make_event(job, 3, pad=1), make_event(job, 3, pad=2)]
            assert twins[0]["sequence"] == twins[1]["sequence"] and twins[0]["id"] != twins[1]["id"]
            intake(store, twins[::order])
            intake(store, twins[::-order])  # neither is stale against the other: equal sequences
            assert s_id(store, f"jobs/{job}") == max(e["id"] for e in twins)
        assert len(rows_at(a, FRESH)) == 8  # both replicas' rows, none stale

    def test_events_without_a_time_are_never_stale_and_never_replace_a_sequenced_state(self, stores: Opener) -> None:
        s = stores()
        timed = make_event("j6", 5, state="succeeded")
        untimed = {k: v for k, v in make_event("j6", 1).items() if k not in ("time", "sequence")}
        assert intake(s, [timed]).stale == [{}]
        assert intake(s, [untimed]).stale == [{}]
        assert intake(s, [make_event("j6", 1)]).stale == [{"fresh": 1}]
        assert s_id(s, "jobs/j6") == timed["id"]
        # an untimed event may fill in a subject nothing is known of
        lone = {k: v for k, v in make_event("j7", 2).items() if k not in ("time", "sequence")}
        intake(s, [lone])
        [state] = s.state.query("jobs/j7")
        assert state.id == lone["id"] and state.sequence is None

    def test_history_is_bounded_sorted_by_sequence_and_once_per_id(self, stores: Opener) -> None:
        s = stores()
        events = [make_event("j8", n) for n in range(HISTORY_LENGTH + 5)]
        shuffled = events[:]
        random.Random(3).shuffle(shuffled)
        for e in shuffled + shuffled[:4]:
            intake(s, [e])
        [state] = s.state.query("jobs/j8")
        # the latest transitions by sequence, whatever order they came in, each once
        assert [h[3] for h in state.history] == [e["id"] for e in events][-HISTORY_LENGTH:]
        assert state.id == events[-1]["id"]

    def test_queries_by_subject_glob_and_limit(self, stores: Opener) -> None:
        s = stores()
        events = [make_event(f"q{j}", 1) for j in range(5)]
        task = make_event("q1", 2) | {"subject": "jobs/q1/tasks/t0"}
        intake(s, [*events, task])
        assert [r.subject for r in s.state.query()] == ["jobs/q0", "jobs/q1", "jobs/q1/tasks/t0", "jobs/q2",
                                                        "jobs/q3", "jobs/q4"]
        assert [r.subject for r in s.state.query("jobs/q3")] == ["jobs/q3"]
        assert s.state.query("jobs/nothing") == []
        # ``*`` crosses ``/`` (fnmatch), the prefix narrows the read
        assert [r.subject for r in s.state.query("jobs/q1*")] == ["jobs/q1", "jobs/q1/tasks/t0"]
        assert [r.subject for r in s.state.query("*/tasks/*")] == ["jobs/q1/tasks/t0"]
        assert len(s.state.query(limit=2)) == 2 and len(s.state.query("jobs/*", limit=3)) == 3
        assert s.state.query("jobs/q[24]") == [r for r in s.state.query() if r.subject in ("jobs/q2", "jobs/q4")]
        assert set(s.state.query()[0].as_dict()) == {"subject", "type", "state", "time", "sequence", "id", "provider"}

    def test_recent_names_the_roots_of_the_latest_partitions(self, stores: Opener) -> None:
        s = stores()
        for j in ("r1", "r2", "r3"):
            # a task only: the root is named whether or not it had events itself
            intake(s, [make_event(j, 1) | {"subject": f"jobs/{j}/tasks/t1"}])
        intake(s, [make_event("r1", 2)])
        recent = s.state.recent("jobs/", 10)
        assert recent[0] == "jobs/r1" and sorted(recent) == ["jobs/r1", "jobs/r2", "jobs/r3"]
        assert len(s.state.recent("jobs/", 2)) == 2 and s.state.recent("environments/", 5) == []

    def test_retention_forgets_idle_subjects_and_a_route_ignores_older_state(self, stores: Opener) -> None:
        s = stores()
        newer, older = make_event("f1", 9), make_event("f1", 1)
        intake(s, [newer, make_event("f2", 1)])
        # a route whose retention is shorter than the subject's idle time judges it unknown
        assert intake(s, [older], retention=-1.0).stale == [{}]
        assert intake(s, [older]).stale == [{"fresh": 1}]
        assert s.state.forget_idle(time.time() - 3600) == 0
        assert s.state.forget_idle(time.time() + 1) == 2
        assert s.state.query() == []
        assert intake(s, [older]).stale == [{}]  # forgotten: nothing to be stale against

    def test_replicas_racing_on_one_subject_never_both_pass_as_newest(self, stores: Opener) -> None:
        jobs = [f"race{j}" for j in range(6)]
        events = [make_event(j, n) for j in jobs for n in range(30)]
        replicas = [stores() for _ in range(3)]
        errors: list[BaseException] = []

        def post(store: Any, part: list[dict[str, Any]]) -> None:
            try:
                for e in part:
                    intake(store, [e])
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        parts = [events[i::6][::-1] if i % 2 else events[i::6] for i in range(6)]
        threads = [threading.Thread(target=post, args=(replicas[i % 3], part)) for i, part in enumerate(parts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        last: dict[str, str] = {}
        for e in rows_at(replicas[0], FRESH):
            assert e["sequence"] >= last.get(e["subject"], ""), f"an older event after a newer for {e['subject']}"
            last[e["subject"]] = e["sequence"]
        final = {j: make_event(j, 29)["sequence"] for j in jobs}
        assert last == {f"jobs/{j}": q for j, q in final.items()}
        assert {r.subject: r.sequence for r in replicas[1].state.query()} == last
        assert len(rows_at(replicas[0], ALL)) == len(events)

    def test_a_replay_observes_like_intake(self, stores: Opener) -> None:
        from batchbridge.core.outbox import INTAKE, DeadLetter

        s = stores()
        newer, older = make_event("p1", 9), make_event("p1", 1)
        intake(s, [newer])
        [dl_id] = s.put([], [DeadLetter(INTAKE, "api", "invalid_event", "test", orjson.dumps(older))]).dead_ids
        gate = gate_of([older])
        s.resolve(dl_id, [], [], gate)
        assert gate.stale == [{"fresh": 1}] and s.dead_letter_count() == 0
        assert [r["id"] for r in rows_at(s, ALL)] == [newer["id"], older["id"]]


def s_id(store: Any, subject: str) -> str:
    [state] = store.state.query(subject)
    return str(state.id)
