"""Supersedence in the bridge and the subject-state store, on a real outbox file and file:// backends."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson
import pytest
from batchbridge.core.bridge import Bridge
from batchbridge.core.config import DEFAULT_STATE_RETENTION, config_from_dict
from batchbridge.core.errors import ConfigError
from batchbridge.core.metrics import prometheus_registry
from conformance import make_trusted_event as make_event


def _config(tmp_path: Path, **route: object) -> dict:  # type: ignore[type-arg]
    return {
        "outbox": {"path": str(tmp_path / "outbox.db")},
        "routes": [
            {"name": "fresh", "to": f"file://{tmp_path}/fresh.jsonl", "supersede": True, **route},
            {"name": "all", "to": f"file://{tmp_path}/all.jsonl"},
        ],
    }


def _lines(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def test_stale_events_skip_supersede_routes_only_and_go_to_stale_to(tmp_path: Path) -> None:
    config = config_from_dict(_config(tmp_path, stale_to=f"file://{tmp_path}/stale.jsonl"))
    pending, running, succeeded = (make_event("j1", 0, state=s) for s in ("pending", "running", "succeeded"))
    with Bridge(config) as bridge:
        results = [bridge.handle(orjson.dumps(e)) for e in (pending, succeeded, running, succeeded)]
        assert [r.stale for r in results] == [0, 0, 1, 0]
        assert [r.deliveries for r in results] == [2, 2, 2, 2]  # the stale one went to stale_to instead
        assert bridge.drain(10)
        assert bridge.stats.stale == {"fresh": 1}
        text = prometheus_registry(bridge.stats, bridge.outbox.depths)
        from prometheus_client import generate_latest

        assert b'batchbridge_events_stale_total{route="fresh"} 1.0' in generate_latest(text)
        [state] = bridge.outbox.state.query("jobs/j1")
    assert [e["id"] for e in _lines(tmp_path / "fresh.jsonl")] == [pending["id"], succeeded["id"], succeeded["id"]]
    assert [e["id"] for e in _lines(tmp_path / "all.jsonl")] == [e["id"] for e in (pending, succeeded, running,
                                                                                  succeeded)]
    assert [e["id"] for e in _lines(tmp_path / "stale.jsonl")] == [running["id"]]
    assert (state.state, state.id, state.sequence) == ("succeeded", succeeded["id"], succeeded["sequence"])
    assert [h[1] for h in state.history] == ["pending", "running", "succeeded"]  # the true order, once each


def test_concurrent_intake_never_lets_an_older_event_through_after_a_newer(tmp_path: Path) -> None:
    config = config_from_dict(_config(tmp_path))
    events = [make_event(f"j{j}", n) for j in range(8) for n in range(40)]
    with Bridge(config) as bridge:
        def post(part: list[dict]) -> None:  # type: ignore[type-arg]
            for e in part:
                bridge.handle(orjson.dumps(e))

        threads = [threading.Thread(target=post, args=(events[i::6][::-1] if i % 2 else events[i::6],))
                   for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert bridge.drain(20)
        states = {s.subject: s.sequence for s in bridge.outbox.state.query("jobs/*")}
    last: dict[str, str] = {}
    for e in _lines(tmp_path / "fresh.jsonl"):
        assert e["sequence"] >= last.get(e["subject"], ""), e["subject"]
        last[e["subject"]] = e["sequence"]
    assert states == {f"jobs/j{j}": make_event(f"j{j}", 39)["sequence"] for j in range(8)} == last


def test_events_without_a_time_are_never_stale_and_never_replace_a_sequenced_state(tmp_path: Path) -> None:
    config = config_from_dict(_config(tmp_path))
    timed = make_event("j2", 5, state="succeeded")
    untimed = {k: v for k, v in make_event("j2", 1, state="running").items() if k not in ("time", "sequence")}
    with Bridge(config) as bridge:
        assert bridge.handle(orjson.dumps(timed)).stale == 0
        assert bridge.handle(orjson.dumps(untimed)).stale == 0
        stale = bridge.handle(orjson.dumps(make_event("j2", 1)))
        assert (stale.stale, stale.deliveries) == (1, 1)  # no stale_to: only the route without supersedence
        [state] = bridge.outbox.state.query("jobs/j2")
    assert state.id == timed["id"]


def test_retention_forgets_idle_subjects_and_a_route_ignores_older_state(tmp_path: Path) -> None:
    config = config_from_dict(_config(tmp_path, state_retention="1s"))
    assert config.routes[0].state_retention == 1.0 and config.routes[1].state_retention == DEFAULT_STATE_RETENTION
    newer, older = make_event("j3", 9), make_event("j3", 1)
    with Bridge(config) as bridge:
        bridge.handle(orjson.dumps(newer))
        time.sleep(1.1)  # the route's retention is what is under test: it has to pass
        assert bridge.handle(orjson.dumps(older)).stale == 0  # the route forgot j3
        assert bridge.forget_idle_subjects() == 0  # the other route keeps state for a week
        assert bridge.forget_idle_subjects(now=time.time() + DEFAULT_STATE_RETENTION + 1) == 1
        assert bridge.outbox.state.query() == []


@pytest.mark.parametrize(("route", "needle"), [
    ({"stale_to": "file:///tmp/x.jsonl", "supersede": False}, "only a route with supersede"),
    ({"supersede": "yes"}, "true or false"),
    ({"state_retention": "soon"}, "duration"),
    ({"state_retention": 0}, "more than zero"),
])
def test_bad_supersede_options_are_named(tmp_path: Path, route: dict, needle: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match=needle) as info:
        config_from_dict(_config(tmp_path, **route))
    assert "routes[0]" in str(info.value)
