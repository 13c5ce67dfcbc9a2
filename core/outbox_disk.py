"""The SQLite outbox's disk and file checks: a full disk (``SQLITE_FULL``) and how room is made again,
a damaged file, and the watch on the outbox file and its WAL (deleted, replaced or truncated under a
running bridge). Used by the store (``core/outbox.py``) and its group committer (``core/outbox_commit.py``)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from .errors import ConfigError
from .outbox_rows import OutboxError

log = logging.getLogger("batchbridge.outbox")

#: the environment variable naming the outbox lock descriptor a worker of ``serve --workers N``
#: inherits from its supervisor (``core/serve_workers.py``)
LOCK_FD_ENV = "BATCHBRIDGE_OUTBOX_LOCK_FD"

#: intake is refused (503 / nack) while less than this is left for the outbox (``Outbox._room``): the
#: publisher's deletes and SQLite's checkpoints need room too, and a disk filled to the last byte by
#: intake could never be drained again
DISK_RESERVE = 16 * 1024 * 1024

#: after a checkpoint the WAL file is cut back to this size: a burst (e.g. a backend down for hours)
#: must not keep its disk space once the outbox has drained
WAL_SIZE_LIMIT = 64 * 1024 * 1024

#: each connection's page cache, KiB. Every thread that touches the outbox has its own connection
#: (committer, one per destination's delivery, the supervisor, the event loop's reads), and SQLite's
#: default (2 MiB each) filled up as a burst's rows were written and read back, then stayed: a serve
#: with a file:// route was 1.36-1.39x its baseline RSS at rest after a burst. The pages it reads again
#: are recent ones, which the OS's page cache holds anyway.
PAGE_CACHE_KIB = 256

_SQLITE_FULL = 13

#: how often the outbox file and its WAL are checked for deletion, replacement or truncation, seconds
WATCH_INTERVAL = 0.5

#: WAL truncations this process made itself (a checkpoint that gives disk space back)
_wal_truncations = 0

def is_disk_full(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL: the disk (or a quota) has no room for the write."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return bool(code & 0xFF == _SQLITE_FULL)
    return "database or disk is full" in str(exc)

def _is_damage(exc: sqlite3.Error) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (11, 26)
    text = str(exc)
    return "malformed" in text or "not a database" in text

class DiskFullError(OutboxError):
    """A write failed because the disk holding the outbox is full (``SQLITE_FULL``)."""


def _write_failed(what: str, exc: sqlite3.Error, where: str) -> OutboxError:
    if is_disk_full(exc):
        return DiskFullError(f"{what}: the disk holding the outbox is full ({exc}); nothing more is accepted until "
                           "there is room again", where=where, retryable=True)
    return OutboxError(f"{what}: {exc}", where=where, retryable=True)

#: how long :func:`_make_room` keeps trying to truncate the WAL while other connections are busy, seconds
ROOM_WAIT = 2.0


def _make_room(conn: sqlite3.Connection, wait: float = ROOM_WAIT) -> bool:
    """On a full disk, most of the space is often the WAL (it grows until a checkpoint, 4 MiB by
    default, and keeps its size after one): copy it into the database and truncate it, so that the
    retried write -- and above all the publisher's deletes, which free rows -- can go through.

    The truncation only succeeds once no other connection reads an older snapshot or writes; under
    load a claimant or reader descheduled mid-statement holds one for a while, and one attempt that
    gave up at once left the WAL full for good. So it is tried again for up to ``wait`` seconds; and
    when the copy itself has no room (the database file must grow), the room file is given up
    (:func:`keep_room`). True once the WAL was truncated."""
    try:
        busy_ms = int(conn.execute("PRAGMA busy_timeout").fetchone()[0])
        # each attempt waits briefly for readers (the busy handler); the loop bounds the whole
        conn.execute("PRAGMA busy_timeout = 50")
    except sqlite3.Error:
        return False
    try:
        return _truncate(conn, time.monotonic() + wait)
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.execute(f"PRAGMA busy_timeout = {busy_ms}")


def _truncate(conn: sqlite3.Connection, deadline: float) -> bool:
    global _wal_truncations
    pause = 0.01
    while True:
        _wal_truncations += 1  # counted first: a watcher that sees the WAL shrink after this knows why
        try:
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error as exc:
            busy = 1  # SQLITE_BUSY / LOCKED: tried again below
            if is_disk_full(exc) and _give_up_room(conn):
                continue
        if not busy:
            return True
        if time.monotonic() + pause > deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.2)

#: the room file beside the outbox (``<outbox>-room``) takes this share of ``reserve_bytes``
ROOM_FILE_SHARE = 4


def room_file(db: str | Path) -> str:
    """The room file of the outbox ``db``: disk space held back for the one write nothing else can make
    room for -- the checkpoint that copies the WAL into the database file."""
    return f"{db}-room"


def keep_room(db: Path, size: int) -> None:
    """Write the room file (``size`` bytes) if it is missing and the disk has twice that free. Under load,
    readers keep checkpoints from finishing, the WAL grows over the pages new rows added to the
    database, and a disk filled to the last byte then holds a WAL that can never be copied back: the
    checkpoint must grow the database file, and there is no room for it (nor for any delete, as every
    write goes through the WAL). Deleting this file (:func:`_make_room`) gives the checkpoint its room."""
    name = room_file(db)
    if size <= 0 or os.path.exists(name):
        return
    try:
        st = os.statvfs(db.parent)
        if st.f_bavail * st.f_frsize < 2 * size:
            return
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(name)
    finally:
        os.close(fd)


def _give_up_room(conn: sqlite3.Connection) -> bool:
    """Delete the room file of ``conn``'s outbox, if there is one (True then)."""
    try:
        db = conn.execute("PRAGMA database_list").fetchall()[0][2]
        os.unlink(room_file(db))
    except (sqlite3.Error, OSError, IndexError):
        return False
    log.warning("the disk holding the outbox %s is full: its room file was given up so that the WAL can be "
                "copied back; it is written again once there is room", db)
    return True


