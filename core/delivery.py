"""Delivery: the outbox's rows to their destinations, one worker thread per destination, over the
outbox-store interface only (:class:`~batchbridge.core.store.OutboxStore`: the SQLite outbox, or
PostgreSQL shared by replicas).

A worker loops: **claim** a batch (rows of ordering keys this process now leases) -> **publish** it
through the destination's publisher -> **settle** what the backend said (delivered rows deleted,
failed ones kept with the attempt noted, refused ones moved to the dead letters). A backend that is
down only delays its own destination: its worker backs off exponentially while the rows stay in the
store. Several processes (``serve --workers N``, replicas on PostgreSQL) run such workers on one store
at once; the leases keep them apart.

**The in-memory hand-over, and its invariants.** Rows committed by this process's intake are offered
to the workers in memory (:meth:`Delivery.offer`, from the store's commit listener). What is handed
over is a *wake-up* and the *parsed event* of each row, keyed by its seq -- never the right to publish
it: every row a worker publishes came from :meth:`~batchbridge.core.store.OutboxStore.claim`. So:

1. **No row is published twice by one process.** ``claim`` never hands out a row in flight (store
   invariant 3); a worker settles every row it claimed before that key's next rows come, and when a
   settle fails it keeps the outcome and writes it first on its next turn instead of claiming again
   (the rows stay in flight meanwhile). Across a restart a row may go out again, with the same id.
2. **Order per key.** ``claim`` returns each key's oldest rows in intake order and nothing behind a
   row still in flight (store invariant 2); a worker publishes a batch in that order, and a row
   settled as ``retry`` stays at the head of its key, so it goes out again before the rows behind it.
3. **Read-back after failures and restarts.** The store is the only source: after a failed batch, a
   full hand-over cache, a restart, or rows another process wrote (another worker's intake,
   ``dlq replay``), the next ``claim`` finds them. The cache only spares the JSON parse of a row this
   process committed; a row missing from it (evicted, or committed elsewhere) is parsed from its body.

``tests/test_delivery.py`` holds a test for each.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from .backends import open_publisher
from .config import OutboxSettings
from .errors import BatchBridgeError, ConfigError, MalformedPayloadError
from .metrics import Stats
from .outbox_rows import PUBLISH, DeadLetter, OutboxRow, Pending
from .outcomes import PublishResult
from .publisher import Publisher, Stored, wrap_error
from .registry import check_uri
from .retry import Backoff, ErrorCode, waits_for_destination
from .secrets import redact, redact_uri
from .store import OutboxStore

log = logging.getLogger("batchbridge.delivery")

#: how long an idle worker waits before it claims again without being woken (an expired lease of a
#: dead worker sends no wake-up)
IDLE_POLL = 1.0
#: the slices of an idle wait, so that a stop is seen quickly
_WAIT_SLICE = 0.2
#: parsed events kept per destination for rows this process committed (the hand-over cache); at
#: least this many, or four batches
CACHE_MIN = 1000


class Delivery:
    """The delivery workers of one process over one store. ``opener`` opens a destination's publisher
    (the default: :func:`~batchbridge.core.backends.open_publisher`)."""

    def __init__(self, store: OutboxStore, settings: OutboxSettings, stats: Stats, *,
                 opener: Callable[[str], Publisher] = open_publisher) -> None:
        self.store = store
        self.settings = settings
        self.stats = stats
        self.opener = opener
        self.stopping = threading.Event()
        self._workers: dict[str, _Worker] = {}
        self._lock = threading.Lock()
        self._started = False
        self._renewer: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._started and not self.stopping.is_set()

    def start(self, destinations: Iterable[str]) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            self.stopping.clear()
        for d in destinations:
            self.worker(d)
        self._renewer = threading.Thread(target=self._renew, name="batchbridge-lease-renew", daemon=True)
        self._renewer.start()

    def worker(self, destination: str) -> _Worker:
        with self._lock:
            w = self._workers.get(destination)
            if w is None:
                w = self._workers[destination] = _Worker(self, destination)
                if self.running:
                    w.thread.start()
            return w

    def offer(self, committed: list[tuple[int, OutboxRow]]) -> None:
        """On the store's committer thread, right after an intake commit: wake the workers of those
        destinations and give them the parsed events (a worker not running yet finds the rows by
        claiming; see the module docstring)."""
        if not self.running:
            return
        by_destination: dict[str, list[tuple[int, OutboxRow]]] = {}
        for item in committed:
            by_destination.setdefault(item[1].destination, []).append(item)
        for destination, items in by_destination.items():
            self.worker(destination).offer(items)

    def wake_all(self) -> None:
        with self._lock:
            workers = list(self._workers.values())
        for w in workers:
            w.wake.set()

    def failing(self) -> dict[str, tuple[float, str]]:
        """Destinations (redacted) whose worker has been failing without a success since: for how many
        seconds, and the last error (redacted)."""
        now = time.monotonic()
        with self._lock:
            workers = list(self._workers.values())
        return {w.label: (now - w.failing_since, w.last_error or "") for w in workers
                if w.failing_since is not None}

    def _renew(self) -> None:
        """Keep this process's leases while a slow batch is in flight (a settle renews them too)."""
        every = max(0.05, self.store.lease / 3)
        while not self.stopping.wait(every):
            try:
                self.store.renew()
            except BatchBridgeError as exc:
                log.warning("cannot renew the outbox leases: %s", redact(str(exc)))

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the workers (each finishes its batch in flight); False if one did not finish in time
        (its rows stay in the store, and its lease runs out)."""
        with self._lock:
            self.stopping.set()
            workers = list(self._workers.values())
        for w in workers:
            w.wake.set()
        deadline = time.monotonic() + timeout
        finished = True
        for w in workers:
            if w.thread.is_alive():
                w.thread.join(max(0.0, deadline - time.monotonic()))
                finished = finished and not w.thread.is_alive()
        if self._renewer is not None and self._renewer.is_alive():
            self._renewer.join(max(0.0, deadline - time.monotonic()))
        if finished:
            with contextlib.suppress(BatchBridgeError):
                self.store.release()
        return finished


@dataclass
class _Outcome:
    delivered: list[int]
    retry: list[tuple[int, str]]
    dead: list[tuple[int, DeadLetter]]
    last_error: BatchBridgeError | None = None


class _Worker:
    """Claims, publishes and settles one destination's rows, with backoff while it is down."""

    def __init__(self, delivery: Delivery, destination: str) -> None:
        self.delivery = delivery
        self.destination = destination
        self.label = redact_uri(destination)
        self.wake = threading.Event()
        self.thread = threading.Thread(target=self._run, name="batchbridge-publish", daemon=True)
        self._publisher: Publisher | None = None
        self._failures = 0
        #: monotonic time of the first failure since the last success (``/readyz``)
        self.failing_since: float | None = None
        #: why the last attempt failed (redacted); None once a batch went through
        self.last_error: str | None = None
        #: what the backend said that could not be written to the store yet (e.g. a full disk): settled
        #: before anything else is claimed (invariant 1)
        self._unsettled: _Outcome | None = None
        #: rows claimed in the transaction that settled the last batch (:meth:`_settle_and_claim`)
        self._claimed: list[Pending] = []
        self._cache: OrderedDict[int, Mapping[str, Any]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._cache_limit = max(4 * delivery.settings.batch_size, CACHE_MIN)
        #: the publisher sends the stored bytes as they are (``Publisher.takes_stored``): no events cached
        self._stored = False

    def offer(self, items: list[tuple[int, OutboxRow]]) -> None:
        with self._cache_lock:
            for seq, row in items:
                if row.event is not None and not self._stored:
                    self._cache[seq] = row.event
            while len(self._cache) > self._cache_limit:
                self._cache.popitem(last=False)  # the oldest: the row is parsed from its body instead
        self.wake.set()

    def _event(self, p: Pending) -> Mapping[str, Any] | None:
        with self._cache_lock:
            event = self._cache.pop(p.seq, None)
        if event is not None:
            return event
        try:
            parsed = orjson.loads(p.body)
        except orjson.JSONDecodeError:
            return None
        return parsed if isinstance(parsed, dict) else None

    def _as_stored(self, p: Pending) -> Stored | None:
        """The row as it is stored, for a publisher that sends those bytes; None when they are not a JSON
        object (dead-lettered, as :meth:`_event` finds). Parsed only to check it, and dropped at once:
        holding a batch of parsed events is what made delivery the server's largest cost under a burst."""
        with self._cache_lock:
            self._cache.pop(p.seq, None)
        try:
            ok = orjson.loads(p.body).__class__ is dict
        except orjson.JSONDecodeError:
            return None
        return Stored(p.event_id, p.body) if ok else None

    def _takes_stored(self) -> bool:
        takes: Callable[[], bool] | None = getattr(self._publisher, "takes_stored", None)
        self._stored = takes is not None and takes()
        return self._stored

    def _run(self) -> None:
        d = self.delivery
        try:
            while not d.stopping.is_set():
                try:
                    self._turn()
                except Exception as exc:
                    # a bug must not end this destination's delivery for good: nothing restarts the
                    # thread, and with ``serve --workers N`` its worker would keep the destination's
                    # lease (renewed by another thread) while delivering nothing. The rows stay in the
                    # store; those of this turn stay in flight here until this process stops
                    delay = self._failed(wrap_error(exc, ErrorCode.INTERNAL, self.label))
                    log.exception("delivery to %s failed unexpectedly; retrying in %.1fs", self.label, delay)
                    d.stopping.wait(delay)
        finally:
            self._close_publisher()

    def _turn(self) -> None:
        """Settle what is owed, claim (unless the last settle claimed already), send -- or wait for rows."""
        d = self.delivery
        self.wake.clear()
        if self._unsettled is not None and not self._settle(self._unsettled):
            return
        rows, self._claimed = self._claimed, []
        if not rows:
            try:
                rows = d.store.claim(self.destination, d.settings.batch_size)
            except BatchBridgeError as exc:
                self._backoff(exc)
                return
        if rows:
            self._send(rows)
        else:
            self._idle()

    def _idle(self) -> None:
        """Wait for rows: this process's commits wake us at once, other processes' through the store."""
        d = self.delivery
        deadline = time.monotonic() + IDLE_POLL
        while not d.stopping.is_set() and not self.wake.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                if d.store.wait(self.destination, min(remaining, _WAIT_SLICE)):
                    return
            except BatchBridgeError as exc:
                self._backoff(exc)
                return

    def _backoff(self, exc: BatchBridgeError) -> None:
        delay = self._failed(exc)
        log.warning("%s unavailable (%s); retrying in %.1fs", self.label, redact(str(exc)), delay)
        self.delivery.stopping.wait(delay)

    def _failed(self, exc: BatchBridgeError) -> float:
        """Note a failure (for ``/readyz`` and ``status``); the pause before the next attempt, seconds."""
        self.last_error = redact(f"{exc.code}: {exc}")
        o = self.delivery.settings
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        self._failures += 1
        return Backoff(o.backoff_initial, o.backoff_max).delay(self._failures)

    def _close_publisher(self) -> None:
        if self._publisher is not None:
            try:
                self._publisher.close()
            except Exception as exc:  # closing a broken client must not kill the loop
                log.debug("closing the publisher for %s failed: %s", self.label, redact(str(exc)))
            self._publisher = None

    def _dead(self, p: Pending, error: BatchBridgeError) -> tuple[int, DeadLetter]:
        return p.seq, DeadLetter.of(PUBLISH, "outbox", p.body, error, destination=self.destination,
                                    event_id=p.event_id)

    def _malformed(self, p: Pending) -> tuple[int, DeadLetter]:
        return self._dead(p, MalformedPayloadError("outbox row is not a JSON object", where=f"outbox row {p.seq}"))

    def _open(self, rows: list[Pending]) -> bool:
        """Open the destination's publisher; False when it cannot be, ``rows`` then settled for it."""
        try:
            check_uri(self.destination)
        except ConfigError as exc:
            # a URI no publisher can ever open (written by an older config): waiting would be for
            # ever, so the rows go to the dead letters, where `dlq replay --to` can redirect them
            self._settle(_Outcome([], [], [self._dead(p, exc) if self._event(p) is not None else self._malformed(p)
                                           for p in rows]))
            return False
        try:
            self._publisher = self.delivery.opener(self.destination)
        except BatchBridgeError as exc:
            # whatever stops the client from opening (endpoint down, queue missing, bad credentials)
            # is about the destination, not the events: they wait for it instead of being dead-lettered,
            # with the attempt and the reason noted on them for `batchbridge status`
            if self._settle(_Outcome([], [(p.seq, f"{exc.code}: {exc}") for p in rows], [])):
                self._backoff(exc)
            return False
        return True

    def _send(self, rows: list[Pending]) -> None:
        d = self.delivery
        stats = d.stats
        if self._publisher is None and not self._open(rows):
            return
        assert self._publisher is not None
        # file:// (a publisher that stores the body alone) gets the rows' bytes as they are; else events
        stored = self._takes_stored()
        events: list[tuple[Pending, Any]] = []
        dead: list[tuple[int, DeadLetter]] = []
        for p in rows:
            event = self._as_stored(p) if stored else self._event(p)
            if event is None:
                dead.append(self._malformed(p))
            else:
                events.append((p, event))
        try:
            started = time.monotonic()
            try:
                publish = self._publisher.publish_stored if stored else self._publisher.publish
                results = publish([e for _, e in events])
            finally:
                stats.observe_publish(self.destination, time.monotonic() - started)
        except BatchBridgeError as exc:
            results = [PublishResult(p.event_id, exc) for p, _ in events]
        except Exception as exc:  # a driver bug must not lose rows: keep them and back off
            err = wrap_error(exc, ErrorCode.INTERNAL, self.label)
            results = [PublishResult(p.event_id, err) for p, _ in events]
        delivered: list[int] = []
        retry: list[tuple[int, str]] = []
        last_error: BatchBridgeError | None = None
        for (p, _), r in zip(events, results, strict=True):
            if r.error is None:
                delivered.append(p.seq)
            elif waits_for_destination(r.error.error_code):
                retry.append((p.seq, f"{r.error.code}: {r.error}"))
                last_error = r.error
            else:
                dead.append(self._dead(p, r.error))
        outcome = _Outcome(delivered, retry, dead, last_error)
        if last_error is None and not d.stopping.is_set():
            if self._settle_and_claim(outcome):
                self._failures = 0
                self.failing_since = None
                self.last_error = None
            return
        if not self._settle(outcome):
            return
        if last_error is not None:
            self._close_publisher()
            self._backoff(last_error)
        else:
            self._failures = 0
            self.failing_since = None
            self.last_error = None

    def _settle(self, outcome: _Outcome) -> bool:
        """Write what the backend said to the store; False (after backing off) when that failed -- the
        outcome is then kept and written first on the next turn, and its rows are not published again
        unless the process stops first (then they go out again: same ids, consumers can dedupe)."""
        store = self.delivery.store
        return self._write(outcome, lambda: store.settle(outcome.delivered, outcome.retry, outcome.dead))

    def _settle_and_claim(self, outcome: _Outcome) -> bool:
        """:meth:`_settle` a batch that went through (no retries), and claim the next rows in the same
        transaction where the store can (the SQLite outbox: one turn at the file's write lock instead of
        two); they are what the next turn sends (invariant 1 holds: the batch is settled before any of
        its keys' next rows are claimed)."""
        d = self.delivery
        both = getattr(d.store, "settle_and_claim", None)
        if both is None:
            return self._settle(outcome)

        def write() -> None:
            self._claimed = both(self.destination, d.settings.batch_size, outcome.delivered, outcome.dead)

        return self._write(outcome, write)

    def _write(self, outcome: _Outcome, write: Callable[[], None]) -> bool:
        try:
            write()
        except BatchBridgeError as exc:
            self._unsettled = outcome
            self._backoff(exc)
            return False
        self._count(outcome)
        return True

    def _count(self, outcome: _Outcome) -> None:
        stats = self.delivery.stats
        self._unsettled = None
        stats.add(stats.published, self.label, len(outcome.delivered))
        stats.add(stats.failed, self.label, len(outcome.retry))
        stats.add(stats.dead_lettered, PUBLISH, len(outcome.dead))
        for _, dl in outcome.dead:
            log.error("dead-lettered event %s for %s: %s: %s", dl.event_id, self.label, dl.code, redact(dl.reason))
