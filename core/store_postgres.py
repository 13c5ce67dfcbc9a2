"""The outbox on PostgreSQL: one database shared by any number of ``serve`` and ``relay`` replicas.

``PostgresStore("postgresql://USER@HOST:PORT/DB")`` keeps the invariants written in
:mod:`batchbridge.core.store`. How:

* **Schema** -- created on start and versioned in ``schema_version``; replicas starting together
  serialise on an advisory lock; a database written by a newer batchbridge is refused.
* **Intake** -- one committer thread per store groups every request waiting at that moment into one
  transaction with multi-row INSERTs (the SQLite outbox's group committer, on a PostgreSQL
  connection); ``synchronous_commit`` stays at the server's setting (``on``: durable at the ack). The
  transaction's INSERTs notify (a statement trigger) once per destination they wrote to.
* **Claims** -- rows carry their event's ordering key; ``key_lease`` holds (destination, key, owner,
  expires). A claim picks candidate rows with ``FOR UPDATE SKIP LOCKED`` (two claimants starting at
  once take different rows instead of queueing), leases their keys with one upsert that succeeds only
  where the key is free, expired or already its own (the unique index serialises two claimants on
  one key), then reads the *head* rows of the keys it got. Lease times come from the server's clock.
* **Wake-ups** -- a ``LISTEN`` connection per store wakes idle claimants when rows are committed (by
  any replica); ``IDLE_WAIT`` bounds the wait, since an expired lease sends nothing.
* **Failures** -- a lost connection is dropped and made again on the next call; while the server is
  down every call raises :class:`~batchbridge.core.store.StoreUnavailableError` (intake: 503).

The password comes from the URL, from libpq (``PGPASSWORD``, ``~/.pgpass`` or ``passfile=``), or from
``password_file=PATH`` (a file holding only the password, e.g. a mounted Kubernetes Secret). It is
redacted wherever the URL is shown. psycopg 3 (the ``[postgres]`` extra) is imported only here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import orjson

from .dead_letters import DeadLetterBounds
from .errors import BatchBridgeError, ConfigError, MissingDependencyError
from .outbox import (
    _DL_COLUMNS,
    PUBLISH,
    DeadLetter,
    DeadLetterRecord,
    Gate,
    Inserted,
    OutboxError,
    OutboxRow,
    Pending,
    PendingTooLongError,
    _Committer,
    _record,
)
from .outbox import (
    Backlog as Head,
)
from .outbox_rows import row_key
from .secrets import redact, redact_uri, remember
from .state import StateStore
from .state_postgres import PostgresStateStore, _t
from .store import IDLE_WAIT, LEASE, Backlog, StoreUnavailableError

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("batchbridge.outbox.postgres")

T = TypeVar("T")

SCHEMA_VERSION = 1
#: the NOTIFY channel; the payload is a digest of the destination (URIs may be long or hold secrets)
CHANNEL = "batchbridge_outbox"
#: serialises schema creation among replicas that start at once (any constant; "bboutbox" in ASCII)
_SCHEMA_LOCK = 0x62626F7574626F78
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)",
    """CREATE TABLE IF NOT EXISTS outbox (
        seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        destination text             NOT NULL,
        okey        text             NOT NULL,
        event_id    text,
        event_type  text,
        body        bytea            NOT NULL,
        created     double precision NOT NULL DEFAULT extract(epoch FROM now()),
        attempts    integer          NOT NULL DEFAULT 0,
        last_error  text
    )""",
    "CREATE INDEX IF NOT EXISTS outbox_by_destination ON outbox (destination, seq)",
    "CREATE INDEX IF NOT EXISTS outbox_by_key ON outbox (destination, okey, seq)",
    """CREATE TABLE IF NOT EXISTS key_lease (
        destination text        NOT NULL,
        okey        text        NOT NULL,
        owner       text        NOT NULL,
        expires     timestamptz NOT NULL,
        PRIMARY KEY (destination, okey)
    )""",
    "CREATE INDEX IF NOT EXISTS key_lease_by_owner ON key_lease (owner)",
    # every insert wakes the idle claimants, whoever wrote it (intake, a replay, another tool), in
    # the inserting statement itself: no round trip of its own; delivered at commit, once per payload
    f"""CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('{CHANNEL}', d) FROM (SELECT DISTINCT md5(destination) AS d FROM inserted) AS t;
        RETURN NULL;
    END $$""",
    # made once: replacing it on every start would lock the table against a running replica's intake
    """DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'outbox_notify' AND tgrelid = 'outbox'::regclass) THEN
            CREATE TRIGGER outbox_notify AFTER INSERT ON outbox REFERENCING NEW TABLE AS inserted
                FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
        END IF;
    END $$""",
    """CREATE TABLE IF NOT EXISTS dead_letter (
        id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        created     double precision NOT NULL DEFAULT extract(epoch FROM now()),
        stage       text    NOT NULL,
        source      text    NOT NULL,
        destination text,
        event_id    text,
        code        text    NOT NULL,
        reason      text    NOT NULL,
        location    text,
        payload     bytea   NOT NULL,
        meta        text,
        attempts    integer NOT NULL DEFAULT 1
    )""",
)
#: rows per INSERT statement (6 parameters a row; PostgreSQL allows 65,535 per statement)
_ROWS_PER_STATEMENT = 1000
#: seconds to wait for a connection before intake answers 503, unless the URL sets ``connect_timeout``
CONNECT_TIMEOUT = 5


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise MissingDependencyError("the PostgreSQL outbox needs psycopg 3: pip install 'batchbridge[postgres]'",
                                     where="[outbox] url") from None
    return psycopg


def _digest(destination: str) -> str:
    """What the trigger ``outbox_notify`` sends for a destination (md5 of its UTF-8 bytes, in hex)."""
    return hashlib.md5(destination.encode(), usedforsecurity=False).hexdigest()


def parse_url(url: str) -> tuple[str, dict[str, Any], str]:
    """``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB[?options]`` -> (libpq URL, extra connect
    arguments, the URL as shown). ``password_file`` is ours: read here, passed as the password."""
    shown = redact_uri(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises on a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"not a PostgreSQL URL: {redact(str(exc))}", where=shown) from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"a PostgreSQL outbox URL starts with postgresql://, not {parts.scheme}://", where=shown)
    if not parts.path.strip("/"):
        raise ConfigError("the PostgreSQL URL names no database (postgresql://USER@HOST:PORT/DB)", where=shown)
    remember(parts.password, unquote(parts.password or ""))
    options = parse_qsl(parts.query, keep_blank_values=True)
    extra: dict[str, Any] = {}
    kept = []
    for key, value in options:
        if key == "password_file":
            try:
                password = Path(value).read_text().strip("\r\n")
            except OSError as exc:
                raise ConfigError(f"cannot read the password file {value}: {exc.strerror or exc}",
                                  where=shown) from None
            if not password:
                raise ConfigError(f"the password file {value} is empty", where=shown)
            remember(password)
            extra["password"] = password
        else:
            kept.append((key, value))
    if not any(k == "connect_timeout" for k, _ in kept):
        extra["connect_timeout"] = CONNECT_TIMEOUT
    extra.setdefault("application_name", "batchbridge")
    remember(os.environ.get("PGPASSWORD"))
    conninfo = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(kept), ""))
    return conninfo, extra, shown


def _unavailable(exc: Exception) -> bool:
    """Whether ``exc`` says the server cannot be reached (as opposed to refusing a statement)."""
    psycopg = _psycopg()
    if isinstance(exc, psycopg.InterfaceError):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = getattr(exc, "sqlstate", None)
    # no SQLSTATE: libpq's own connection failures; 08: connection exceptions; 57P: server shutting
    # down, crashed, or starting up
    return state is None or state.startswith(("08", "57P"))


class _Link:
    """One lazily (re)made connection. A connection that failed is dropped, and the next use makes a new
    one, so a PostgreSQL restart costs the calls made while it is down and nothing after."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self._connect = connect
        self.conn: psycopg.Connection[Any] | None = None

    def get(self) -> psycopg.Connection[Any]:
        conn = self.conn
        if conn is None or conn.closed or conn.broken:
            self.close()
            conn = self.conn = self._connect()
        return conn

    def drop_if_broken(self) -> None:
        if self.conn is not None and (self.conn.closed or self.conn.broken):
            self.close()

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None


