"""The outbox-store interface: what intake and the delivery workers need from the outbox, whatever
holds it (one SQLite file on one host, or PostgreSQL shared by replicas on many).

The methods and types are those of the SQLite :class:`~batchbridge.core.outbox.Outbox`
(``submit``/``asubmit``/``put`` for group-committed intake, ``settle``, the dead-letter calls, ``depths``)
plus what sharing one outbox between processes adds: ``claim`` with a lease, ``renew``/``release`` of
those leases, ``wait`` for new work, and ``backlog`` figures. Both stores implement all of it: the SQLite
outbox with a lease table in the same file (``serve --workers N`` on one host),
:class:`~batchbridge.core.store_postgres.PostgresStore` on a database shared by replicas.
:func:`~batchbridge.core.stores.open_store` opens the one a config names; the delivery workers
(``core/delivery.py``) use nothing but this interface.

Invariants of claims (tested by ``tests/store_conformance.py`` on every store):

1. **One claimant per ordering key.** Rows carry the ordering key of their event
   (:func:`~batchbridge.core.event.ordering_key`: the job id, else the environment id; events without
   either share the key ``""``). Per destination, a key is leased to at most one claimant at a time;
   :meth:`OutboxStore.claim` returns only rows whose key it holds. Leases are timed by the database's
   clock, not the claimants', so clock skew between hosts cannot make two owners.
2. **Order per key.** A claim returns the *oldest* pending rows of each key it holds, in intake order
   (seq), and nothing of a key behind a row of it that is still pending: a row settled as ``retry``
   stays at the head of its key and comes back first.
3. **No row twice from one claimant while its lease holds.** A row handed out by ``claim`` is not
   handed out again by the same store object until it is settled (delivered, retried, dead) or the
   claim is released -- even when the lease expired meanwhile and was taken again.
4. **Expired leases go to others.** A claimant that dies (or stalls past ``lease`` seconds without
   ``claim``/``renew``/``settle``) loses its keys; another claimant's next ``claim`` takes them and gets
   the same rows again. Those rows may then reach the destination twice, always with equal event ids
   (the CloudEvents ``id``), never not at all.
5. **Settling is idempotent and never loses.** ``settle`` of rows another claimant already deleted is a
   no-op; a row is deleted only as delivered or together with the insertion of its dead letter.
6. **Intake is durable when acknowledged.** The future of ``submit`` resolves only after the commit
   is durable; rows of one request are committed together or not at all.

The workers of one ``serve --workers N`` on a SQLite file add one rule on top (``Outbox._delivers``):
**one deliverer per destination**. A ``destination_lease`` in the file names the worker that claims a
destination's rows; the others' claims return nothing until it lets go (a clean stop), its lease
runs out, or its pid is gone from the host (then its key leases go too, at the next claim). Workers
share one host's cores and disk, and every batch costs a sync at the destination and a transaction
here whatever its size, so N deliverers sent N times the batches for the same events. Replicas on
PostgreSQL share a destination by its keys, as above: each brings its own host.

When the store cannot be reached (PostgreSQL down, the file unreadable), every call raises
:class:`StoreUnavailableError` (an :class:`~batchbridge.core.outbox.OutboxError`, ``retryable``):
intake answers 503, workers back off, and work resumes once it is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .errors import BatchBridgeError
from .outbox_rows import NO_KEY as NO_KEY  # re-exported: the stores and their tests take it from here
from .outbox_rows import DeadLetter, DeadLetterRecord, Inserted, OutboxError, OutboxRow, Pending

#: default lease on an ordering key, seconds: long enough for a slow batch to a slow backend (a claimant
#: renews while it works), short enough that a dead replica's keys move on quickly
LEASE = 30.0
#: how long an idle claimant waits for a wake-up before it looks again anyway (rows whose lease
#: expired send no notification)
IDLE_WAIT = 1.0


class StoreUnavailableError(OutboxError):
    """The outbox store cannot be reached right now (database down, connection lost); retry later."""

    code = "outbox_unavailable"

    def __init__(self, reason: str, *, where: str | None = None, cause: BaseException | None = None) -> None:
        super().__init__(reason, where=where, retryable=True, cause=cause)


@dataclass(frozen=True, slots=True)
class Backlog:
    """One destination's share of the outbox."""

    #: rows waiting (claimed or not)
    rows: int
    #: when the oldest of them was committed (Unix time); None when there are none
    oldest: float | None
    #: ordering keys currently leased by some claimant
    leased_keys: int = 0


