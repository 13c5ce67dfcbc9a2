"""The outbox store on a real PostgreSQL server (``tests/pg_server.py``): the store conformance suite
with claims, then what only a networked database has -- restarts, URLs, passwords, schema versions."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pytest
from batchbridge.core.errors import ConfigError, MissingDependencyError
from batchbridge.core.outbox import OutboxError
from batchbridge.core.store import OutboxStore, StoreUnavailableError
from batchbridge.core.store_postgres import PostgresStore
from pg_server import PgServer
from store_conformance import DEST, OTHER, ClaimConformance, Opener, assert_typed, row, wait_for

ROOT = Path(__file__).resolve().parent.parent


class TestPostgresStore(ClaimConformance):
    @pytest.fixture
    def stores(self, pg_stores: Opener) -> Opener:
        return pg_stores


def test_it_is_an_outbox_store(pg_url: str) -> None:
    with PostgresStore(pg_url) as s:
        assert isinstance(s, OutboxStore)


def test_a_restart_is_survived(pg_server: PgServer, pg_url: str) -> None:
    with PostgresStore(pg_url) as s:
        s.put([row("k", 1)])
        pg_server.stop()
        try:
            for call in (lambda: s.claim(DEST, 10), lambda: s.put([row("k", 2)]), s.depth, s.dead_letter_count):
                with pytest.raises(StoreUnavailableError) as info:
                    call()
                assert info.value.retryable and info.value.code == "outbox_unavailable"
                assert "PostgreSQL is unavailable" in info.value.reason
        finally:
            pg_server.start()
        # the same store object carries on: new connections, the row from before, new intake
        s.put([row("k", 2)])
        assert [p.event_id for p in s.claim(DEST, 10)] == ["k-1", "k-2"]
        # a restart while idle too: the next call finds out and reconnects
        pg_server.restart()
        with pytest.raises(StoreUnavailableError):
            s.depth()  # the broken connection is found on use, and dropped
        assert s.depth() == 2


def test_the_listener_wakes_claimants_again_after_a_restart(pg_server: PgServer, pg_url: str) -> None:
    with PostgresStore(pg_url) as a, PostgresStore(pg_url) as b:
        b.wait(DEST, 0.01)
        pg_server.restart()
        # after reconnecting it listens again: a commit wakes it well before the timeout
        wait_for(lambda: b.wait(DEST, 0.05) is False, 10, "the listener to reconnect")
        a.put([row("k", 1)])
        assert b.wait(DEST, 5) is True


def test_a_killed_claimant_process_loses_its_keys_when_its_lease_expires(pg_url: str) -> None:
    child = textwrap.dedent(f"""
        import sys, time
        from batchbridge.core.store_postgres import PostgresStore
        s = PostgresStore({pg_url!r}, lease=1.0)
        got = s.claim({DEST!r}, 10)
        print(",".join(str(p.seq) for p in got), flush=True)
        time.sleep(60)
    """)
    with PostgresStore(pg_url, lease=1.0) as s:
        seqs = s.put([row("k", 1), row("k", 2)]).seqs
        proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == ",".join(map(str, seqs))
            assert s.claim(DEST, 10) == []
            proc.kill()
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        taken = wait_for(lambda: s.claim(DEST, 10), 10, "the dead claimant's lease to expire")
        assert [p.seq for p in taken] == seqs


def test_password_from_url_file_or_libpq_is_never_shown(pg_server: PgServer, pg_url: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    db = pg_url.rsplit("/", 1)[1]
    secret = "Pa55-w0rd-never-shown"
    with PostgresStore(pg_url.replace("bb@", f"bb:{secret}@")) as s:  # trust auth: accepted, unused
        assert secret not in repr(s) and "bb:***@" in s.where
        s.put([row("k", 1)])
    # a server that is down: the error names where, never the password
    bad = f"postgresql://bb:{secret}@127.0.0.1:1/{db}"
    with pytest.raises(StoreUnavailableError) as info:
        PostgresStore(bad)
    assert_typed(info.value, [secret])
    assert info.value.where is not None and "127.0.0.1:1" in info.value.where
    pw = tmp_path / "pgpass"
    pw.write_text(secret + "\n")
    with PostgresStore(f"{pg_url}?password_file={pw}") as s:
        assert s.depth() == 1 and secret not in repr(s)
    with pytest.raises(ConfigError, match="cannot read the password file"):
        PostgresStore(f"{pg_url}?password_file={tmp_path}/missing")
    monkeypatch.setenv("PGPASSWORD", "from-the-environment")
    with pytest.raises(StoreUnavailableError) as info:
        PostgresStore(bad.replace(f":{secret}", ""))
    assert_typed(info.value, ["from-the-environment"])


@pytest.mark.parametrize(("url", "message"), [
    ("mysql://bb@127.0.0.1:5432/db", "starts with postgresql://"),
    ("postgresql://bb@127.0.0.1:5432/", "names no database"),
    ("postgresql://bb@127.0.0.1:notaport/db", "not a PostgreSQL URL"),
])
def test_bad_urls_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PostgresStore(url)


def test_schema_is_versioned_and_a_newer_one_refused(pg_url: str) -> None:
    PostgresStore(pg_url).close()
    PostgresStore(pg_url).close()  # a second start (another replica) changes nothing
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(OutboxError, match="newer batchbridge"):
        PostgresStore(pg_url)


def test_replicas_starting_at_once_create_the_schema_once(pg_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: PostgresStore(pg_url), range(4)))
    for s in stores:
        s.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM schema_version").fetchone() == (1,)


def test_core_imports_without_psycopg() -> None:
    code = textwrap.dedent("""
        import sys
        sys.modules["psycopg"] = None  # as if not installed
        import batchbridge.core.store, batchbridge.core.store_postgres as sp
        try:
            sp.PostgresStore("postgresql://bb@127.0.0.1:5432/db")
        except Exception as exc:
            print(type(exc).__name__, exc)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(MissingDependencyError.__name__) and "batchbridge[postgres]" in done.stdout