class _Watch:
    """The identity (device, inode) and size of the outbox file and its WAL, checked from a thread and
    on demand; see :meth:`Outbox.watch`."""

    def __init__(self, path: Path, anchor: sqlite3.Connection) -> None:
        self._files = {"outbox file": str(path), "WAL": f"{path}-wal"}
        self._anchor = anchor
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.broken: str | None = None
        self._known: dict[str, tuple[int, int, int]] = {}
        self._truncations = _wal_truncations
        for what, name in self._files.items():
            with contextlib.suppress(OSError):
                st = os.stat(name)
                self._known[what] = (st.st_dev, st.st_ino, st.st_size)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="batchbridge-outbox-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL):
            self.check()

    def check(self) -> str | None:
        with self._lock:
            if self.broken is None:
                self.broken = self._look()
                if self.broken is not None:
                    log.critical("intake stopped: %s; events acknowledged from now on would be lost. Stop this "
                                 "bridge, put the outbox back or start on a new one", self.broken)
            return self.broken

    def _look(self) -> str | None:
        truncations = _wal_truncations  # read before the sizes: a truncation after this one is seen next time
        for what, name in self._files.items():
            try:
                st = os.stat(name)
            except FileNotFoundError:
                if what in self._known:
                    return f"the {what} {name} was deleted"
                continue
            except OSError as exc:
                return f"the {what} {name} cannot be examined: {exc.strerror or exc}"
            known = self._known.get(what)
            if known is not None and (st.st_dev, st.st_ino) != known[:2]:
                return f"the {what} {name} was replaced by another file"
            if known is not None and st.st_size < known[2]:
                # the database never shrinks (no VACUUM); the WAL only when this process truncated it,
                # or (journal_size_limit) down to WAL_SIZE_LIMIT
                own = what == "WAL" and (truncations != self._truncations or st.st_size >= WAL_SIZE_LIMIT)
                if not own:
                    return f"the {what} {name} was truncated ({known[2]} -> {st.st_size} bytes)"
            self._known[what] = (st.st_dev, st.st_ino, st.st_size)
        self._truncations = truncations
        return None

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with contextlib.suppress(sqlite3.Error):
            self._anchor.close()


