"""The store conformance suite on today's SQLite outbox: the parts it supports (intake, fetch/settle,
dead letters). It has no leases yet -- one process publishes from one file, under a lock -- so the
claim tests (``ClaimConformance``) are not collected here; ``serve --workers N`` brings them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from batchbridge.core.outbox import Outbox, Pending
from store_conformance import Opener, StoreConformance


class _SqliteClaims(Outbox):  # type: ignore[misc]  # mypy run on tests/ sees batchbridge as untyped
    """``claim`` is today's ``fetch`` (the file lock makes this process the only claimant)."""

    def claim(self, destination: str, limit: int) -> list[Pending]:
        return list(self.fetch(destination, limit))


class TestSqliteOutbox(StoreConformance):
    @pytest.fixture
    def stores(self, tmp_path: Path) -> Iterator[Opener]:
        opened: list[Outbox] = []

        def open_store(**_: Any) -> Outbox:
            s = _SqliteClaims(tmp_path / "outbox.sqlite")
            opened.append(s)
            return s

        yield open_store
        for s in opened:
            s.close()
