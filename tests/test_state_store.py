"""The subject-state conformance suite (``tests/state_conformance.py``) on the SQLite outbox and on
PostgreSQL (a real server, ``tests/pg_server.py``): the same tests, the same expectations."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from batchbridge.core.outbox import Outbox
from state_conformance import Opener, StateConformance


class TestSqliteState(StateConformance):
    @pytest.fixture
    def stores(self, tmp_path: Path) -> Iterator[Opener]:
        opened: list[Outbox] = []

        def open_store(**_: Any) -> Outbox:
            s = Outbox(tmp_path / "outbox.sqlite")
            opened.append(s)
            return s

        yield open_store
        for s in opened:
            s.close()


class TestPostgresState(StateConformance):
    @pytest.fixture
    def stores(self, pg_stores: Opener) -> Opener:
        return pg_stores


def test_a_bridge_on_postgresql_keeps_stale_events_from_supersede_routes(pg_url: str, tmp_path: Path) -> None:
    """The whole path: config -> store factory -> the bridge's gate -> the PostgreSQL state store."""
    import orjson
    from batchbridge.core.bridge import Bridge
    from batchbridge.core.config import config_from_dict
    from conformance import make_trusted_event

    config = config_from_dict({"outbox": {"url": pg_url}, "routes": [
        {"name": "fresh", "to": f"file://{tmp_path}/fresh.jsonl", "supersede": True,
         "stale_to": f"file://{tmp_path}/stale.jsonl"},
        {"name": "all", "to": f"file://{tmp_path}/all.jsonl"}]})
    pending, running, succeeded = (make_trusted_event("pg1", 0, state=s) for s in ("pending", "running", "succeeded"))
    with Bridge(config) as bridge:
        assert type(bridge.outbox).__name__ == "PostgresStore"
        assert [bridge.handle(orjson.dumps(e)).stale for e in (pending, succeeded, running)] == [0, 0, 1]
        assert bridge.drain(20)
        [state] = bridge.state.query("jobs/pg1")  # type: ignore[union-attr]

    def ids(name: str) -> list[str]:
        return [orjson.loads(line)["id"] for line in (tmp_path / name).read_bytes().splitlines()]

    assert ids("fresh.jsonl") == [pending["id"], succeeded["id"]] and ids("stale.jsonl") == [running["id"]]
    assert len(ids("all.jsonl")) == 3 and state.state == "succeeded"
