"""The subject-state store: the latest event of every resource (``subject``), beside the outbox.

Every event the bridge takes in is *observed* here, inside the very transaction that commits its
outbox rows, so that the check "is this event stale for its subject?" and the advance of the
subject's latest sequence are one atomic step with intake: two requests racing on one subject can
never both pass as newest, and nothing is committed to the outbox that the state does not reflect.

The store keeps, per subject: the latest event (highest ``sequence``; among equals the highest id, so
the result does not depend on arrival order) with its type, state, time, id and provider; when the
subject was last observed (for ``state_retention``); and a short history of its distinct transitions
(for the status page's timelines). Events without a ``sequence`` (no time) can only fill in a
subject nothing better is known of.

:class:`StateStore` is the interface; :class:`SqliteStateStore` keeps it in the outbox's SQLite file
(own table, ``subject_state``). A PostgreSQL outbox provides the same four operations on its own
connection, and its ``observe`` runs in its intake transaction the same way.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from .event import _segment as segment
from .sequence import partition_key, sequence_of

#: transitions remembered per subject for the timelines (the latest ones by sequence)
HISTORY_LENGTH = 12
#: default for ``state_retention``: subjects not observed for this long are forgotten (seconds)
DEFAULT_RETENTION = 7 * 24 * 3600.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS subject_state (
    subject      TEXT PRIMARY KEY,
    sequence     TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    type         TEXT,
    state        TEXT,
    time         TEXT,
    provider     TEXT,
    partitionkey TEXT,
    updated      REAL NOT NULL,
    history      TEXT NOT NULL
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class Observation:
    """What the store needs of one event."""

    subject: str
    #: ``""`` when the event has none: lower than every real sequence
    sequence: str
    event_id: str
    type: str | None
    state: str | None
    time: str | None
    provider: str | None
    partitionkey: str | None

    @classmethod
    def of(cls, event: Mapping[str, Any]) -> Observation | None:
        """None for an event without a subject or id (nothing to key it by)."""
        subject, event_id = event.get("subject"), event.get("id")
        if not isinstance(subject, str) or not subject or not isinstance(event_id, str):
            return None
        data = event.get("data")
        data = data if isinstance(data, Mapping) else {}
        return cls(subject, sequence_of(event) or "", event_id, _str(event.get("type")), _str(data.get("state")),
                   _str(event.get("time")), _str(data.get("provider")),
                   _str(event.get("partitionkey")) or partition_key(event))


@dataclass(frozen=True, slots=True)
class Prior:
    """The subject's state just before an observation: its latest sequence and when it was last seen."""

    sequence: str
    updated: float


