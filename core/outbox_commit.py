"""The SQLite outbox's group committer: one thread, one ``synchronous=FULL`` connection, and every
intake request waiting when a commit starts joins it (one fsync for all of them). Also the SQL that
intake and settling write with (multi-row INSERTs, chunked DELETEs) and the supersede gate's hook into
the intake transaction. The PostgreSQL store subclasses :class:`_Committer` for its own connection."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

import orjson

from .errors import BatchBridgeError
from .outbox_disk import _make_room, _write_failed, is_disk_full
from .outbox_rows import DeadLetter, Inserted, OutboxError, OutboxRow, row_key
from .secrets import redact
from .state import Observation, Prior, StateStore

log = logging.getLogger("batchbridge.outbox")

T = TypeVar("T")

#: most requests folded into one group commit (bounds the time one commit holds the write lock)
_MAX_GROUP = 2048

class Gate(Protocol):
    """Decides an intake request's rows inside its transaction, from what the subject-state store held
    before each of its events (``core/supersede.py``)."""

    @property
    def observations(self) -> Sequence[Observation]: ...

    def rows(self, priors: Sequence[Prior | None]) -> list[OutboxRow]: ...

class _Insert:
    """One intake request: rows and dead letters, and the dead letter they replace when a replay made
    them. The committer folds the rows of every request in a group into one statement; called on its
    own (the per-request fallback) it inserts just these. With a ``gate``, the rows are the gate's,
    decided once the state store has observed the request's events in the same transaction."""

    __slots__ = ("dead", "gate", "replaces", "rows", "state", "where")

    def __init__(self, rows: Sequence[OutboxRow], dead: Sequence[DeadLetter], *, replaces: int | None = None,
                 where: str = "", gate: Gate | None = None, state: StateStore | None = None) -> None:
        self.rows = rows
        self.dead = dead
        self.replaces = replaces
        self.where = where
        self.gate = gate
        self.state = state

    @staticmethod
    def decide(conn: sqlite3.Connection, run: Sequence[_Insert]) -> None:
        """Observe the events of every gated request of ``run`` at once (one read and one write of the
        state table), then let each gate pick its rows."""
        gated = [w for w in run if w.gate is not None and w.state is not None]
        if not gated:
            return
        priors = iter(gated[0].state.observe(  # type: ignore[union-attr]
            conn, [o for w in gated for o in w.gate.observations]))  # type: ignore[union-attr]
        for w in gated:
            assert w.gate is not None
            w.rows = w.gate.rows([next(priors) for _ in w.gate.observations])

    def claim(self, conn: sqlite3.Connection) -> None:
        """Delete the dead letter this request replaces; it must still be there."""
        if self.replaces is not None and conn.execute(
                "DELETE FROM dead_letter WHERE id = ?", (self.replaces,)).rowcount != 1:
            raise OutboxError(f"no dead letter with id {self.replaces}", where=self.where)

    def __call__(self, conn: sqlite3.Connection) -> Inserted:
        self.claim(conn)
        self.decide(conn, [self])
        return Inserted(_insert_rows(conn, self.rows), _insert_dead(conn, self.dead))

class _LoopWaiter:
    """An asyncio caller's side of a request: the committer records the outcome, then wakes every
    waiter of a group with one ``call_soon_threadsafe`` per event loop instead of one per request."""

    __slots__ = ("error", "future", "loop", "result")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self.result: Any = None
        self.error: BaseException | None = None

    def set_result(self, result: Any) -> None:
        self.result = result

    def set_exception(self, error: BaseException) -> None:
        self.error = error

def _wake(waiters: list[_LoopWaiter]) -> None:
    for w in waiters:
        if not w.future.done():  # a request whose task was cancelled meanwhile
            if w.error is None:
                w.future.set_result(w.result)
            else:
                w.future.set_exception(w.error)

_Sink = Future[Any] | _LoopWaiter

_Work = Callable[[sqlite3.Connection], Any]

