"""The durable local outbox between intake and publishing, and the dead-letter store beside it: the
SQLite store itself (schema, connections, claims with leases, settling, dead letters). Its parts live
beside it: the row types (``outbox_rows``), the group committer (``outbox_commit``), the disk and file
checks (``outbox_disk``), the dead-letter bounds (``dead_letters``).

One SQLite file in WAL mode (stdlib ``sqlite3``) holds two tables:

``outbox``
    one row per (event, destination). Intake inserts the rows; a row is deleted only after its
    backend confirmed the event, so one event routed to two backends is delivered to each
    independently, and a restart resumes with whatever is left.
``dead_letter``
    what could not be delivered, kept with its raw payload (bytes) and the typed error's code,
    reason and location: undecodable input, unrouted events (when so configured), and events a
    backend refused permanently.

Durability: intake goes through one committer thread that groups every request waiting at that
moment into one transaction (group commit), on a connection with ``synchronous=FULL`` -- in WAL mode
that fsyncs the log on each commit, so an acknowledged event survives a power cut, not only a crash
of the process (a worker of ``serve --workers N`` commits with NORMAL and syncs the WAL itself after
the file's write lock is let go, before answering: :meth:`Outbox.share_writer`). The publisher side
deletes delivered rows with ``synchronous=NORMAL``: losing such a
delete to a power cut means a redelivery with the same event id, never a loss. ``docs/bridge.md``
has the measured cost of FULL against NORMAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

from .dead_letters import DEAD_LETTER_MAX_BYTES, DEAD_LETTER_MAX_ROWS, DeadLetterBounds
from .errors import BatchBridgeError, ConfigError
from .outbox_commit import (
    _ROWS_PER_STATEMENT,
    Gate,
    _Committer,
    _delete_rows,
    _Insert,
    _insert_dead,
)
from .outbox_disk import (
    DISK_RESERVE,
    PAGE_CACHE_KIB,
    ROOM_FILE_SHARE,
    WAL_SIZE_LIMIT,
    DiskFullError,
    WalSync,
    WriterLock,
    _is_damage,
    _make_room,
    _Watch,
    _write_failed,
    inherited_lock,
    is_disk_full,
    keep_room,
    lock_file,
)
from .outbox_rows import (
    _DL_COLUMNS,
    INTAKE,
    PUBLISH,
    UNROUTED,
    DeadLetter,
    DeadLetterRecord,
    Inserted,
    OutboxError,
    OutboxRow,
    Pending,
    PendingTooLongError,
    _record,
    row_key,
)
from .secrets import redact, redact_uri
from .state import SqliteStateStore, StateStore
from .store import IDLE_WAIT, LEASE
from .store import Backlog as StoreBacklog

log = logging.getLogger("batchbridge.outbox")

# the row types moved to ``outbox_rows``; importing them from here keeps working
__all__ = [
    "DEAD_LETTER_MAX_BYTES",
    "DEAD_LETTER_MAX_ROWS",
    "DISK_RESERVE",
    "INTAKE",
    "PUBLISH",
    "SYNC_LEVELS",
    "UNROUTED",
    "WAL_SIZE_LIMIT",
    "_DL_COLUMNS",
    "DeadLetter",
    "DeadLetterRecord",
    "Gate",
    "Inserted",
    "Outbox",
    "OutboxError",
    "OutboxRow",
    "Pending",
    "PendingTooLongError",
    "_Committer",
    "_record",
    "is_disk_full",
]

T = TypeVar("T")

#: 2: rows carry their ordering key (``okey``) and ``key_lease`` holds the claims on keys;
#: 3: ``destination_lease``: which worker of a ``serve --workers N`` delivers a destination
SCHEMA_VERSION = 3
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT    NOT NULL,
    event_id    TEXT,
    event_type  TEXT,
    body        BLOB    NOT NULL,
    created     REAL    NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    okey        TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS outbox_by_destination ON outbox (destination, seq);
CREATE TABLE IF NOT EXISTS key_lease (
    destination TEXT NOT NULL,
    okey        TEXT NOT NULL,
    owner       TEXT NOT NULL,
    expires     REAL NOT NULL,
    PRIMARY KEY (destination, okey)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS destination_lease (
    destination TEXT NOT NULL PRIMARY KEY,
    owner       TEXT NOT NULL,
    expires     REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letter (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    created     REAL    NOT NULL,
    stage       TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    destination TEXT,
    event_id    TEXT,
    code        TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    location    TEXT,
    payload     BLOB    NOT NULL,
    meta        TEXT,
    attempts    INTEGER NOT NULL DEFAULT 1
);
"""

#: how often an idle claimant looks whether another connection committed (``Outbox.wait``): one
#: ``PRAGMA`` read, no lock
WAKE_POLL = 0.05

#: delivered rows deleted per transaction when a settle's one transaction found the disk full
_SETTLE_PIECE = 25