@runtime_checkable
class OutboxStore(Protocol):
    """See the module docstring for the invariants every implementation keeps."""

    #: where the store is, for messages (secrets redacted)
    where: str
    #: seconds a claim holds its keys without ``claim``/``renew``/``settle``
    lease: float

    # --- intake (group-committed) -------------------------------------------------------------------

    def submit(self, rows: Sequence[OutboxRow], dead: Sequence[DeadLetter] = ()) -> Future[Inserted]:
        """Queue for the next group commit; resolves once durable, to the seqs and dead-letter ids."""
        ...

    def asubmit(self, rows: Sequence[OutboxRow], dead: Sequence[DeadLetter] = ()) -> asyncio.Future[Inserted]:
        """:meth:`submit` for asyncio, called on the running loop."""
        ...

    def put(self, rows: Sequence[OutboxRow], dead: Sequence[DeadLetter] = ()) -> Inserted:
        """:meth:`submit` and wait."""
        ...

    def on_commit(self, listener: Callable[[list[tuple[int, OutboxRow]]], None]) -> None:
        """Call ``listener`` after each intake commit with the (seq, row) pairs it made durable."""
        ...

    # --- claims ------------------------------------------------------------------------------------------

    def destinations(self) -> list[str]:
        """Destinations with rows waiting."""
        ...

    def claim(self, destination: str, limit: int) -> list[Pending]:
        """Up to ``limit`` rows for ``destination``, in seq order, each of a key this claimant now leases."""
        ...

    def renew(self) -> None:
        """Extend the lease on every key this claimant holds (call while a slow batch is in flight)."""
        ...

    def settle(self, delivered: Iterable[int] = (), retry: Iterable[tuple[int, str]] = (),
               dead: Iterable[tuple[int, DeadLetter]] = ()) -> None:
        """In one transaction: delete delivered rows, note failed attempts, move refused rows to the
        dead letters; the claim on those rows ends (their keys stay leased)."""
        ...

    def release(self) -> None:
        """Give back every key this claimant holds, so that others take them at once (a clean stop)."""
        ...

    def wait(self, destination: str, timeout: float) -> bool:
        """Block until new rows for ``destination`` may be there (True) or ``timeout`` passes (False)."""
        ...

    # --- backlog -------------------------------------------------------------------------------------------

    def depth(self) -> int:
        ...

    def depths(self) -> dict[str, int]:
        ...

    def backlog(self) -> dict[str, Backlog]:
        ...

    # --- dead letters ----------------------------------------------------------------------------------

    def dead_letters(self, *, limit: int = 100, after: int = 0) -> list[DeadLetterRecord]:
        ...

    def dead_letter(self, dl_id: int) -> DeadLetterRecord | None:
        ...

    def dead_letter_count(self) -> int:
        ...

    def purge(self, ids: Sequence[int] | None = None) -> int:
        """Delete the given dead letters (all when None); how many went."""
        ...

    def resolve(self, dl_id: int, rows: Sequence[OutboxRow], dead: Sequence[DeadLetter] = ()) -> None:
        """Replace a dead letter by what replaying it produced, atomically."""
        ...

    def failed_again(self, dl_id: int, error: BatchBridgeError) -> None:
        """A replay failed: keep the dead letter, record the latest reason."""
        ...

    def close(self) -> None:
        ...