@dataclass(frozen=True, slots=True)
class SubjectState:
    """One row of the state view."""

    subject: str
    type: str | None
    state: str | None
    time: str | None
    sequence: str | None
    id: str
    provider: str | None
    partitionkey: str | None
    updated: float
    #: ``[sequence, state, time, id]`` per remembered transition, oldest first
    history: tuple[tuple[str | None, str | None, str | None, str], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The keys ``batchbridge state --json`` and ``GET /state`` print."""
        return {"subject": self.subject, "type": self.type, "state": self.state, "time": self.time,
                "sequence": self.sequence, "id": self.id, "provider": self.provider}


class StateStore(Protocol):
    """Where the latest event per subject lives. ``tx`` is the open intake transaction of the outbox
    the store belongs to (a ``sqlite3.Connection`` here)."""

    def observe(self, tx: Any, observations: Sequence[Observation]) -> list[Prior | None]:
        """Record the observations in order, inside ``tx``; for each, the subject's state before it
        (None when the subject was unknown) -- earlier observations of the same call included."""
        ...

    def query(self, pattern: str | None = None, *, limit: int | None = None) -> list[SubjectState]:
        """The subjects matching the glob ``pattern`` (all when None), by subject."""
        ...

    def recent(self, prefix: str, limit: int) -> list[str]:
        """The root subjects (``jobs/{id}``, ``environments/{id}``) of the partitions under ``prefix``
        observed most recently, newest first -- whether or not the root itself had events (Azure
        reports tasks, never jobs)."""
        ...

    def forget_idle(self, older_than: float) -> int:
        """Delete the subjects last observed before ``older_than`` (epoch seconds); how many went."""
        ...


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


_ROWS_PER_STATEMENT = 400  # 10 parameters a row
_UPSERT_HEAD = ("INSERT INTO subject_state (subject, sequence, event_id, type, state, time, provider, partitionkey, "
                "updated, history) VALUES ")
_UPSERT_TAIL = (" ON CONFLICT(subject) DO UPDATE SET sequence = excluded.sequence, event_id = excluded.event_id, "
                "type = excluded.type, state = excluded.state, time = excluded.time, provider = excluded.provider, "
                "partitionkey = excluded.partitionkey, updated = excluded.updated, history = excluded.history")
@functools.lru_cache(maxsize=64)
def _values(n: int) -> str:
    return _UPSERT_HEAD + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * n) + _UPSERT_TAIL


_COLUMNS = "subject, type, state, time, sequence, event_id, provider, partitionkey, updated, history"


class _Current:
    """A subject's row while one ``observe`` call works on it."""

    __slots__ = ("changed", "event_id", "history", "observation", "raw_history", "sequence", "updated")

    def __init__(self, sequence: str, event_id: str, updated: float, raw_history: str | None,
                 observation: Observation | None) -> None:
        self.sequence = sequence
        self.event_id = event_id
        self.updated = updated
        self.raw_history = raw_history
        self.history: list[list[Any]] | None = None
        self.observation = observation  # the latest event
        self.changed = False

    def entries(self) -> list[list[Any]]:
        if self.history is None:
            loaded = orjson.loads(self.raw_history) if self.raw_history else []
            self.history = loaded if isinstance(loaded, list) else []
        return self.history


class SqliteStateStore:
    """:class:`StateStore` in a table of the outbox's SQLite file. ``connect`` gives a connection for
    the reads and the retention deletes (the outbox's per-thread one)."""

    def __init__(self, read: Any, write: Any) -> None:
        #: ``read(sql, args) -> rows`` and ``write(work)``: the outbox's error-mapping helpers
        self._read = read
        self._write = write

    @staticmethod
    def create(conn: sqlite3.Connection) -> None:
        conn.executescript(SCHEMA)

    def observe(self, tx: sqlite3.Connection, observations: Sequence[Observation]) -> list[Prior | None]:
        if not observations:
            return []
        subjects = list({o.subject: None for o in observations})
        current: dict[str, _Current] = {}
        for start in range(0, len(subjects), 500):
            chunk = subjects[start:start + 500]
            # one row for the whole chunk: sqlite3 hands the GIL back and forth at every step of a
            # statement, and a step per subject stalls the event loop behind a big commit
            (packed,) = tx.execute(
                "SELECT json_group_array(json_array(subject, sequence, event_id, type, state, time, provider, "
                f"partitionkey, updated, history)) FROM subject_state WHERE subject IN ({', '.join('?' * len(chunk))})",
                chunk).fetchone()
            for subject, seq, event_id, type_, state, time_, provider, key, updated, history in orjson.loads(packed):
                latest = Observation(subject, seq, event_id, type_, state, time_, provider, key)
                current[subject] = _Current(seq, event_id, updated, history, latest)
        priors = _advance(current, observations, time.time())
        self._upsert(tx, [(s, c) for s, c in current.items() if c.changed])
        return priors

    @staticmethod
    def _upsert(tx: sqlite3.Connection, changed: list[tuple[str, _Current]]) -> None:
        for start in range(0, len(changed), _ROWS_PER_STATEMENT):
            chunk = changed[start:start + _ROWS_PER_STATEMENT]
            params: list[Any] = []
            for subject, c in chunk:
                o = c.observation
                assert o is not None
                params += (subject, o.sequence, o.event_id, o.type, o.state, o.time, o.provider, o.partitionkey,
                           c.updated, orjson.dumps(c.entries()).decode())
            tx.execute(_values(len(chunk)), params)

    def query(self, pattern: str | None = None, *, limit: int | None = None) -> list[SubjectState]:
        where, args = _glob_range(pattern)
        sql = f"SELECT {_COLUMNS} FROM subject_state{where} ORDER BY subject"
        rows = [_state(r) for r in self._read(sql, args)]
        if pattern is not None and _has_glob(pattern):
            rows = [r for r in rows if fnmatch.fnmatchcase(r.subject, pattern)]
        return rows[:limit] if limit is not None else rows

    def recent(self, prefix: str, limit: int) -> list[str]:
        rows = self._read("SELECT partitionkey, max(updated) AS last FROM subject_state WHERE subject >= ? AND "
                          "subject < ? AND partitionkey IS NOT NULL GROUP BY partitionkey ORDER BY last DESC, "
                          "partitionkey LIMIT ?", (prefix, prefix + "\U0010ffff", limit))
        return [prefix + segment(str(r[0])) for r in rows]

    def forget_idle(self, older_than: float) -> int:
        count: int = self._write(lambda conn: conn.execute(
            "DELETE FROM subject_state WHERE updated < ?", (older_than,)).rowcount)
        return count


def _advance(current: dict[str, _Current], observations: Sequence[Observation], now: float) -> list[Prior | None]:
    """Apply the observations, in order, to the subjects as they were read (``current``, completed here
    with the unknown ones): the prior of each, as :meth:`StateStore.observe` returns them. The same
    rule on every store: the highest (sequence, id) is the latest, whatever the arrival order."""
    priors: list[Prior | None] = []
    for o in observations:
        c = current.get(o.subject)
        if c is None:
            priors.append(None)
            c = current[o.subject] = _Current(o.sequence, o.event_id, now, None, o)
            c.history = []
        else:
            priors.append(Prior(c.sequence, c.updated))
            if (o.sequence, o.event_id) > (c.sequence, c.event_id):
                c.sequence, c.event_id, c.observation = o.sequence, o.event_id, o
        c.updated = now
        c.changed = True
        _remember(c.entries(), o)
    return priors


def _remember(history: list[list[Any]], o: Observation) -> None:
    """Add one transition to a subject's history (kept sorted by sequence, one entry per id, the
    latest :data:`HISTORY_LENGTH`)."""
    for entry in history:
        if entry[3] == o.event_id:
            return
    entry = [o.sequence or None, o.state, o.time, o.event_id]
    key = o.sequence
    i = len(history)
    while i > 0 and (history[i - 1][0] or "") > key:
        i -= 1
    history.insert(i, entry)
    if len(history) > HISTORY_LENGTH:
        del history[0]


_GLOB = re.compile(r"[*?\[]")


def _has_glob(pattern: str) -> bool:
    return _GLOB.search(pattern) is not None


def _glob_range(pattern: str | None) -> tuple[str, tuple[Any, ...]]:
    """A WHERE clause narrowing a glob to the subjects sharing its literal prefix (the primary key
    range); the glob itself is then applied in Python (``fnmatch``, so ``*`` also crosses ``/``)."""
    if pattern is None:
        return "", ()
    if not _has_glob(pattern):
        return " WHERE subject = ?", (pattern,)
    prefix = pattern[:_GLOB.search(pattern).start()]  # type: ignore[union-attr]
    if not prefix:
        return "", ()
    return " WHERE subject >= ? AND subject < ?", (prefix, prefix + "\U0010ffff")


def _state(r: Sequence[Any]) -> SubjectState:
    history = orjson.loads(r[9]) if r[9] else []
    return SubjectState(subject=r[0], type=r[1], state=r[2], time=r[3], sequence=r[4] or None, id=r[5],
                        provider=r[6], partitionkey=r[7], updated=float(r[8]),
                        history=tuple((h[0], h[1], h[2], h[3]) for h in history if isinstance(h, list) and len(h) == 4))