class _PgInsert:
    """One intake request: rows and dead letters, and the dead letter they replace (a replay). With a
    ``gate``, the rows are the gate's, decided once ``state`` has observed the request's events in the
    same transaction (the SQLite outbox's ``_Insert``)."""

    __slots__ = ("dead", "gate", "replaces", "rows", "state")

    def __init__(self, rows: Sequence[OutboxRow], dead: Sequence[DeadLetter], replaces: int | None = None,
                 gate: Gate | None = None, state: StateStore | None = None) -> None:
        self.rows = rows
        self.dead = dead
        self.replaces = replaces
        self.gate = gate
        self.state = state

    @staticmethod
    def decide(cur: psycopg.Cursor[Any], run: Sequence[_PgInsert]) -> None:
        """Observe the events of every gated request of ``run`` at once, then let each gate pick its rows."""
        gated = [w for w in run if w.gate is not None and w.state is not None]
        if not gated:
            return
        priors = iter(gated[0].state.observe(  # type: ignore[union-attr]
            cur, [o for w in gated for o in w.gate.observations]))  # type: ignore[union-attr]
        for w in gated:
            assert w.gate is not None
            w.rows = w.gate.rows([next(priors) for _ in w.gate.observations])


def _send_rows(conn: psycopg.Connection[Any], rows: Sequence[OutboxRow]) -> Callable[[], list[int]]:
    """Send the INSERTs of ``rows``; the returned function reads their seqs. In pipeline mode nothing
    waits for them until then (the commit's own round trip carries them)."""
    cursors = []
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        chunk = rows[start:start + _ROWS_PER_STATEMENT]
        params: list[Any] = []
        for r in chunk:
            params += (_t(r.destination), _t(row_key(r)), _t(r.event_id), _t(r.event_type), r.body)
        cur = conn.cursor()
        cur.execute(
            "INSERT INTO outbox (destination, okey, event_id, event_type, body) VALUES "
            + ", ".join(["(%s, %s, %s, %s, %s)"] * len(chunk)) + " RETURNING seq", params)
        cursors.append(cur)
    return lambda: _returned(cursors)