def test_the_lease_upsert_decides_between_claimants_that_saw_a_key_free_at_once(pg_url: str) -> None:
    """The race the claim's first step cannot see: another claimant's lease on the key, not yet
    committed when this claim picked its candidates. The upsert waits for it and must then leave
    the key alone."""
    import threading

    with PostgresStore(pg_url) as b:
        b.put([row("K", 1)])
        other = psycopg.connect(pg_url)
        try:
            other.execute("INSERT INTO key_lease (destination, okey, owner, expires) "
                          "VALUES (%s, 'K', 'another-replica', now() + interval '30 seconds')", (DEST,))
            got: list[Any] = []
            t = threading.Thread(target=lambda: got.append(b.claim(DEST, 10)))
            t.start()
            with psycopg.connect(pg_url, autocommit=True) as watch:
                wait_for(lambda: watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = "
                    "current_database()").fetchone() == (1,), 10, "the claim to wait for the other lease")
            other.commit()
            t.join(10)
        finally:
            other.close()
        assert got == [[]], "the claim took a key another claimant had just leased"


def test_rows_any_writer_inserts_wake_the_claimants(pg_url: str) -> None:
    with PostgresStore(pg_url) as b:
        b.wait(DEST, 0.01)
        wait_for(lambda: b.wait(DEST, 0.05) is False, 10, "the listener to settle")
        with psycopg.connect(pg_url, autocommit=True) as other:  # e.g. a replay from another tool
            other.execute("INSERT INTO outbox (destination, okey, body) VALUES (%s, 'k', '{}')", (DEST,))
        assert b.wait(DEST, 5) is True
        assert b.wait(OTHER, 0.05) is False, "a commit to one destination woke another's claimants"


def test_dead_letters_and_backlog_are_shared_and_bounded_over_all_replicas(pg_url: str) -> None:
    from batchbridge.core.outbox import INTAKE, DeadLetter

    with PostgresStore(pg_url) as a, PostgresStore(pg_url) as b:
        a.put([row("k", 1), row("k", 2), row("j", 1, OTHER)],
              [DeadLetter(INTAKE, "api", "invalid_event", f"bad {n}", b"x" * 100) for n in range(3)])
        assert b.dead_letter_count() == 3 and [d.reason for d in b.dead_letters()] == ["bad 0", "bad 1", "bad 2"]
        backlog = b.backlog()
        assert (backlog[DEST].rows, backlog[OTHER].rows) == (2, 1) and backlog[DEST].oldest is not None
        [claimed, _] = b.claim(DEST, 10)
        assert a.backlog()[DEST].leased_keys == 1  # b's lease, seen by a
        b.settle(retry=[(claimed.seq, "destination down")])
        heads = {h.destination: h for h in a.heads()}
        assert (heads[DEST].rows, heads[DEST].attempts, heads[DEST].last_error) == (2, 1, "destination down")
        assert heads[OTHER].rows == 1 and heads[OTHER].oldest_age >= 0
        # the bounds count every replica's dead letters
        b.dead_letter_max_rows = 4
        assert b.dead_letter_refusal(10) is None  # the fourth
        assert "full (4 of 4 rows" in (b.dead_letter_refusal(10) or "")
        c = PostgresStore(pg_url)
        try:
            c.dead_letter_max_bytes = 350
            assert "KiB, outbox.dead_letter_max_bytes" in (c.dead_letter_refusal(51) or "")
            assert c.dead_letter_refusal(50) is None
        finally:
            c.close()
        assert a.purge() == 3 and b.dead_letter_count() == 0


def test_replicas_expiring_at_once_move_each_row_once(pg_url: str) -> None:
    with PostgresStore(pg_url) as a, PostgresStore(pg_url) as b:
        a.put([row(f"k{n}", n) for n in range(50)])
        assert a.expire(3600, "too old") == []
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("UPDATE outbox SET created = created - 7200, last_error = 'down'")
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:
            moved = [m for f in [pool.submit(s.expire, 3600, "too old") for s in (a, b)] for m in f.result()]
        assert sorted(m.event_id or "" for m in moved) == sorted(f"k{n}-{n}" for n in range(50))
        assert a.depth() == 0 and b.dead_letter_count() == 50
        [first] = a.dead_letters(limit=1)
        assert first.code == "pending_too_long" and first.reason == "too old; last error: down"


def test_unwritable_says_why_while_the_server_is_down(pg_server: PgServer, pg_url: str) -> None:
    with PostgresStore(pg_url) as s:
        assert s.unwritable() is None
        pg_server.stop()
        try:
            assert "PostgreSQL is unavailable" in (s.unwritable() or "")
        finally:
            pg_server.start()
        wait_for(lambda: s.unwritable() is None, 10, "the store to reconnect")
