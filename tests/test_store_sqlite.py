"""The store conformance suite on the SQLite outbox, claims included: leases on ordering keys in the
same file (``key_lease``), so the workers of ``serve --workers N`` share one outbox as PostgreSQL
replicas share one database."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from batchbridge.core.outbox import Outbox, OutboxRow
from batchbridge.core.outbox_disk import LOCK_FD_ENV, lock_file
from batchbridge.core.store import OutboxStore
from store_conformance import DEST, ClaimConformance, Opener, job_of, row


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


class TestSqliteOutboxOfWorkers(ClaimConformance):
    """The suite on store objects opened as the workers of one ``serve --workers N`` open them: each
    inherits the supervisor's lock on the file. There one worker at a time delivers a destination (the
    ``destination_lease``); the two tests of claimants sharing one destination say what that changes,
    every other invariant holds as it is."""

    @pytest.fixture
    def stores(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Opener]:
        path = tmp_path / "outbox.sqlite"
        Outbox(path).close()
        fd = lock_file(path)  # the supervisor's
        monkeypatch.setenv(LOCK_FD_ENV, str(fd))
        opened: list[Outbox] = []

        def open_store(**kw: Any) -> Outbox:
            s = Outbox(path, **kw)
            s.lock()
            opened.append(s)
            return s

        yield open_store
        for s in opened:
            s.close()
        os.close(fd)

    def test_an_ordering_key_is_owned_by_one_claimant(self, stores: Opener) -> None:
        a, b = stores(), stores()
        a.put([row("shared", 1), row("shared", 2), row("solo", 1)])
        got_a = a.claim(DEST, 1)
        assert [job_of(p) for p in got_a] == ["shared"]
        assert b.claim(DEST, 10) == [], "b claimed rows of a destination a delivers"
        a.settle(delivered=[got_a[0].seq])
        assert [job_of(p) for p in a.claim(DEST, 10)] == ["shared", "solo"]
        assert b.claim(DEST, 10) == []

    def test_claimants_share_the_work_without_breaking_any_key(self, stores: Opener) -> None:
        """One claimant delivers the destination; the others' claims get nothing while it does, and the
        first of them takes over once it has let go."""
        a, b, c = stores(), stores(), stores()
        a.put([row(f"job{k}", n) for n in range(2) for k in range(8)])  # a claims 5 of the 8 keys
        first = a.claim(DEST, 5)
        assert len(first) == 5 and b.claim(DEST, 100) == [] == c.claim(DEST, 100)
        a.settle(delivered=[p.seq for p in first])
        assert b.claim(DEST, 100) == [] == c.claim(DEST, 100), "a let go of the destination while delivering"
        a.release()
        taken = b.claim(DEST, 100)
        assert len(taken) == 11 and c.claim(DEST, 100) == []

    def test_a_destination_goes_to_another_worker_at_once_when_its_holder_is_gone(
            self, stores: Opener, tmp_path: Path) -> None:
        """A holder SIGKILLed leaves leases nobody renews: the next claim of another worker drops them (the
        destination's and the keys') instead of waiting out the lease -- a minute here."""
        a, b = stores(lease=60), stores(lease=60)
        seqs = a.put([row("k", 1), row("k", 2), row("other", 1)]).seqs
        assert [p.seq for p in a.claim(DEST, 1)] == seqs[:1]
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dead_owner = a.owner.replace(f":{os.getpid()}:", f":{gone}:")
        conn = sqlite3.connect(tmp_path / "outbox.sqlite", isolation_level=None)
        conn.execute("UPDATE key_lease SET owner = ?", (dead_owner,))
        conn.execute("UPDATE destination_lease SET owner = ?", (dead_owner,))
        conn.close()
        assert [p.seq for p in b.claim(DEST, 10)] == seqs, "the gone holder's leases were waited for"
        assert a.claim(DEST, 10) == [], "b holds the destination now"

    def test_an_alive_holder_past_its_lease_is_taken_over(self, stores: Opener) -> None:
        a, b = stores(lease=0.3), stores(lease=0.3)
        a.put([row("k", 1)])
        assert len(a.claim(DEST, 10)) == 1
        assert b.claim(DEST, 10) == []
        time.sleep(0.4)
        assert [job_of(p) for p in b.claim(DEST, 10)] == ["k"]


def test_a_store_opened_alone_does_not_take_destination_leases(tmp_path: Path) -> None:
    """One process (``serve`` without ``--workers``, tests, ``relay``): no ``destination_lease`` is written
    -- claimants on one file share a destination by its keys, as PostgreSQL replicas do."""
    with Outbox(tmp_path / "o.db") as a, Outbox(tmp_path / "o.db") as b:
        a.put([row("x", 1), row("y", 1)])
        assert len(a.claim(DEST, 1)) == 1 and len(b.claim(DEST, 10)) == 1
        conn = sqlite3.connect(tmp_path / "o.db")
        assert conn.execute("SELECT count(*) FROM destination_lease").fetchone()[0] == 0
        conn.close()


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
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
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