def _send_dead(conn: psycopg.Connection[Any], dead: Sequence[DeadLetter]) -> Callable[[], list[int]]:
    """:func:`_send_rows` for dead letters (their ids)."""
    cursors = []
    for start in range(0, len(dead), _ROWS_PER_STATEMENT):
        params: list[Any] = []
        for d in dead[start:start + _ROWS_PER_STATEMENT]:
            params += (d.stage, _t(redact(d.source)), _t(d.destination), _t(d.event_id), d.code, _t(redact(d.reason)),
                       _t(redact(d.where)) if d.where else None, bytes(d.payload),
                       orjson.dumps(dict(d.meta)).decode() if d.meta else None)
        cur = conn.cursor()
        cur.execute(
            "INSERT INTO dead_letter (stage, source, destination, event_id, code, reason, location, payload, meta) "
            "VALUES " + ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s)"] * (len(params) // 9)) + " RETURNING id",
            params)
        cursors.append(cur)
    return lambda: _returned(cursors)


def _returned(cursors: list[psycopg.Cursor[Any]]) -> list[int]:
    # identity values are drawn in VALUES order; sorting maps them to the rows whatever order
    # RETURNING lists them in
    out: list[int] = []
    for cur in cursors:
        out += sorted(int(r[0]) for r in cur.fetchall())
        cur.close()
    return out


def _insert_rows(cur: psycopg.Cursor[Any], rows: Sequence[OutboxRow]) -> list[int]:
    return _send_rows(cur.connection, rows)()


def _insert_dead(cur: psycopg.Cursor[Any], dead: Sequence[DeadLetter]) -> list[int]:
    return _send_dead(cur.connection, dead)()


def _apply(cur: psycopg.Cursor[Any], work: _PgInsert, where: str) -> Inserted:
    if work.replaces is not None:
        cur.execute("DELETE FROM dead_letter WHERE id = %s", (work.replaces,))
        if cur.rowcount != 1:
            raise OutboxError(f"no dead letter with id {work.replaces}", where=where)
    _PgInsert.decide(cur, [work])
    return Inserted(_insert_rows(cur, work.rows), _insert_dead(cur, work.dead))


