"""What moves through the outbox, whatever store holds it: the rows intake writes (:class:`OutboxRow`),
the rows a delivery worker claims (:class:`Pending`), dead letters on their way in
(:class:`DeadLetter`) and out (:class:`DeadLetterRecord`), and the outbox's errors. Shared by the
SQLite outbox (``core/outbox.py``), the PostgreSQL store and the store interface (``core/store.py``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from .errors import BackendError, BatchBridgeError
from .event import ordering_key
from .secrets import redact_uri

#: dead-letter stages: where in the pipeline the item stopped
INTAKE, UNROUTED, PUBLISH = "intake", "unrouted", "publish"

class OutboxError(BackendError):
    """The outbox file could not be read or written (disk full, permissions, corruption)."""

    code = "outbox_error"


class PendingTooLongError(BackendError):
    """A row waited in the outbox longer than ``outbox.max_pending_age``; it went to the dead letters."""

    code = "pending_too_long"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    destination: str
    event_id: str | None
    event_type: str | None
    body: bytes
    #: the event ``body`` serialises, when the caller has it (not stored: it spares the publisher a
    #: parse when the row is handed over in memory)
    event: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    #: its ordering key (:func:`row_key`), when the caller computed it: a row that comes without its
    #: event (from the decoding process, ``core/intake_process.py``) is then not parsed for it
    key: str | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, destination: str, event: Mapping[str, Any]) -> OutboxRow:
        return cls(destination, _opt(event.get("id")), _opt(event.get("type")), orjson.dumps(event), event)


@dataclass(frozen=True, slots=True)
class Pending:
    """A row waiting for its destination."""

    seq: int
    destination: str
    event_id: str | None
    body: bytes
    attempts: int
    #: the parsed event, when the row was handed over in memory rather than read back
    event: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One item for the dead-letter table (secrets are scrubbed from the texts before storing)."""

    stage: str
    source: str
    code: str
    reason: str
    payload: bytes
    where: str | None = None
    destination: str | None = None
    event_id: str | None = None
    meta: Mapping[str, Any] | None = None

    @classmethod
    def of(cls, stage: str, source: str, payload: bytes, error: BatchBridgeError, *,
           destination: str | None = None, event_id: str | None = None,
           meta: Mapping[str, Any] | None = None) -> DeadLetter:
        return cls(stage, source, error.code, error.reason, payload, error.where, destination, event_id, meta)


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    id: int
    created: float
    stage: str
    source: str
    destination: str | None
    event_id: str | None
    code: str
    reason: str
    where: str | None
    payload: bytes
    meta: dict[str, Any]
    attempts: int

    def summary(self) -> dict[str, Any]:
        """JSON-ready, without the payload (``dlq list``); destinations redacted."""
        return {
            "id": self.id,
            "created": self.created,
            "stage": self.stage,
            "source": self.source,
            "destination": redact_uri(self.destination) if self.destination else None,
            "event_id": self.event_id,
            "error": self.code,
            "reason": self.reason,
            "where": self.where,
            "bytes": len(self.payload),
            "attempts": self.attempts,
        }


def _opt(v: Any) -> str | None:
    return None if v is None else str(v)


class Inserted(NamedTuple):
    """What one intake request wrote: the seqs of its rows (in order) and its dead-letter ids."""

    seqs: list[int]
    dead_ids: list[int]


_DL_COLUMNS = ("id, created, stage, source, destination, event_id, code, reason, location, payload, meta, "
               "attempts")


def _record(r: Sequence[Any]) -> DeadLetterRecord:
    meta = orjson.loads(r[10]) if r[10] else {}
    return DeadLetterRecord(int(r[0]), float(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], r[8], bytes(r[9]),
                            meta if isinstance(meta, dict) else {}, int(r[11]))




#: ordering key of events without a job or environment id: they keep their order among themselves
NO_KEY = ""


def row_key(row: OutboxRow) -> str:
    """The ordering key a row is claimed by (``core/store.py``): its event's job id, else its environment
    id, else :data:`NO_KEY` (also for a body that is not a JSON object: it is dead-lettered when claimed)."""
    if row.key is not None:
        return row.key
    event = row.event
    if event is None:
        try:
            parsed = orjson.loads(row.body)
        except orjson.JSONDecodeError:
            return NO_KEY
        if not isinstance(parsed, dict):
            return NO_KEY
        event = parsed
    return ordering_key(event) or NO_KEY
