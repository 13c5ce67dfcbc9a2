"""The bounds of the dead-letter store, whatever store holds it: ``outbox.dead_letter_max_rows`` and
``outbox.dead_letter_max_bytes`` (defaults 10,000 rows and 64 MiB), plus -- for a store on a local disk --
twice the free-space reserve, so dead letters never take the room intake and delivery need.

Every dead letter the bridge writes at intake passes :meth:`DeadLetterBounds.refusal` first: undecodable
input and unrouted events (``unrouted = "deadletter"``). What is refused is not kept (it is counted in
``rejected_unkept`` and logged); bad input must not crowd out good. Dead letters from delivery (a row a
backend refused, or one pending past ``max_pending_age``) replace a row already in the outbox, so they
take no new room and are always kept.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

#: default bounds (``outbox.dead_letter_max_rows`` / ``_max_bytes``)
DEAD_LETTER_MAX_ROWS = 10_000
DEAD_LETTER_MAX_BYTES = 64 * 1024 * 1024
#: how long the usage figures read from the store are trusted (``dlq purge`` may run in another process)
USAGE_TTL = 1.0

_USAGE_SQL = "SELECT count(*), coalesce(sum(length(payload)), 0) FROM dead_letter"


class DeadLetterBounds:
    """Counts new dead letters against the bounds. ``usage`` reads (rows, payload bytes) from the store;
    ``room`` (optional) returns the bytes the store's disk has left, None when unknown."""

    def __init__(self, usage: Callable[[], tuple[int, int]], *, max_rows: int = DEAD_LETTER_MAX_ROWS,
                 max_bytes: int = DEAD_LETTER_MAX_BYTES, reserve: int = 0,
                 room: Callable[[], int | None] | None = None) -> None:
        self._usage_of = usage
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.reserve = reserve
        self._room = room
        self._lock = threading.Lock()
        self._usage = [0, 0]
        self._until = 0.0

    def refusal(self, nbytes: int) -> str | None:
        """Why a new dead letter of ``nbytes`` may not be stored; None when it may (then it is counted)."""
        with self._lock:
            now = time.monotonic()
            if now >= self._until:
                rows, size = self._usage_of()
                self._usage = [int(rows), int(size)]
                self._until = now + USAGE_TTL
            rows, size = self._usage
            if rows + 1 > self.max_rows:
                return (f"the dead-letter store is full ({rows} of {self.max_rows} rows, "
                        "outbox.dead_letter_max_rows); `batchbridge dlq` replay or purge makes room")
            if size + nbytes > self.max_bytes:
                return (f"the dead-letter store is full ({size // 1024} KiB of {self.max_bytes // 1024} "
                        "KiB, outbox.dead_letter_max_bytes); `batchbridge dlq` replay or purge makes room")
            if self.reserve > 0 and self._room is not None:
                room = self._room()
                if room is not None and room - nbytes < 2 * self.reserve:
                    return (f"the disk holding the outbox is nearly full ({max(0, room) // 1024} KiB left): dead "
                            "letters are not kept, so that the room stays for accepting and delivering events")
            self._usage[0] += 1
            self._usage[1] += nbytes
            return None


def usage_of(store: Any) -> Callable[[], tuple[int, int]]:
    """How to read (rows, payload bytes) of ``store``'s dead letters: its ``dead_letter_usage()`` when it
    has one, else one query through its ``_read`` (the same SQL on SQLite and PostgreSQL)."""
    own = getattr(store, "dead_letter_usage", None)
    if own is not None:
        return own  # type: ignore[no-any-return]

    def read() -> tuple[int, int]:
        rows, size = store._read(_USAGE_SQL)[0]
        return int(rows), int(size)

    return read