@dataclass(frozen=True, slots=True)
class Backlog:
    """What waits for one destination (``batchbridge status``, the backlog gauges, ``/readyz``)."""

    destination: str
    rows: int
    oldest_age: float
    attempts: int
    last_error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"destination": redact_uri(self.destination), "rows": self.rows,
                "oldest_age_seconds": round(self.oldest_age, 3), "attempts": self.attempts,
                "last_error": redact(self.last_error) if self.last_error else None}


class Outbox:
    """The SQLite outbox + dead-letter store. Thread-safe: each thread gets its own connection."""

    def __init__(self, path: str | Path, *, synchronous: str = "full", busy_timeout: float = 30.0,
                 reserve_bytes: int = DISK_RESERVE, lease: float = LEASE) -> None:
        if lease <= 0:
            raise ConfigError(f"the lease must be positive, got {lease}", where="[outbox] lease")
        self.path = Path(path)
        self._where = str(self.path)
        #: where the store is, for messages (``core/store.py``)
        self.where = self._where
        self.reserve_bytes = reserve_bytes
        #: bounds of the dead-letter store (see :meth:`dead_letter_refusal`)
        self.dead_letter_max_rows = DEAD_LETTER_MAX_ROWS
        self.dead_letter_max_bytes = DEAD_LETTER_MAX_BYTES
        self._dl_bounds = DeadLetterBounds(self.dead_letter_usage, room=self._disk_room)
        self._last_squeeze = 0.0
        self._room_ok_until = 0.0
        self._intake_sync = synchronous.upper()
        if self._intake_sync not in ("FULL", "NORMAL"):
            raise ConfigError(f"synchronous must be full or normal, got {synchronous!r}", where=self._where)
        self._busy_ms = int(busy_timeout * 1000)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._closed = False
        #: seconds a claim holds its keys without ``claim``/``renew``/``settle`` (``core/store.py``)
        self.lease = lease
        #: who holds a lease: unique per store object (one per worker process), readable in the file
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._inflight: dict[int, tuple[str, str]] = {}  # seq -> (destination, key): claimed, unsettled
        self._inflight_lock = threading.Lock()
        self._leased = False
        #: set by :meth:`lock` in a worker of ``serve --workers N``: one worker at a time delivers each
        #: destination (``destination_lease``), see :meth:`_delivers`
        self._one_deliverer = False
        self._wakes: dict[str, threading.Event] = {}
        self._create()
        keep_room(self.path, self.reserve_bytes // ROOM_FILE_SHARE)
        self._watch: _Watch | None = None
        #: the latest event per subject, in this file (``core/state.py``)
        self.state: StateStore = SqliteStateStore(self._read, self._write)
        #: one writer at a time, in this process and across the workers sharing the file
        self._write_lock = WriterLock(self.path, busy_timeout)
        #: set by :meth:`share_writer`: intake (FULL) commits with NORMAL and syncs the WAL after the lock
        self._wal_sync: WalSync | None = None
        #: whether the committer's connection was opened so (then each of its commits is synced)
        self._syncs_after_commit = False
        self._committer = _Committer(self._intake_connection, self._where, self._no_room, self._gone,
                                     self._write_lock, self._sync_wal)
        self._committer.listeners.append(self._woken)

    # --- connections -----------------------------------------------------------------------------

    def _create(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # the file holds destination URIs (which may carry credentials) and raw payloads
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
            os.close(fd)
        except OSError as exc:
            raise OutboxError(f"cannot create the outbox: {exc.strerror or exc}", where=self._where) from None
        conn = self._connect("FULL")
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(f"SQLite refused WAL mode (got {mode}); put the outbox on a local disk",
                                  where=self._where)
            # a damaged file must stop the start with a clear message, not fail later on a random row
            # (quick_check reads every page once: O(size), milliseconds for a drained outbox)
            problems = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                raise self._damaged(problems[0])
            conn.executescript(_SCHEMA)
            _add_keys(conn)
            SqliteStateStore.create(conn)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version > SCHEMA_VERSION:
                raise OutboxError(f"the outbox was written by a newer batchbridge (schema {version})",
                                  where=self._where)
        except sqlite3.DatabaseError as exc:
            if _is_damage(exc):
                raise self._damaged(str(exc)) from None
            raise OutboxError(f"cannot open the outbox: {exc}", where=self._where) from None
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot open the outbox: {exc}", where=self._where) from None
        finally:
            conn.close()

    def share_writer(self) -> None:
        """Other processes write this file all the time (the workers of ``serve --workers N``): with
        ``synchronous = "full"``, the WAL's fsync is made after the file's write lock is let go, so that
        they do not wait for it -- each worker's commits still answer no request before it
        (:class:`WalSync`). One process alone keeps the COMMIT's own fsync: its only other writer is its
        delivery thread, and a sync of its own would cost the committer one more wait for the GIL per
        group. Takes effect for a committer not yet started (before the first intake)."""
        if self._intake_sync == "FULL" and self._wal_sync is None:
            self._wal_sync = WalSync(self.path)

    def _intake_connection(self) -> sqlite3.Connection:
        """The committer's connection (opened on its thread, at the first intake)."""
        self._syncs_after_commit = self._wal_sync is not None
        return self._connect("NORMAL" if self._syncs_after_commit else self._intake_sync)

    def _sync_wal(self) -> None:
        if self._syncs_after_commit:
            assert self._wal_sync is not None
            self._wal_sync()

    def _no_room(self, conn: sqlite3.Connection) -> str | None:
        """Why intake must wait for room (None when there is enough): less than ``reserve_bytes`` left
        for the outbox (see :meth:`_room`)."""
        if self.reserve_bytes <= 0:
            return None
        now = time.monotonic()
        if now < self._room_ok_until:
            return None
        free = self._room(conn)
        if free is None or free >= self.reserve_bytes:
            if free is not None and free >= 4 * self.reserve_bytes:
                # plenty: no intake burst eats three reserves in a quarter of a second, so the next
                # commits skip the four system calls (each one a GIL hand-over under load)
                self._room_ok_until = now + 0.25
                keep_room(self.path, self.reserve_bytes // ROOM_FILE_SHARE)  # given up on a full disk: back
            return None
        if now - self._last_squeeze >= 1.0:
            # once the outbox has drained, what keeps the disk full is mostly the WAL, which keeps its size
            # after a checkpoint: truncating it gives the room back (tried at most once a second, and
            # without waiting for readers, so a refused request stays cheap)
            self._last_squeeze = now
            _make_room(conn, wait=0.3)
            free = self._room(conn)
            if free is None or free >= self.reserve_bytes:
                return None
        return (f"the disk holding the outbox is nearly full ({free // 1024} KiB left; {self.reserve_bytes // 1024} "
                "KiB are kept for delivering what the outbox already holds): nothing more is accepted until "
                "there is room again")

    def _low(self, conn: sqlite3.Connection) -> bool:
        """Less than ``reserve_bytes`` left (:meth:`_room`), without trying to make room: usable inside a
        transaction, where no checkpoint can run."""
        if self.reserve_bytes <= 0:
            return False
        free = self._room(conn)
        return free is not None and free < self.reserve_bytes

    def _room(self, conn: sqlite3.Connection) -> int | None:
        """Bytes the outbox can still use: free disk space, less what the next checkpoint will take to
        copy new pages out of the WAL (a checkpoint that cannot grow the file can never shrink the WAL:
        the outbox would stay full for good), plus the free pages inside the file, which new rows reuse."""
        try:
            st = os.statvfs(self.path.parent)
            wal = os.stat(f"{self.path}-wal").st_size if os.path.exists(f"{self.path}-wal") else 0
            physical = os.stat(self.path).st_size
        except OSError:
            return None  # no figure to go by: SQLITE_FULL still stops intake when it comes to that
        free = st.f_bavail * st.f_frsize
        if free - wal >= self.reserve_bytes:
            return free - wal  # the checkpoint's growth is at most the WAL's size: plenty of room
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        unused = conn.execute("PRAGMA freelist_count").fetchone()[0]
        growth = max(0, pages * page - physical)
        reusable = min(unused * page, max(0, physical - (pages - unused) * page))
        return int(free - growth + reusable)

    def _damaged(self, detail: str) -> OutboxError:
        return OutboxError(
            f"the outbox file is damaged or is not an outbox ({detail[:200]}); nothing was read from it. Move it "
            "aside (its rows can often be salvaged with `sqlite3 FILE .recover`) and start with a new outbox "
            "path", where=self._where)

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=self._busy_ms / 1000,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            conn.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB}")
        except sqlite3.DatabaseError as exc:
            if _is_damage(exc):
                raise self._damaged(str(exc)) from None
            raise OutboxError(f"cannot open the outbox: {exc}", where=self._where) from None
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot open the outbox: {exc}", where=self._where) from None
        return conn

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection for reads and publisher-side writes (``synchronous=NORMAL``)."""
        if self._closed:
            raise OutboxError("the outbox is closed", where=self._where)
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect("NORMAL")
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._conn().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox read failed: {exc}", where=self._where, retryable=True) from None

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn()
        try:
            return self._write_once(conn, work)
        except sqlite3.Error as exc:
            if not is_disk_full(exc):
                raise _write_failed("outbox write failed", exc, self._where) from None
        # a full disk: the deletes of delivered rows are what frees it, so they get room first
        _make_room(conn)
        try:
            return self._write_once(conn, work)
        except sqlite3.Error as exc:
            raise _write_failed("outbox write failed", exc, self._where) from None

    def _write_once(self, conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._write_lock:
            return self._transaction(conn, work)

    @staticmethod
    def _transaction(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
            conn.execute("COMMIT")
        except BaseException:
            # a failed COMMIT (SQLITE_FULL) leaves the transaction open: every later BEGIN on this
            # thread's connection would fail until it is rolled back
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return result

    def lock(self) -> None:
        """Claim the outbox for this process's delivery (or, in a worker of ``serve --workers N``, for its
        group): an unrelated second bridge on the file is refused, so that outboxes are not shared by
        accident (two bridges with different routes on one file would each deliver the other's rows).

        The lock is taken on the outbox file itself (``flock``, which SQLite's own POSIX locks do not
        touch), so it belongs to the file, not to its name: a second bridge reaching the same file
        through a hard link or a symlink is refused like one on the same path. Then the file is
        watched (:meth:`watch`)."""
        if self._lock_fd is not None:
            return
        inherited = inherited_lock(self.path)
        if inherited is not None:
            # a worker of ``serve --workers N``: its supervisor holds the lock for the group
            # (``core/serve_workers.py``); the leases in the file share the rows among the workers
            self._lock_fd = os.dup(inherited)
            self.share_writer()
            self._one_deliverer = True
            self._reap_dead_leases()
            self.watch()
            return
        self._lock_fd = lock_file(self.path)
        self._reap_dead_leases()
        self.watch()

    def _reap_dead_leases(self) -> None:
        """Give up the leases of processes on this host that are gone (a bridge or worker SIGKILLed):
        one host shares a SQLite file, so a lease whose owner's pid is dead will never be renewed, and its
        keys need not wait out the lease (30 s by default) before this process delivers them."""
        try:
            owners = [r[0] for r in self._read("SELECT owner FROM key_lease UNION SELECT owner FROM destination_lease")]
        except OutboxError:
            return
        dead = [owner for owner in owners if _gone(owner)]
        if dead:
            with contextlib.suppress(OutboxError):
                self._write(lambda conn: _drop_leases(conn, dead))
            log.info("released the leases of %d gone process(es) on this outbox", len(dead))

    def watch(self) -> None:
        """Check, every :data:`WATCH_INTERVAL` seconds and before each commit group is acknowledged, that
        the outbox file and its WAL are still the ones this process opened (device and inode) and were
        not cut short. Once one is deleted, replaced or truncated, intake is refused for good
        (:attr:`broken` says why, logged once at CRITICAL): acknowledging events into a file that no
        longer exists would lose every one of them."""
        if self._watch is not None or self._closed:
            return
        # a connection held open for the watch's life keeps the WAL in place (SQLite deletes it when
        # the last connection closes), so that its identity means something
        anchor = self._connect("NORMAL")
        try:
            anchor.execute("SELECT count(*) FROM sqlite_master").fetchall()
        except sqlite3.Error as exc:
            anchor.close()
            raise OutboxError(f"cannot read the outbox: {exc}", where=self._where) from None
        self._watch = _Watch(self.path, anchor)
        self._watch.start()

    @property
    def broken(self) -> str | None:
        """Why this outbox can no longer be trusted (file deleted, replaced, truncated); None while it can."""
        return self._watch.broken if self._watch is not None else None

    def unwritable(self) -> str | None:
        """Why intake cannot be written now (the file gone, the disk full), None when it can (``/readyz``)."""
        gone = self._gone() or self.broken
        if gone is not None:
            return gone
        try:
            return self._no_room(self._conn())
        except sqlite3.Error as exc:
            return f"the outbox cannot be read: {exc}"

    def _gone(self) -> str | None:
        return self._watch.check() if self._watch is not None else None

    def close(self) -> None:
        if self._closed:
            return
        self._committer.close()
        with contextlib.suppress(BatchBridgeError):
            self.release()  # others take this worker's keys at once, not when the lease runs out
        self._closed = True
        if self._watch is not None:
            self._watch.stop()
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._write_lock.close()
        if self._wal_sync is not None:
            self._wal_sync.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def group_commit_stats(self) -> tuple[int, int]:
        """(transactions, requests) committed by the intake committer so far."""
        return self._committer.commits, self._committer.requests

    # --- intake (group-committed, FULL) ------------------------------------------------------------

    def submit(self, rows: Sequence[OutboxRow], dead: Sequence[DeadLetter] = (),
               gate: Gate | None = None) -> Future[Inserted]:
        """Queue rows and dead letters for the next group commit; the future resolves once they are
        durable, to their seqs and the new dead-letter ids. With a ``gate``, the rows are the ones it
        picks once :attr:`state` has observed its events, in the same transaction."""
        return self._committer.submit(_Insert(rows, dead, gate=gate, state=self.state))

    def put(self, rows: Sequence[OutboxRow], dead: Sequence[DeadLetter] = (), gate: Gate | None = None) -> Inserted:
        """:meth:`submit` and wait: returns once the rows are committed."""
        return self.submit(rows, dead, gate).result()

    def asubmit(self, rows: Sequence[OutboxRow], dead: Sequence[DeadLetter] = (),
                gate: Gate | None = None) -> asyncio.Future[Inserted]:
        """:meth:`submit` for asyncio (call it on the running loop): an awaitable future, and no thread
        hop per request -- the whole group's waiters are woken at once."""
        return self._committer.submit_async(_Insert(rows, dead, gate=gate, state=self.state),
                                            asyncio.get_running_loop())

    def on_commit(self, listener: Callable[[list[tuple[int, OutboxRow]]], None]) -> None:
        """Call ``listener`` on the committer thread after every intake commit, with the (seq, row) pairs
        that commit wrote, in seq order (the bridge hands them to its publishers in memory). They
        run before this store's own wake-up of idle claimants, so a woken claimant finds what they prepared."""
        self._committer.listeners.insert(len(self._committer.listeners) - 1, listener)

    # --- publisher side ----------------------------------------------------------------------------

    def destinations(self) -> list[str]:
        return [r[0] for r in self._read("SELECT DISTINCT destination FROM outbox")]

    def fetch(self, destination: str, limit: int) -> list[Pending]:
        rows = self._read(
            "SELECT seq, destination, event_id, body, attempts FROM outbox WHERE destination = ? "
            "ORDER BY seq LIMIT ?", (destination, limit))
        return [Pending(seq, dest, eid, bytes(body), attempts) for seq, dest, eid, body, attempts in rows]

    # --- claims (``core/store.py``): leases on ordering keys, in the same file -------------------------

    def claim(self, destination: str, limit: int) -> list[Pending]:
        """Up to ``limit`` rows for ``destination`` in seq order, each of a key this store object now
        leases (see :mod:`batchbridge.core.store` for the invariants). Keys with rows in flight here are
        left out whole, so a retried row goes out before the rows behind it and nothing goes out twice.
        Every process opening the file takes the write lock for the lease (``BEGIN IMMEDIATE``), which
        serialises claimants; leases are timed by this host's clock, the one all of them share."""
        if limit <= 0:
            return []
        with self._inflight_lock:
            busy = sorted({k for d, k in self._inflight.values() if d == destination})
        candidates, work = self._claim_work(destination, limit, busy)
        # a look without the write lock first: idle claimants of N workers must not queue on it
        try:
            conn = self._conn()
            if not self._delivers(conn, destination, take=False) or not candidates(conn):
                return []
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox read failed: {exc}", where=self._where, retryable=True) from None
        return self._claimed(self._write(work))

    def _claimed(self, claimed: list[tuple[Pending, str]]) -> list[Pending]:
        with self._inflight_lock:
            self._leased = True
            for p, k in claimed:
                self._inflight[p.seq] = (p.destination, k)
        return [p for p, _ in claimed]

    def _claim_work(self, destination: str, limit: int, busy: Sequence[str]) -> tuple[
            Callable[[sqlite3.Connection], list[str]], Callable[[sqlite3.Connection], list[tuple[Pending, str]]]]:
        """(the keys with rows to claim now, the claim's transaction) -- see :meth:`claim`."""
        not_busy = f"AND okey NOT IN ({', '.join('?' * len(busy))}) " if busy else ""
        # every statement here answers in one row (JSON built by SQLite): sqlite3 lets go of the GIL
        # around each step, and under load each step taken back waits for the event loop thread
        pick = ("SELECT json_group_array(okey) FROM (SELECT DISTINCT okey FROM (SELECT okey FROM outbox o "
                "WHERE destination = ? " + not_busy +
                "AND NOT EXISTS (SELECT 1 FROM key_lease l WHERE l.destination = o.destination AND l.okey = o.okey "
                "AND l.owner <> ? AND l.expires > ?) ORDER BY seq LIMIT ?))")

        def candidates(conn: sqlite3.Connection) -> list[str]:
            found = conn.execute(pick, [destination, *busy, self.owner, time.time(), limit]).fetchone()[0]
            return sorted(orjson.loads(found))

        def work(conn: sqlite3.Connection) -> list[tuple[Pending, str]]:
            if not self._delivers(conn, destination, take=True):
                return []
            keys = candidates(conn)  # again, under the lock: another claimant may have come first
            if not keys:
                return []
            now = time.time()
            expires = now + self.lease
            # keys this store already leases for more than half the lease are not written again: while a
            # destination is down the same keys are claimed every backoff, and each rewrite would only
            # grow the WAL (on a nearly full disk, into the room kept for the deletes)
            fresh = {k for (k,) in conn.execute(
                "SELECT okey FROM key_lease WHERE destination = ? AND owner = ? AND expires > ?",
                (destination, self.owner, now + self.lease / 2))}
            stale = [k for k in keys if k not in fresh]
            for start in range(0, len(stale), _ROWS_PER_STATEMENT):
                chunk = stale[start:start + _ROWS_PER_STATEMENT]
                conn.execute("INSERT INTO key_lease (destination, okey, owner, expires) VALUES "
                             + ", ".join(["(?, ?, ?, ?)"] * len(chunk)) +
                             " ON CONFLICT (destination, okey) DO UPDATE SET owner = excluded.owner, "
                             "expires = excluded.expires",
                             [v for k in chunk for v in (destination, k, self.owner, expires)])
            # the head of each key: the oldest rows, whatever the candidates were
            found = conn.execute(
                "SELECT json_group_array(json_array(seq, event_id, attempts, okey, hex(body))) FROM (SELECT * FROM "
                f"outbox WHERE destination = ? AND okey IN ({', '.join('?' * len(keys))}) ORDER BY seq LIMIT ?)",
                [destination, *keys, limit]).fetchone()[0]
            rows = sorted(orjson.loads(found))
            return [(Pending(int(s), destination, e, bytes.fromhex(b), int(a)), k) for s, e, a, k, b in rows]

        return candidates, work

    def _delivers(self, conn: sqlite3.Connection, destination: str, *, take: bool) -> bool:
        """Whether this store object may claim ``destination``'s rows now. Always, except in a worker of
        ``serve --workers N``: there one worker at a time delivers each destination (the
        ``destination_lease``, renewed with the key leases), because the workers share one host's cores
        and its disk, and every batch costs a file sync at the destination and a transaction here
        whatever its size -- N workers each delivering a share sent N times as many batches, each 1/N
        the size. The others take over when it stops (its leases are given back) or dies: a holder
        whose pid is gone on this host is dropped at the next claim, its key leases with it, and one
        that is silent past its lease loses it like any lease. With ``take`` (under the write lock,
        about to claim) the lease is taken or extended."""
        if not self._one_deliverer:
            return True
        now = time.time()
        row = conn.execute("SELECT owner, expires FROM destination_lease WHERE destination = ?",
                           (destination,)).fetchone()
        if row is not None and row[0] != self.owner and row[1] > now:
            if not _gone(row[0]):
                return False
            if take:  # the holder died: its rows are not waited for until its leases run out
                _drop_leases(conn, [row[0]])
        if take and (row is None or row[0] != self.owner or row[1] < now + self.lease / 2):
            conn.execute("INSERT INTO destination_lease (destination, owner, expires) VALUES (?, ?, ?) "
                         "ON CONFLICT (destination) DO UPDATE SET owner = excluded.owner, expires = excluded.expires",
                         (destination, self.owner, now + self.lease))
        return True

    def renew(self) -> None:
        """Extend the lease on every key (and destination) this store object holds."""
        if self._leased:
            expires = time.time() + self.lease

            def work(conn: sqlite3.Connection) -> None:
                conn.execute("UPDATE key_lease SET expires = ? WHERE owner = ?", (expires, self.owner))
                conn.execute("UPDATE destination_lease SET expires = ? WHERE owner = ?", (expires, self.owner))

            self._write(work)

    def release(self) -> None:
        """Give back every key this store object holds (a clean stop): others take them at once."""
        with self._inflight_lock:
            self._inflight.clear()
            leased, self._leased = self._leased, False
        if leased:
            self._write(lambda conn: _drop_leases(conn, [self.owner]))

    def wait(self, destination: str, timeout: float = IDLE_WAIT) -> bool:
        """Block until rows for ``destination`` may have come (True) or ``timeout`` passes (False): woken
        at once by this object's own commits, and within :data:`WAKE_POLL` by any other connection's
        (``PRAGMA data_version`` changes with every commit made elsewhere: other workers, ``dlq replay``)."""
        with self._inflight_lock:
            wake = self._wakes.setdefault(destination, threading.Event())
        deadline = time.monotonic() + timeout
        try:
            conn = self._conn()
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                if wake.wait(min(remaining, WAKE_POLL)):
                    wake.clear()
                    return True
                if conn.execute("PRAGMA data_version").fetchone()[0] != version:
                    return True
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox read failed: {exc}", where=self._where, retryable=True) from None

    def _woken(self, committed: list[tuple[int, OutboxRow]]) -> None:
        with self._inflight_lock:
            for d in {row.destination for _, row in committed}:
                self._wakes.setdefault(d, threading.Event()).set()

    def settle(self, delivered: Iterable[int] = (), retry: Iterable[tuple[int, str]] = (),
               dead: Iterable[tuple[int, DeadLetter]] = ()) -> None:
        """In one transaction: delete delivered rows, note failed attempts, move refused rows to the
        dead-letter table; the leases held here are extended, and those of keys with nothing left are
        let go. On a nearly full disk the attempt counts are not written: while a destination is down
        they are rewritten on every retry, and would eat the room kept for the deletes that free the disk
        once it is back (then no checkpoint could ever run: stuck for good)."""
        done, retried, moved = list(delivered), list(retry), list(dead)
        seqs, work = self._settle_work(done, retried, moved)
        try:
            self._write(work)
        except DiskFullError:
            if len(done) <= _SETTLE_PIECE:
                raise
            # the deletes of one big batch need more WAL room than a full disk has; in small pieces,
            # each its own transaction, they free rows that the next pieces (and the rest) reuse
            for start in range(0, len(done), _SETTLE_PIECE):
                piece = done[start:start + _SETTLE_PIECE]
                self._write(lambda conn, piece=piece: _delete_rows(conn, piece))  # type: ignore[misc]
            self._write(self._settle_work([], retried, moved)[1])
        self._settled(seqs)

    def settle_and_claim(self, destination: str, limit: int, delivered: Iterable[int] = (),
                         dead: Iterable[tuple[int, DeadLetter]] = ()) -> list[Pending]:
        """:meth:`settle` a batch of ``destination`` that went through (delivered or refused rows, no
        retries), then :meth:`claim` its next rows -- in one transaction. A delivery worker under load
        otherwise takes the file's one write lock twice per batch, and with ``serve --workers N`` every
        turn at that lock is a wait for the other workers' commits. Its caller must hold no other rows
        of ``destination`` in flight (one delivery worker per destination in a process). On a full disk
        the batch is settled as :meth:`settle` does, in pieces, and nothing is claimed."""
        done, moved = list(delivered), list(dead)
        seqs, settle = self._settle_work(done, (), moved)
        gone = set(seqs)
        with self._inflight_lock:
            busy = sorted({k for s, (d, k) in self._inflight.items() if d == destination and s not in gone})
        _, claim = self._claim_work(destination, limit, busy)

        def work(conn: sqlite3.Connection) -> list[tuple[Pending, str]]:
            settle(conn)
            return claim(conn)

        try:
            claimed = self._write(work)
        except DiskFullError:
            self.settle(done, (), moved)
            return []
        self._settled(seqs)
        return self._claimed(claimed)

    def _settled(self, seqs: Sequence[int]) -> None:
        with self._inflight_lock:
            for s in seqs:
                self._inflight.pop(s, None)

    def _settle_work(self, done: Sequence[int], retry: Iterable[tuple[int, str]],
                     dead: Iterable[tuple[int, DeadLetter]]) -> tuple[list[int], Callable[[sqlite3.Connection], None]]:
        """(the seqs settled, the settle's transaction) -- see :meth:`settle`."""
        again = [(redact(err)[:2000], s) for s, err in retry]
        moved = list(dead)
        seqs = list(done) + [s for _, s in again] + [s for s, _ in moved]
        with self._inflight_lock:
            leased = self._leased
            destinations = sorted({self._inflight[s][0] for s in seqs if s in self._inflight})

        def work(conn: sqlite3.Connection) -> None:
            _delete_rows(conn, done)
            if again and not self._low(conn):
                conn.executemany("UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE seq = ?", again)
            if moved:
                # a row another claimant already settled is not dead-lettered a second time
                present = {s for s, _ in moved
                           if conn.execute("SELECT 1 FROM outbox WHERE seq = ?", (s,)).fetchone() is not None}
                _insert_dead(conn, [d for s, d in moved if s in present])
                _delete_rows(conn, sorted(present))
            if leased:
                # only leases past half their time are extended: while a destination is down, settles come
                # every backoff, and rewriting every lease each time would fill the WAL (and a full disk's
                # reserve) with nothing but lease updates
                now = time.time()
                conn.execute("UPDATE key_lease SET expires = ? WHERE owner = ? AND expires < ?",
                             (now + self.lease, self.owner, now + self.lease / 2))
                for d in destinations:
                    conn.execute("DELETE FROM key_lease WHERE owner = ? AND destination = ? AND NOT EXISTS "
                                 "(SELECT 1 FROM outbox o WHERE o.destination = key_lease.destination "
                                 "AND o.okey = key_lease.okey)", (self.owner, d))

        return seqs, work

    def depth(self) -> int:
        return int(self._read("SELECT count(*) FROM outbox")[0][0])

    def backlog(self) -> dict[str, StoreBacklog]:
        """Per destination: rows waiting, when the oldest was committed, keys leased now."""
        now = time.time()
        leased = {d: int(n) for d, n in self._read(
            "SELECT destination, count(*) FROM key_lease WHERE expires > ? GROUP BY destination", (now,))}
        return {d: StoreBacklog(int(n), float(oldest), leased.get(d, 0)) for d, n, oldest in self._read(
            "SELECT destination, count(*), min(created) FROM outbox GROUP BY destination")}

    def heads(self) -> list[Backlog]:
        """Per destination: rows waiting, the age of the oldest, its attempts and its last error (the
        head row of each destination is the one retried first: rows go out in seq order per key)."""
        now = time.time()
        out = []
        for dest, n in self._read("SELECT destination, count(*) FROM outbox GROUP BY destination ORDER BY destination"):
            head = self._read("SELECT created, attempts, last_error FROM outbox WHERE destination = ? ORDER BY seq "
                              "LIMIT 1", (dest,))
            if head:
                created, attempts, error = head[0]
                out.append(Backlog(dest, int(n), max(0.0, now - float(created)), int(attempts), error))
        return out

    def expire(self, max_age: float, reason: str) -> list[DeadLetter]:
        """Move every row older than ``max_age`` seconds to the dead-letter store, with its destination,
        its last error and ``reason``; returns what was moved."""
        cutoff = time.time() - max_age
        moved: list[DeadLetter] = []

        def work(conn: sqlite3.Connection) -> None:
            rows = conn.execute("SELECT seq, destination, event_id, body, attempts, last_error FROM outbox "
                                "WHERE created < ? ORDER BY seq LIMIT 10000", (cutoff,)).fetchall()
            for seq, dest, eid, body, attempts, last in rows:
                why = f"{reason}; last error: {last}" if last else reason
                moved.append(DeadLetter(PUBLISH, "outbox", PendingTooLongError.code, why, bytes(body),
                                        f"outbox row {seq}", dest, eid, {"attempts": int(attempts)}))
            if rows:
                _insert_dead(conn, moved)
                _delete_rows(conn, [r[0] for r in rows])

        self._write(work)
        return moved

    def depths(self) -> dict[str, int]:
        return {d: int(n) for d, n in self._read("SELECT destination, count(*) FROM outbox GROUP BY destination")}

    # --- dead letters --------------------------------------------------------------------------------

    def dead_letters(self, *, limit: int = 100, after: int = 0) -> list[DeadLetterRecord]:
        return [_record(r) for r in self._read(
            f"SELECT {_DL_COLUMNS} FROM dead_letter WHERE id > ? ORDER BY id LIMIT ?", (after, limit))]

    def dead_letter(self, dl_id: int) -> DeadLetterRecord | None:
        rows = self._read(f"SELECT {_DL_COLUMNS} FROM dead_letter WHERE id = ?", (dl_id,))
        return _record(rows[0]) if rows else None

    def dead_letter_count(self) -> int:
        return int(self._read("SELECT count(*) FROM dead_letter")[0][0])

    def dead_letter_refusal(self, nbytes: int) -> str | None:
        """Why a new dead letter of ``nbytes`` may not be stored (None when it may, and then it is counted
        against the bounds): ``core/dead_letters.py``."""
        bounds = self._dl_bounds
        bounds.max_rows, bounds.max_bytes, bounds.reserve = (self.dead_letter_max_rows, self.dead_letter_max_bytes,
                                                             self.reserve_bytes)
        return bounds.refusal(nbytes)

    def dead_letter_usage(self) -> tuple[int, int]:
        """(rows, payload bytes) in the dead-letter table."""
        rows, size = self._read("SELECT count(*), coalesce(sum(length(payload)), 0) FROM dead_letter")[0]
        return int(rows), int(size)

    def _disk_room(self) -> int | None:
        try:
            return self._room(self._conn())
        except (sqlite3.Error, OutboxError):
            return None

    def purge(self, ids: Sequence[int] | None = None) -> int:
        """Delete the given dead letters (all of them when ``ids`` is None); returns how many went."""
        def work(conn: sqlite3.Connection) -> int:
            if ids is None:
                return conn.execute("DELETE FROM dead_letter").rowcount
            return sum(conn.execute("DELETE FROM dead_letter WHERE id = ?", (i,)).rowcount for i in ids)

        return self._write(work)

    def resolve(self, dl_id: int, rows: Sequence[OutboxRow], dead: Sequence[DeadLetter] = (),
                gate: Gate | None = None) -> None:
        """Replace a dead letter by what replaying it produced, atomically (group-committed, FULL; the
        rows reach the commit listeners like any intake)."""
        self._committer.submit(_Insert(rows, dead, replaces=dl_id, where=self._where, gate=gate,
                                       state=self.state)).result()

    def failed_again(self, dl_id: int, error: BatchBridgeError) -> None:
        """A replay failed the same way or another: keep the item, record the latest reason."""
        self._write(lambda conn: conn.execute(
            "UPDATE dead_letter SET attempts = attempts + 1, code = ?, reason = ?, location = ? WHERE id = ?",
            (error.code, redact(error.reason), redact(error.where) if error.where else None, dl_id)))


def _gone(owner: str) -> bool:
    """Whether a lease's owner (``host:pid:tag``) is a process of this host that no longer runs: one host
    shares a SQLite file, so such a lease will never be renewed."""
    where, _, rest = owner.rpartition(":")[0].rpartition(":")
    if where != socket.gethostname() or not rest.isdigit() or int(rest) == os.getpid():
        return False
    try:
        os.kill(int(rest), 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass  # alive, someone else's
    return False


def _drop_leases(conn: sqlite3.Connection, owners: Sequence[str]) -> None:
    for table in ("key_lease", "destination_lease"):
        conn.executemany(f"DELETE FROM {table} WHERE owner = ?", [(o,) for o in owners])


def _add_keys(conn: sqlite3.Connection) -> None:
    """Schema 1 -> 2: the ``okey`` column, filled in for the rows an older version left (once; a
    drained outbox has none), and its index."""
    columns = {r[1] for r in conn.execute("PRAGMA table_info(outbox)").fetchall()}
    if "okey" not in columns:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("ALTER TABLE outbox ADD COLUMN okey TEXT NOT NULL DEFAULT ''")
            keys = [(row_key(OutboxRow(d, None, None, bytes(b))), s)
                    for s, d, b in conn.execute("SELECT seq, destination, body FROM outbox").fetchall()]
            conn.executemany("UPDATE outbox SET okey = ? WHERE seq = ?", keys)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
    conn.execute("CREATE INDEX IF NOT EXISTS outbox_by_key ON outbox (destination, okey, seq)")


SYNC_LEVELS = ("full", "normal")
