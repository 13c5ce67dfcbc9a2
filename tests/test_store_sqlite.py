"""The store conformance suite on the SQLite outbox, claims included: leases on ordering keys in the
same file (``key_lease``), so the workers of ``serve --workers N`` share one outbox as PostgreSQL
replicas share one database."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from batchbridge.core.outbox import Outbox, OutboxRow
from batchbridge.core.store import OutboxStore
from store_conformance import DEST, ClaimConformance, Opener, row


class TestSqliteOutbox(ClaimConformance):
    @pytest.fixture
    def stores(self, tmp_path: Path) -> Iterator[Opener]:
        opened: list[Outbox] = []

        def open_store(**kw: Any) -> Outbox:
            s = Outbox(tmp_path / "outbox.sqlite", **kw)
            opened.append(s)
            return s

        yield open_store
        for s in opened:
            s.close()


def test_it_is_an_outbox_store(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as s:
        assert isinstance(s, OutboxStore)


def test_an_outbox_of_schema_1_gets_its_keys(tmp_path: Path) -> None:
    """An outbox left by the version before leases: its rows get their ordering keys on open, in order."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript("""
        PRAGMA journal_mode=WAL;
        CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, destination TEXT NOT NULL, event_id TEXT,
            event_type TEXT, body BLOB NOT NULL, created REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT);
        PRAGMA user_version = 1;""")
    for n, job in enumerate(["a", "b", "a"]):
        r = row(job, n)
        conn.execute("INSERT INTO outbox (destination, event_id, event_type, body, created) VALUES (?, ?, ?, ?, 0)",
                     (DEST, r.event_id, r.event_type, r.body))
    conn.execute("INSERT INTO outbox (destination, body, created) VALUES (?, ?, 0)", (DEST, b"not json"))
    conn.close()
    with Outbox(path) as a, Outbox(path) as b:
        got = a.claim(DEST, 1)
        assert [p.event_id for p in got] == ["a-0"]
        # b may not take a's key, but takes the others
        assert [p.event_id for p in b.claim(DEST, 10)] == ["b-1", None]
        assert [p.event_id for p in a.claim(DEST, 10)] == []  # a-2 waits behind a-0, in flight
        a.settle(delivered=[got[0].seq])
        assert [p.event_id for p in a.claim(DEST, 10)] == ["a-2"]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()


def test_idle_claimants_do_not_take_the_write_lock(tmp_path: Path) -> None:
    """A claim that finds nothing reads only: N idle workers polling must not queue on SQLite's one
    write lock (here another connection holds it, and the empty claim still answers at once)."""
    path = tmp_path / "o.db"
    with Outbox(path) as s:
        s.put([OutboxRow.of(DEST, {"id": "x", "data": orjson.loads(b'{"job": {"id": "k"}}')})])
        first = s.claim(DEST, 10)
        assert len(first) == 1
        blocker = sqlite3.connect(path, isolation_level=None, timeout=0.1)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            assert s.claim(DEST, 10) == []  # its only key is in flight here: nothing to lease
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