class _PgCommitter(_Committer):
    """The SQLite outbox's group committer (queue, grouping, waking asyncio waiters per loop), with the
    transaction made on PostgreSQL: one transaction per group, the rows of the whole group in
    multi-row INSERTs; if a request in it fails (a replay whose dead letter is gone), the group is
    redone with a savepoint per request so that the others still commit."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], where: str) -> None:
        super().__init__(lambda: _Link(connect), where)  # type: ignore[arg-type, return-value]

    def _commit(self, link: _Link, group: list[tuple[Any, Any]]) -> None:  # type: ignore[override]
        works: list[_PgInsert] = [w for w, _ in group]
        try:
            conn = link.get()
            try:
                outcomes = self._all_at_once(conn, works)
            except OutboxError:
                outcomes = self._with_savepoints(conn, works)
            except _psycopg().Error as exc:
                if _unavailable(exc) or link.conn is None or link.conn.broken:
                    raise
                outcomes = self._with_savepoints(conn, works)
        except Exception as exc:
            link.drop_if_broken()
            err = _store_error("could not commit to the outbox", exc, self._where)
            for _, sink in group:
                sink.set_exception(err)
            return
        self._acknowledge(group, outcomes)

    @staticmethod
    def _rows_of(work: Any) -> Sequence[OutboxRow] | None:
        return work.rows if isinstance(work, _PgInsert) else None

    def _all_at_once(self, conn: psycopg.Connection[Any], works: list[_PgInsert]
                  ) -> list[tuple[Inserted, BaseException | None]]:
        # pipelined: BEGIN travels with the first statement, and the INSERTs (and the state's write)
        # with the COMMIT -- their RETURNING is read once it is answered: round trips, not statements,
        # are what a commit costs (one without a gate, two with one: the state must be read first)
        with conn.pipeline(), conn.transaction(), conn.cursor() as cur:
            for w in works:
                if w.replaces is not None:
                    _apply(cur, _PgInsert((), (), w.replaces), self._where)
            _PgInsert.decide(cur, works)
            rows = _send_rows(conn, [r for w in works for r in w.rows])
            dead = [_send_dead(conn, w.dead) for w in works]
        seqs = iter(rows())
        return [(Inserted([next(seqs) for _ in w.rows], d()), None) for w, d in zip(works, dead, strict=True)]

    def _with_savepoints(self, conn: psycopg.Connection[Any], works: list[_PgInsert]
                    ) -> list[tuple[Any, BaseException | None]]:
        psycopg = _psycopg()
        outcomes: list[tuple[Any, BaseException | None]] = []
        with conn.transaction(), conn.cursor() as cur:
            for w in works:
                try:
                    with conn.transaction():  # a savepoint
                        outcomes.append((_apply(cur, w, self._where), None))
                except OutboxError as exc:
                    outcomes.append((None, exc))
                except psycopg.Error as exc:
                    if _unavailable(exc):
                        raise
                    outcomes.append((None, _store_error("outbox write failed", exc, self._where)))
        return outcomes


def _store_error(what: str, exc: Exception, where: str) -> OutboxError:
    """A driver error as the typed error callers handle; the cause is kept (not shown) for tests."""
    if isinstance(exc, OutboxError):
        return exc
    lines = str(exc).strip().splitlines()
    text = redact(lines[0] if lines else type(exc).__name__)[:500]
    if _unavailable(exc):
        return StoreUnavailableError(f"{what}: PostgreSQL is unavailable ({text})", where=where, cause=exc)
    return OutboxError(f"{what}: {text}", where=where, retryable=True, cause=exc)


class _Listener:
    """One LISTEN connection per store, woken by every intake commit of every replica."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self._connect = connect
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._link = _Link(connect)

    def _event(self, digest: str) -> threading.Event:
        with self._lock:
            ev = self._events.get(digest)
            if ev is None:
                ev = self._events[digest] = threading.Event()
            if self._thread is None and not self._closing.is_set():
                self._thread = threading.Thread(target=self._run, name="batchbridge-outbox-listen", daemon=True)
                self._thread.start()
            return ev

    def wait(self, destination: str, timeout: float) -> bool:
        ev = self._event(_digest(destination))
        woken = ev.wait(timeout)
        ev.clear()
        return woken

    def _wake_all(self) -> None:
        with self._lock:
            for ev in self._events.values():
                ev.set()

    def _run(self) -> None:
        psycopg = _psycopg()
        failures = 0
        while not self._closing.is_set():
            try:
                conn = self._link.get()
                conn.execute(f"LISTEN {CHANNEL}")
                failures = 0
                # rows committed while nobody listened sent their notifications into the void
                self._wake_all()
                while not self._closing.is_set():
                    for note in conn.notifies(timeout=0.5):
                        with self._lock:
                            ev = self._events.get(note.payload)
                        if ev is not None:
                            ev.set()
            except (psycopg.Error, BatchBridgeError) as exc:  # lost, or could not connect again
                self._link.close()
                if self._closing.is_set():
                    break
                failures += 1
                log.debug("outbox listener lost its connection: %s", redact(str(exc)))
                self._wake_all()  # claimants look for themselves meanwhile (and see the outage)
                self._closing.wait(min(5.0, 0.1 * 2 ** min(failures, 6)))
        self._link.close()

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(5)
        self._wake_all()