def lock_file(path: Path) -> int:
    """The outbox file's exclusive ``flock``, on the file itself (SQLite's own POSIX locks do not touch
    it), so it belongs to the file, not its name: a second bridge through a hard link or a symlink is
    refused like one on the same path. Returns the locked descriptor."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as exc:
        raise OutboxError(f"cannot open the outbox: {exc.strerror or exc}", where=str(path)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError("another running bridge (serve or relay) already publishes from this outbox file "
                          "(perhaps through another name: a hard link or a symlink); give each one its own "
                          "outbox", where=str(path)) from None
    return fd


def inherited_lock(path: Path) -> int | None:
    """The outbox lock descriptor this worker inherited from its supervisor, if it is the lock on the
    file at ``path`` (same device and inode) and held; None when there is none (a plain ``serve``)."""
    given = os.environ.get(LOCK_FD_ENV)
    if not given:
        return None
    try:
        fd = int(given)
        held, here = os.fstat(fd), os.stat(path)
    except (ValueError, OSError):
        return None
    if (held.st_dev, held.st_ino) != (here.st_dev, here.st_ino):
        return None  # the supervisor's lock is on another outbox: this one must be locked as usual
    try:
        # the supervisor's open file description holds the lock: taking it again through it succeeds;
        # were it not held by this group, it is taken now, so this group owns the file either way
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return None
    return fd


class WalSync:
    """Makes an outbox's WAL durable: ``fdatasync`` on the ``-wal`` file, what SQLite's
    ``synchronous=FULL`` does inside each COMMIT. Done by the group committer after the COMMIT, outside
    the file's one write lock, and before the group is acknowledged: the fsync is most of a commit's
    time, and with ``serve --workers N`` every other writer waited for it. The WAL is append-only between
    checkpoints, and a checkpoint syncs it (and the database file) itself before the WAL is reused, so
    one fdatasync after the COMMIT makes that transaction and everything before it durable.

    The descriptor is kept open (closing any descriptor of a file drops the process's POSIX locks on it).
    While the committer's connection is open SQLite never replaces the WAL (it deletes it only when the
    last connection closes), so a WAL that is another file than the descriptor's was replaced by someone:
    this process's commits went to the old one, and syncing the new one would vouch for nothing. When
    the descriptor is opened, the directory is synced too, so that the WAL's own name is durable."""

    def __init__(self, db: Path) -> None:
        self._path = f"{db}-wal"
        self._dir = str(db.parent)
        self._fd: int | None = None
        self._lock = threading.Lock()

    def __call__(self) -> None:
        """Raises OSError (a missing or replaced WAL is one: the commit cannot be vouched for)."""
        with self._lock:
            st = os.stat(self._path)
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDONLY)
                dir_fd = os.open(self._dir, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            elif os.fstat(self._fd).st_ino != st.st_ino:
                raise OSError(errno.ESTALE, f"{self._path} was replaced by another file")
            os.fdatasync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None


#: the first and the longest pause between two looks at a taken writer lock, seconds. The file's one
#: writer is what ``serve --workers N`` waits on (a group commit holds it ~1-5 ms, a delivery
#: transaction ~1 ms): a waiter that slept 2 ms between looks, as before, left it free for up to that
#: long after each hand-over. A look costs a few microseconds of CPU.
_POLL_FIRST = 0.00005
_POLL_MAX = 0.00025


class WriterLock:
    """One writer at a time on an outbox file, across threads *and* processes (``serve --workers N``).
    SQLite's own lock makes a writer that finds it taken sleep in steps of 1, 2, 5 ... 100 ms, so N
    processes committing side by side mostly wait on each other's sleeps; here the waiter asks again
    within a fraction of a millisecond. The ``flock`` is on a file beside the outbox (the outbox file's
    own ``flock`` is the single-bridge lock, and POSIX locks on it belong to SQLite). A holder that
    stalls is waited for at most ``timeout``; then SQLite's busy handler decides, as before."""

    def __init__(self, path: Path, timeout: float) -> None:
        self._path = Path(f"{path}-writer")
        self._timeout = timeout
        self._threads = threading.Lock()
        self._fd: int | None = None
        self._held = False

    def _descriptor(self) -> int | None:
        if self._fd is None:
            try:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:
                return None  # a read-only or full directory: SQLite's lock alone, as before
        return self._fd

    def __enter__(self) -> None:
        self._threads.acquire()
        fd = self._descriptor()
        if fd is None:
            return
        deadline = time.monotonic() + self._timeout
        pause = _POLL_FIRST
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._held = True
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return
                time.sleep(pause)
                pause = min(pause * 2, _POLL_MAX)
            except OSError:
                return

    def __exit__(self, *exc: object) -> None:
        try:
            if self._held and self._fd is not None:
                self._held = False
                with contextlib.suppress(OSError):
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