class _Committer:
    """One thread, one FULL-sync connection: every intake write waiting when a commit starts joins it."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], where: str,
                 no_room: Callable[[sqlite3.Connection], str | None] = lambda conn: None,
                 guard: Callable[[], str | None] = lambda: None,
                 write_lock: contextlib.AbstractContextManager[Any] | None = None,
                 sync: Callable[[], None] | None = None) -> None:
        self._connect = connect
        self._where = where
        self._no_room = no_room
        #: why the file is no longer the outbox (deleted, replaced, truncated); None while it is
        self._guard = guard
        #: held around each transaction: the store's other writers in this process (delivery) queue on
        #: it instead of on SQLite's lock, whose busy handler sleeps in steps of up to 100 ms
        self._write_lock: contextlib.AbstractContextManager[Any] = write_lock or contextlib.nullcontext()
        #: makes what the last COMMIT wrote durable (the WAL's fsync), called after the write lock is
        #: let go and before the group is acknowledged; None: the COMMIT itself was durable enough
        self._sync = sync
        self._cond = threading.Condition()
        self._queue: list[tuple[_Work, _Sink]] = []
        self._closing = False
        self._thread: threading.Thread | None = None
        #: called on the committer thread after each commit with the rows it committed, in seq order
        #: (visible to every claimant from then on; on SQLite, possibly before the WAL's sync)
        self.listeners: list[Callable[[list[tuple[int, OutboxRow]]], None]] = []
        #: (transactions, requests) committed, for the measurements in the docs
        self.commits = 0
        self.requests = 0

    def submit(self, work: Callable[[sqlite3.Connection], T]) -> Future[T]:
        fut: Future[T] = Future()
        self._enqueue(work, fut)
        return fut

    def submit_async(self, work: _Work, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
        waiter = _LoopWaiter(loop)
        self._enqueue(work, waiter)
        return waiter.future

    def _enqueue(self, work: _Work, sink: _Sink) -> None:
        with self._cond:
            if self._closing:
                raise OutboxError("the outbox is closed", where=self._where)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="batchbridge-outbox-commit", daemon=True)
                self._thread.start()
            self._queue.append((work, sink))
            self._cond.notify()

    def _run(self) -> None:
        conn = self._connect()
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        self._cond.wait()
                    if not self._queue:
                        return
                    group, self._queue = self._queue[:_MAX_GROUP], self._queue[_MAX_GROUP:]
                self._commit(conn, group)
                self._wake(group)
        finally:
            conn.close()

    @staticmethod
    def _wake(group: list[tuple[_Work, _Sink]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_LoopWaiter]] = {}
        for _, sink in group:
            if isinstance(sink, _LoopWaiter):
                by_loop.setdefault(sink.loop, []).append(sink)
        for loop, waiters in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop was closed: nobody is waiting any more
                loop.call_soon_threadsafe(_wake, waiters)

    def _refuse(self, group: list[tuple[_Work, _Sink]], reason: str) -> None:
        err = OutboxError(reason, where=self._where, retryable=True)
        for _, sink in group:
            sink.set_exception(err)

    def _commit(self, conn: sqlite3.Connection, group: list[tuple[_Work, _Sink]]) -> None:
        gone = self._guard()
        if gone is not None:
            return self._refuse(group, gone)
        try:
            full = self._no_room(conn)
        except sqlite3.Error as exc:
            return self._fail(group, exc)
        if full is not None:
            return self._refuse(group, full)
        try:
            with self._write_lock:
                self._join(group)
                outcomes = self._transaction(conn, group)
        except sqlite3.Error as exc:
            if not is_disk_full(exc):
                return self._fail(group, exc)
            _make_room(conn)
            try:
                with self._write_lock:
                    outcomes = self._transaction(conn, group)
            except sqlite3.Error as again:
                return self._fail(group, again)
        # the rows are visible to every claimant from the COMMIT on: the in-memory hand-over need not
        # wait for the sync (a claim between the two parses the stored bodies again). Nobody is answered
        # before the WAL is synced and the file checked
        self._hand_over(group, outcomes)
        if self._sync is not None:
            try:
                self._sync()
            except OSError as exc:
                return self._refuse(group, f"the outbox's WAL could not be made durable: {exc.strerror or exc}")
        gone = self._guard()  # committed into a file that is no longer the outbox: not acknowledged
        if gone is not None:
            return self._refuse(group, gone)
        return self._resolve(group, outcomes)

    def _join(self, group: list[tuple[_Work, _Sink]]) -> None:
        """Once the write lock is held: the requests queued while this thread waited for it join the
        group (in place, so that the caller wakes them too). With several writers on the file (the
        delivery threads, the other workers of ``serve --workers N``) the wait is often longer than the
        commit itself; a request that came meanwhile had to wait for the next turn at the lock, and each
        worker's groups stayed small -- one fsync per handful of requests. Their disk checks are the
        group's, made a moment before; the file is checked again before the group is acknowledged."""
        room = _MAX_GROUP - len(group)
        if room > 0 and self._queue:
            with self._cond:
                group += self._queue[:room]
                del self._queue[:room]

    @staticmethod
    def _rows_of(work: Any) -> Sequence[OutboxRow] | None:
        """The rows an intake request wrote (None for other work: settles, purges)."""
        return work.rows if isinstance(work, _Insert) else None

    def _acknowledge(self, group: list[tuple[Any, Any]], outcomes: Sequence[tuple[Any, BaseException | None]]
                     ) -> None:
        """After the group's transaction is durable: :meth:`_hand_over`, then :meth:`_resolve`."""
        self._hand_over(group, outcomes)
        self._resolve(group, outcomes)

    def _hand_over(self, group: list[tuple[Any, Any]], outcomes: Sequence[tuple[Any, BaseException | None]]
                   ) -> None:
        """Once the group's transaction is committed: count it and tell the listeners (the delivery
        workers) which rows it committed -- for every store built on this committer."""
        self.commits += 1
        self.requests += len(group)
        if self.listeners:
            committed = [(seq, row) for (work, _), (result, error) in zip(group, outcomes, strict=True)
                         if error is None and (rows := self._rows_of(work)) is not None
                         for seq, row in zip(result.seqs, rows, strict=True)]
            for listener in self.listeners:
                try:
                    listener(committed)
                except Exception:  # a listener only speeds delivery up; the rows are committed regardless
                    log.exception("an outbox commit listener failed")

    def _resolve(self, group: list[tuple[Any, Any]], outcomes: Sequence[tuple[Any, BaseException | None]]) -> None:
        """Once the group is durable: resolve each request."""
        for (_, sink), (result, error) in zip(group, outcomes, strict=True):
            if error is None:
                sink.set_result(result)
            else:
                sink.set_exception(error if isinstance(error, BatchBridgeError) else
                                   OutboxError(f"outbox write failed: {error}", where=self._where))

    def _fail(self, group: list[tuple[_Work, _Sink]], exc: sqlite3.Error) -> None:
        err = _write_failed("could not commit to the outbox", exc, self._where)
        for _, sink in group:
            sink.set_exception(err)

    @classmethod
    def _transaction(cls, conn: sqlite3.Connection, group: list[tuple[_Work, _Sink]]
                     ) -> list[tuple[Any, BaseException | None]]:
        """Commit the group; one outcome (result, error) per request. First all at once, the rows of
        consecutive inserts in one statement; if anything in that fails, again with a savepoint per
        request, so that one failing request does not sink the others in its group."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                outcomes = cls._together(conn, group)
            except sqlite3.Error as exc:
                if is_disk_full(exc):
                    raise
                outcomes = None
            except Exception:
                outcomes = None
            if outcomes is None:
                conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                outcomes = cls._one_by_one(conn, group)
            conn.execute("COMMIT")
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return outcomes

    @staticmethod
    def _together(conn: sqlite3.Connection, group: list[tuple[_Work, _Sink]]) -> list[tuple[Any, BaseException | None]]:
        outcomes: list[tuple[Any, BaseException | None]] = []
        i = 0
        while i < len(group):
            work = group[i][0]
            if not isinstance(work, _Insert):
                outcomes.append((work(conn), None))
                i += 1
                continue
            run: list[_Insert] = []
            while i < len(group) and isinstance(group[i][0], _Insert):
                run.append(group[i][0])  # type: ignore[arg-type]
                i += 1
            for w in run:
                w.claim(conn)
            _Insert.decide(conn, run)
            seqs = iter(_insert_rows(conn, [r for w in run for r in w.rows]))
            outcomes += [(Inserted([next(seqs) for _ in w.rows], _insert_dead(conn, w.dead)), None) for w in run]
        return outcomes

    @staticmethod
    def _one_by_one(conn: sqlite3.Connection, group: list[tuple[_Work, _Sink]]
                    ) -> list[tuple[Any, BaseException | None]]:
        outcomes: list[tuple[Any, BaseException | None]] = []
        for work, _ in group:
            conn.execute("SAVEPOINT request")
            try:
                outcomes.append((work(conn), None))
            except sqlite3.Error as exc:
                if is_disk_full(exc):
                    raise  # the whole transaction is in trouble, not this request
                conn.execute("ROLLBACK TO request")
                outcomes.append((None, exc))
            except Exception as exc:
                conn.execute("ROLLBACK TO request")
                outcomes.append((None, exc))
            conn.execute("RELEASE request")
        return outcomes

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

#: rows per INSERT statement (6 parameters a row, well under SQLite's 32,766)
_ROWS_PER_STATEMENT = 500

@functools.lru_cache(maxsize=512)
def _values_sql(head: str, width: int, n: int) -> str:
    row = "(" + ", ".join("?" * width) + ")"
    return head + ", ".join([row] * n)

def _insert_rows(conn: sqlite3.Connection, rows: Sequence[OutboxRow]) -> list[int]:
    """Insert rows; their seqs. Multi-row statements rather than ``executemany``: sqlite3 lets go of
    the GIL around every statement step, and under load every step taken back costs a wait for the
    event loop thread -- one step per 500 rows instead of one per row. One writer inside one
    transaction, so AUTOINCREMENT hands out consecutive seqs and the last one gives them all."""
    if not rows:
        return []
    now = time.time()
    last = 0
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        chunk = rows[start:start + _ROWS_PER_STATEMENT]
        params: list[Any] = []
        for r in chunk:
            params += (r.destination, r.event_id, r.event_type, r.body, now, row_key(r))
        cur = conn.execute(_values_sql(
            "INSERT INTO outbox (destination, event_id, event_type, body, created, okey) VALUES ", 6, len(chunk)),
            params)
        last = int(cur.lastrowid or 0)
    return list(range(last - len(rows) + 1, last + 1))

def _delete_rows(conn: sqlite3.Connection, seqs: Sequence[int]) -> None:
    for start in range(0, len(seqs), _ROWS_PER_STATEMENT):
        chunk = seqs[start:start + _ROWS_PER_STATEMENT]
        conn.execute(f"DELETE FROM outbox WHERE seq IN ({', '.join('?' * len(chunk))})", chunk)

def _insert_dead(conn: sqlite3.Connection, dead: Sequence[DeadLetter]) -> list[int]:
    """Insert dead letters; their ids."""
    now = time.time()
    ids = []
    for d in dead:
        cur = conn.execute(
            "INSERT INTO dead_letter (created, stage, source, destination, event_id, code, reason, location, "
            "payload, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (now, d.stage, redact(d.source), d.destination, d.event_id, d.code, redact(d.reason),
             redact(d.where) if d.where else None, bytes(d.payload),
             orjson.dumps(dict(d.meta)).decode() if d.meta else None))
        ids.append(int(cur.lastrowid or 0))
    return ids