class PostgresStore:
    """The outbox store on PostgreSQL. Thread-safe; one store object is one claimant."""

    def __init__(self, url: str, *, lease: float = LEASE, connect: bool = True) -> None:
        if lease <= 0:
            raise ConfigError(f"the lease must be positive, got {lease}", where="[outbox] lease")
        self._conninfo, self._kwargs, self.where = parse_url(url)
        _psycopg()
        self.lease = lease
        #: who holds a lease: unique per store object, readable in the database by an operator
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._local = threading.local()
        self._links: list[_Link] = []
        self._links_lock = threading.Lock()
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._inflight: dict[int, tuple[str, str]] = {}  # seq -> (destination, key), handed out, unsettled
        self._inflight_lock = threading.Lock()
        self._closed = False
        #: bounds of the shared dead-letter table (``outbox.dead_letter_max_rows`` / ``_max_bytes``),
        #: counted over every replica's dead letters
        self._bounds = DeadLetterBounds(self.dead_letter_usage)
        self._committer = _PgCommitter(self._connect, self.where)
        self._listener = _Listener(lambda: self._connect(autocommit=True))
        #: the latest event per subject, in this database, shared by every replica (``core/state_postgres.py``)
        self.state: StateStore = PostgresStateStore(
            self._read, lambda work: self._tx(work, "cannot write the subject state"))
        if connect:
            self.ensure_schema()

    def __repr__(self) -> str:
        return f"PostgresStore(url={self.where!r}, owner={self.owner!r})"

    # --- connections --------------------------------------------------------------------------------

    def _connect(self, autocommit: bool = True) -> psycopg.Connection[Any]:
        pg = _psycopg()
        try:
            conn: psycopg.Connection[Any] = pg.connect(self._conninfo, autocommit=autocommit, **self._kwargs)
        except pg.Error as exc:
            raise _store_error("cannot connect to the outbox", exc, self.where) from None
        return conn

    def ensure_schema(self) -> None:
        """Create the tables (once per store; idempotent across replicas) and check the version."""
        with self._schema_lock:
            if self._schema_ready:
                return

            def work(cur: psycopg.Cursor[Any]) -> None:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for statement in _SCHEMA:
                    cur.execute(statement)
                PostgresStateStore.create(cur)
                cur.execute("SELECT max(version) FROM schema_version")
                row = cur.fetchone()
                version = row[0] if row else None
                if version is None:
                    cur.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))
                elif version > SCHEMA_VERSION:
                    raise OutboxError(f"the outbox was written by a newer batchbridge (schema {version}, this one "
                                      f"knows {SCHEMA_VERSION})", where=self.where)

            self._tx(work, "cannot create the outbox schema", schema=False)
            self._schema_ready = True

    def _link(self) -> _Link:
        if self._closed:
            raise OutboxError("the outbox is closed", where=self.where)
        link: _Link | None = getattr(self._local, "link", None)
        if link is None:
            link = self._local.link = _Link(self._connect)
            with self._links_lock:
                self._links.append(link)
        return link

    def _tx(self, work: Callable[[psycopg.Cursor[Any]], T], what: str, *, schema: bool = True) -> T:
        """Run ``work`` in one transaction on this thread's connection; typed errors only."""
        if schema and not self._schema_ready:
            self.ensure_schema()
        link = self._link()
        try:
            conn = link.get()
            with conn.transaction(), conn.cursor() as cur:
                return work(cur)
        except BatchBridgeError:
            raise
        except Exception as exc:
            link.drop_if_broken()
            raise _store_error(what, exc, self.where) from None

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        def work(cur: psycopg.Cursor[Any]) -> list[Any]:
            cur.execute(sql, args)
            return cur.fetchall()

        return self._tx(work, "outbox read failed")

    def close(self) -> None:
        if self._closed:
            return
        self._committer.close()
        self._listener.close()
        with contextlib.suppress(BatchBridgeError):
            self.release()
        self._closed = True
        with self._links_lock:
            links, self._links = self._links, []
        for link in links:
            link.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def group_commit_stats(self) -> tuple[int, int]:
        return self._committer.commits, self._committer.requests

    # --- intake --------------------------------------------------------------------------------------

    def submit(self, rows: Sequence[OutboxRow], dead: Sequence[DeadLetter] = (),
               gate: Gate | None = None) -> Future[Inserted]:
        """Queue for the next group commit. With a ``gate`` the rows inserted are those the gate picks
        once :attr:`state` has observed its events, in the same transaction."""
        self._ready_for_intake()
        return self._committer.submit(_PgInsert(rows, dead, gate=gate, state=self.state))  # type: ignore[arg-type]

    def asubmit(self, rows: Sequence[OutboxRow], dead: Sequence[DeadLetter] = (),
                gate: Gate | None = None) -> asyncio.Future[Inserted]:
        self._ready_for_intake()
        work = _PgInsert(rows, dead, gate=gate, state=self.state)
        return self._committer.submit_async(work, asyncio.get_running_loop())  # type: ignore[arg-type]

    def put(self, rows: Sequence[OutboxRow], dead: Sequence[DeadLetter] = (), gate: Gate | None = None) -> Inserted:
        return self.submit(rows, dead, gate).result()

    def _ready_for_intake(self) -> None:
        if self._closed:
            raise OutboxError("the outbox is closed", where=self.where)
        if not self._schema_ready:
            self.ensure_schema()

    def on_commit(self, listener: Callable[[list[tuple[int, OutboxRow]]], None]) -> None:
        self._committer.listeners.append(listener)

    # --- claims --------------------------------------------------------------------------------------

    def destinations(self) -> list[str]:
        return [r[0] for r in self._read("SELECT DISTINCT destination FROM outbox")]

    def _busy(self, destination: str) -> tuple[list[int], list[str]]:
        with self._inflight_lock:
            mine = [(s, k) for s, (d, k) in self._inflight.items() if d == destination]
        return [s for s, _ in mine], sorted({k for _, k in mine})

    def claim(self, destination: str, limit: int) -> list[Pending]:
        if limit <= 0:
            return []
        pg = _psycopg()
        # keys with rows in flight here are left out whole: their next rows wait until those settle
        # (a retried row must go out before the rows behind it)
        _, busy = self._busy(destination)
        args = {"d": destination, "me": self.owner, "busy": busy, "limit": limit, "lease": self.lease}

        def work(cur: psycopg.Cursor[Any]) -> list[tuple[Pending, str]]:
            cur.execute(
                "SELECT o.okey FROM outbox o WHERE o.destination = %(d)s AND o.okey <> ALL(%(busy)s::text[]) "
                "AND NOT EXISTS (SELECT 1 FROM key_lease l WHERE l.destination = o.destination AND l.okey = o.okey "
                "AND l.owner <> %(me)s AND l.expires > now()) "
                "ORDER BY o.seq LIMIT %(limit)s FOR UPDATE OF o SKIP LOCKED", args)
            keys = sorted({r[0] for r in cur.fetchall()})  # sorted: two claimants upsert in one order
            if not keys:
                return []
            cur.execute(
                "INSERT INTO key_lease (destination, okey, owner, expires) "
                "SELECT %(d)s, k, %(me)s, now() + %(lease)s * interval '1 second' "
                "FROM unnest(%(keys)s::text[]) AS k ORDER BY k "
                "ON CONFLICT (destination, okey) DO UPDATE SET owner = EXCLUDED.owner, expires = EXCLUDED.expires "
                "WHERE key_lease.owner = EXCLUDED.owner OR key_lease.expires <= now() RETURNING okey",
                {**args, "keys": keys})
            held = [r[0] for r in cur.fetchall()]
            if not held:
                return []
            # the head of each key: whoever's lock picked the candidates, these are the oldest rows
            cur.execute(
                "SELECT seq, destination, event_id, body, attempts, okey FROM outbox "
                "WHERE destination = %(d)s AND okey = ANY(%(held)s::text[]) ORDER BY seq LIMIT %(limit)s",
                {**args, "held": held})
            return [(Pending(int(s), d, e, bytes(b), int(a)), k) for s, d, e, b, a, k in cur.fetchall()]

        try:
            claimed = self._tx(work, "cannot claim outbox rows")
        except OutboxError as exc:
            # two claimants deadlocked or conflicted: nothing was taken, the next claim tries again
            if isinstance(exc.cause, (pg.errors.TransactionRollback, pg.errors.DeadlockDetected)):
                return []
            raise
        with self._inflight_lock:
            for p, k in claimed:
                self._inflight[p.seq] = (destination, k)
        return [p for p, _ in claimed]

    def renew(self) -> None:
        self._tx(lambda cur: cur.execute(
            "UPDATE key_lease SET expires = now() + %s * interval '1 second' WHERE owner = %s",
            (self.lease, self.owner)), "cannot renew the outbox leases")

    def settle(self, delivered: Iterable[int] = (), retry: Iterable[tuple[int, str]] = (),
               dead: Iterable[tuple[int, DeadLetter]] = ()) -> None:
        done = [int(s) for s in delivered]
        again = [(int(s), redact(err)[:2000]) for s, err in retry]
        moved = list(dead)
        seqs = done + [s for s, _ in again] + [s for s, _ in moved]
        with self._inflight_lock:
            destinations = sorted({self._inflight[s][0] for s in seqs if s in self._inflight})

        def work(cur: psycopg.Cursor[Any]) -> None:
            # losing this commit to a crash means a redelivery with the same id, never a loss
            cur.execute("SET LOCAL synchronous_commit = off")
            if done:
                cur.execute("DELETE FROM outbox WHERE seq = ANY(%s::bigint[])", (done,))
            if again:
                cur.execute(
                    "UPDATE outbox o SET attempts = o.attempts + 1, last_error = v.err "
                    "FROM unnest(%s::bigint[], %s::text[]) AS v(seq, err) WHERE o.seq = v.seq",
                    ([s for s, _ in again], [e for _, e in again]))
            if moved:
                cur.execute("SELECT seq FROM outbox WHERE seq = ANY(%s::bigint[]) FOR UPDATE",
                            ([s for s, _ in moved],))
                present = {int(r[0]) for r in cur.fetchall()}
                # a row another claimant already settled is not dead-lettered a second time
                _insert_dead(cur, [d for s, d in moved if s in present])
                cur.execute("DELETE FROM outbox WHERE seq = ANY(%s::bigint[])", (sorted(present),))
            cur.execute("UPDATE key_lease SET expires = now() + %s * interval '1 second' WHERE owner = %s",
                        (self.lease, self.owner))
            if destinations:
                # keys with nothing left are let go at once rather than when their lease runs out
                cur.execute(
                    "DELETE FROM key_lease l WHERE l.owner = %s AND l.destination = ANY(%s::text[]) AND NOT EXISTS "
                    "(SELECT 1 FROM outbox o WHERE o.destination = l.destination AND o.okey = l.okey)",
                    (self.owner, destinations))

        self._tx(work, "cannot settle outbox rows")
        with self._inflight_lock:
            for s in seqs:
                self._inflight.pop(s, None)

    def release(self) -> None:
        with self._inflight_lock:
            self._inflight.clear()
        if self._schema_ready:
            self._tx(lambda cur: cur.execute("DELETE FROM key_lease WHERE owner = %s", (self.owner,)),
                     "cannot release the outbox leases")

    def wait(self, destination: str, timeout: float = IDLE_WAIT) -> bool:
        return self._listener.wait(destination, timeout)

    # --- backlog --------------------------------------------------------------------------------------

    def depth(self) -> int:
        return int(self._read("SELECT count(*) FROM outbox")[0][0])

    def depths(self) -> dict[str, int]:
        return {d: int(n) for d, n in self._read("SELECT destination, count(*) FROM outbox GROUP BY destination")}

    def backlog(self) -> dict[str, Backlog]:
        def work(cur: psycopg.Cursor[Any]) -> dict[str, Backlog]:
            cur.execute("SELECT destination, count(*) FROM key_lease WHERE expires > now() GROUP BY destination")
            leased = {d: int(n) for d, n in cur.fetchall()}
            cur.execute("SELECT destination, count(*), min(created) FROM outbox GROUP BY destination")
            return {d: Backlog(int(n), float(oldest), leased.get(d, 0)) for d, n, oldest in cur.fetchall()}

        return self._tx(work, "outbox read failed")

    def unwritable(self) -> str | None:
        """Why intake cannot be written now (PostgreSQL unreachable), None when it can (``/readyz``)."""
        try:
            self._read("SELECT 1")
        except OutboxError as exc:
            return exc.reason
        return None

    def expire(self, max_age: float, reason: str) -> list[DeadLetter]:
        """Move every row older than ``max_age`` seconds to the dead letters, with its destination, its
        last error and ``reason``; what was moved. Replicas expiring at once move each row once (the
        DELETE takes it); a row in flight elsewhere settles as a no-op."""
        def work(cur: psycopg.Cursor[Any]) -> list[DeadLetter]:
            cur.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE created < %s ORDER BY seq "
                "LIMIT 10000 FOR UPDATE SKIP LOCKED) RETURNING seq, destination, event_id, body, attempts, last_error",
                (time.time() - max_age,))
            moved = [DeadLetter(PUBLISH, "outbox", PendingTooLongError.code,
                                f"{reason}; last error: {last}" if last else reason, bytes(body),
                                f"outbox row {seq}", dest, eid, {"attempts": int(attempts)})
                     for seq, dest, eid, body, attempts, last in sorted(cur.fetchall())]
            _insert_dead(cur, moved)
            return moved

        return self._tx(work, "cannot expire outbox rows")

    def heads(self) -> list[Head]:
        """Per destination: rows waiting, the age of the oldest, its attempts and its last error (``status``,
        the backlog gauges), over every replica's rows, in one statement."""
        rows = self._read(
            "SELECT c.destination, c.n, extract(epoch FROM now()) - h.created, h.attempts, h.last_error FROM "
            "(SELECT destination, count(*) AS n FROM outbox GROUP BY destination) AS c CROSS JOIN LATERAL "
            "(SELECT created, attempts, last_error FROM outbox o WHERE o.destination = c.destination "
            "ORDER BY seq LIMIT 1) AS h ORDER BY c.destination")
        return [Head(d, int(n), max(0.0, float(age)), int(a), e) for d, n, age, a, e in rows]

    # --- dead letters ---------------------------------------------------------------------------------

    def dead_letter_usage(self) -> tuple[int, int]:
        """(rows, payload bytes) of the dead letters of every replica (``core/dead_letters.py``)."""
        rows, size = self._read("SELECT count(*), coalesce(sum(octet_length(payload)), 0) FROM dead_letter")[0]
        return int(rows), int(size)

    def dead_letter_refusal(self, nbytes: int) -> str | None:
        """Why a new dead letter of ``nbytes`` may not be stored (None when it may, and then it is counted
        against the bounds), over the dead letters of every replica; read again at most once a second."""
        return self._bounds.refusal(nbytes)

    @property
    def dead_letter_max_rows(self) -> int:
        return self._bounds.max_rows

    @dead_letter_max_rows.setter
    def dead_letter_max_rows(self, value: int) -> None:
        self._bounds.max_rows = value

    @property
    def dead_letter_max_bytes(self) -> int:
        return self._bounds.max_bytes

    @dead_letter_max_bytes.setter
    def dead_letter_max_bytes(self, value: int) -> None:
        self._bounds.max_bytes = value

    def dead_letters(self, *, limit: int = 100, after: int = 0) -> list[DeadLetterRecord]:
        return [_record(r) for r in self._read(
            f"SELECT {_DL_COLUMNS} FROM dead_letter WHERE id > %s ORDER BY id LIMIT %s", (after, limit))]

    def dead_letter(self, dl_id: int) -> DeadLetterRecord | None:
        rows = self._read(f"SELECT {_DL_COLUMNS} FROM dead_letter WHERE id = %s", (dl_id,))
        return _record(rows[0]) if rows else None

    def dead_letter_count(self) -> int:
        return int(self._read("SELECT count(*) FROM dead_letter")[0][0])

    def purge(self, ids: Sequence[int] | None = None) -> int:
        def work(cur: psycopg.Cursor[Any]) -> int:
            if ids is None:
                cur.execute("DELETE FROM dead_letter")
            else:
                cur.execute("DELETE FROM dead_letter WHERE id = ANY(%s::bigint[])", ([int(i) for i in ids],))
            return int(cur.rowcount)

        return self._tx(work, "cannot purge dead letters")

    def resolve(self, dl_id: int, rows: Sequence[OutboxRow], dead: Sequence[DeadLetter] = (),
                gate: Gate | None = None) -> None:
        self._ready_for_intake()
        work = _PgInsert(rows, dead, replaces=dl_id, gate=gate, state=self.state)
        self._committer.submit(work).result()  # type: ignore[arg-type]

    def failed_again(self, dl_id: int, error: BatchBridgeError) -> None:
        self._tx(lambda cur: cur.execute(
            "UPDATE dead_letter SET attempts = attempts + 1, code = %s, reason = %s, location = %s WHERE id = %s",
            (error.code, _t(redact(error.reason)), _t(redact(error.where)) if error.where else None, dl_id)),
            "cannot update the dead letter")
