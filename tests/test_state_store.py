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
    def stores(self, pg_url: str) -> Iterator[Opener]:
        from batchbridge.core.store_postgres import PostgresStore

        opened: list[PostgresStore] = []

        def open_store(**kw: Any) -> PostgresStore:
            s = PostgresStore(pg_url, **kw)
            opened.append(s)
            return s

        yield open_store
        for s in opened:
            s.close()
