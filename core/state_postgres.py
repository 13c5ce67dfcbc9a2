"""The subject-state store on PostgreSQL, beside the outbox tables of
:class:`~batchbridge.core.store_postgres.PostgresStore` and observed in its intake transaction.

The same table and the same rules as :class:`~batchbridge.core.state.SqliteStateStore`; what changes
is how two intake transactions on one subject are kept apart. SQLite has one writer at a time; here
any number of replicas commit at once, so ``observe`` first *locks* every subject it is about to
judge, the unknown ones included: one upsert that inserts a placeholder row for a subject never seen
and, for a known one, updates nothing but takes its row lock -- and returns the row as it was. A
second replica observing the same subject waits on that lock until the first commits, then reads
what the first wrote, so two requests racing on one subject never both pass as newest. The subjects
are locked in one order (sorted), so two groups sharing several subjects do not deadlock.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from .event import _segment as segment
from .state import _COLUMNS, Observation, Prior, SubjectState, _advance, _Current, _glob_range, _has_glob, _state

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS subject_state (
        subject      text COLLATE "C" PRIMARY KEY,
        sequence     text NOT NULL,
        event_id     text NOT NULL,
        type         text,
        state        text,
        time         text,
        provider     text,
        partitionkey text,
        updated      double precision NOT NULL,
        history      text NOT NULL
    )""",
)
# ``COLLATE "C"``: the glob prefix ranges (``subject >= 'jobs/' AND subject < 'jobs/\U0010ffff'``) and
# the lock order need code-point order, whatever the database's default collation is

#: ``updated`` of a placeholder row: the subject was unknown before this transaction
_UNKNOWN = -1.0
#: subjects per statement (10 parameters a row for the write; PostgreSQL allows 65,535 a statement)
_ROWS_PER_STATEMENT = 1000


def _pg(sql: str) -> str:
    """The SQLite state store's ``?`` placeholders as psycopg's."""
    return sql.replace("?", "%s")


class PostgresStateStore:
    """:class:`~batchbridge.core.state.StateStore` in the outbox's PostgreSQL database. ``read(sql,
    args) -> rows`` and ``write(work)`` (``work(cursor)`` in one transaction) are the store's
    error-mapping helpers; ``observe`` gets the cursor of the intake transaction."""

    def __init__(self, read: Callable[[str, Sequence[Any]], list[Any]],
                 write: Callable[[Callable[[Any], Any]], Any]) -> None:
        self._read = read
        self._write = write

    @staticmethod
    def create(cur: Any) -> None:
        for statement in SCHEMA:
            cur.execute(statement)

    def observe(self, tx: Any, observations: Sequence[Observation]) -> list[Prior | None]:
        if not observations:
            return []
        subjects = sorted({o.subject for o in observations})
        current: dict[str, _Current] = {}
        now = time.time()
        for start in range(0, len(subjects), _ROWS_PER_STATEMENT):
            chunk = subjects[start:start + _ROWS_PER_STATEMENT]
            # the no-op update locks a known row and RETURNING shows it as it was; an unknown one
            # comes back as the placeholder, locked too (nobody else sees it before the commit)
            tx.execute(
                "INSERT INTO subject_state (subject, sequence, event_id, updated, history) "
                "SELECT s, '', '', %s, '' FROM unnest(%s::text[]) AS s ORDER BY s "
                "ON CONFLICT (subject) DO UPDATE SET updated = subject_state.updated "
                "RETURNING subject, sequence, event_id, type, state, time, provider, partitionkey, updated, history",
                (_UNKNOWN, chunk))
            for subject, seq, event_id, type_, state, time_, provider, key, updated, history in tx.fetchall():
                if updated == _UNKNOWN:
                    continue
                latest = Observation(subject, seq, event_id, type_, state, time_, provider, key)
                current[subject] = _Current(seq, event_id, updated, history, latest)
        priors = _advance(current, observations, now)
        self._upsert(tx, [(s, c) for s, c in sorted(current.items()) if c.changed])
        return priors

    @staticmethod
    def _upsert(tx: Any, changed: list[tuple[str, _Current]]) -> None:
        for start in range(0, len(changed), _ROWS_PER_STATEMENT):
            chunk = changed[start:start + _ROWS_PER_STATEMENT]
            columns: list[list[Any]] = [[] for _ in range(10)]
            for subject, c in chunk:
                o = c.observation
                assert o is not None
                for column, value in zip(columns, (subject, o.sequence, o.event_id, o.type, o.state, o.time,
                                                   o.provider, o.partitionkey, c.updated,
                                                   orjson.dumps(c.entries()).decode()), strict=True):
                    column.append(_t(value) if isinstance(value, str) else value)
            # every row exists (locked) since the placeholder upsert: this upsert only ever updates
            tx.execute(
                "INSERT INTO subject_state AS s (subject, sequence, event_id, type, state, time, provider, "
                "partitionkey, updated, history) SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], "
                "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::float8[], %s::text[]) "
                "ON CONFLICT (subject) DO UPDATE SET sequence = EXCLUDED.sequence, event_id = EXCLUDED.event_id, "
                "type = EXCLUDED.type, state = EXCLUDED.state, time = EXCLUDED.time, provider = EXCLUDED.provider, "
                "partitionkey = EXCLUDED.partitionkey, updated = EXCLUDED.updated, history = EXCLUDED.history",
                columns)

    def query(self, pattern: str | None = None, *, limit: int | None = None) -> list[SubjectState]:
        where, args = _glob_range(pattern)
        # the placeholder of a transaction in flight is invisible to others; this guards a reader on
        # the very connection that is observing (none today) all the same
        where = f"{where} AND updated >= 0" if where else " WHERE updated >= 0"
        sql = _pg(f"SELECT {_COLUMNS} FROM subject_state{where} ORDER BY subject")
        if pattern is None or not _has_glob(pattern):
            sql += " LIMIT %s" if limit is not None else ""
            args = (*args, limit) if limit is not None else args
        rows = [_state(r) for r in self._read(sql, args)]
        if pattern is not None and _has_glob(pattern):
            rows = [r for r in rows if fnmatch.fnmatchcase(r.subject, pattern)]
        return rows[:limit] if limit is not None else rows

    def recent(self, prefix: str, limit: int) -> list[str]:
        rows = self._read("SELECT partitionkey, max(updated) AS last FROM subject_state WHERE subject >= %s AND "
                          "subject < %s AND partitionkey IS NOT NULL GROUP BY partitionkey ORDER BY last DESC, "
                          "partitionkey LIMIT %s", (prefix, prefix + "\U0010ffff", limit))
        return [prefix + segment(str(r[0])) for r in rows]

    def forget_idle(self, older_than: float) -> int:
        def work(cur: Any) -> int:
            cur.execute("DELETE FROM subject_state WHERE updated < %s AND updated >= 0", (older_than,))
            return int(cur.rowcount)

        count: int = self._write(work)
        return count


def _t(value: str | None) -> str | None:
    """PostgreSQL text holds no NUL character; a reason quoting hostile input may (it must still be kept)."""
    return value.replace("\x00", "\ufffd") if value is not None and "\x00" in value else value
