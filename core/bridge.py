"""The bridge: intake -> routing -> durable outbox -> one publisher loop per destination.

:meth:`Bridge.handle` decodes one payload (any envelope :func:`~batchbridge.core.normalizing.normalize`
recognises, or an already-canonical CloudEvent), routes each event, and returns only once the rows
are committed to the outbox -- that is the moment a caller may acknowledge its source. A payload
that cannot be decoded is committed to the dead-letter table instead, with its raw bytes and the
typed error, and reported in the :class:`IntakeResult`.

Publishing is :mod:`~batchbridge.core.delivery`'s: one worker thread per destination claims rows from
the outbox store, publishes them and settles what the backend said. The store is any
:class:`~batchbridge.core.store.OutboxStore` (:func:`~batchbridge.core.stores.open_store` opens the one
the config names: a SQLite file, or PostgreSQL).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson

from . import normalizing, tracing
from .config import DEFAULT_STATE_RETENTION, BridgeConfig
from .dead_letters import DeadLetterBounds, usage_of
from .delivery import IDLE_POLL, Delivery
from .envelopes import Payload as Payload  # re-exported: handlers type their input with it
from .errors import (
    BatchBridgeError,
    ConfigError,
    InputError,
    MalformedPayloadError,
    UnrecognizedFormatError,
)
from .event import DATASCHEMA
from .metrics import Stats
from .outbox_rows import INTAKE, PUBLISH, UNROUTED, DeadLetter, Inserted, OutboxRow
from .routing import Router
from .secrets import redact, redact_uri
from .state import Observation, StateStore
from .store import OutboxStore
from .stores import open_store
from .supersede import Candidate, IntakeGate
from .trust import claims_canonical, trusted_event

log = logging.getLogger("batchbridge.bridge")
_T = TypeVar("_T")

#: how often new destinations are looked for in the outbox
RESCAN = 5.0
#: how often subjects idle longer than every route's ``state_retention`` are deleted from the state store
FORGET_EVERY = 60.0


class DecoderFailure(InputError):
    """Decoding or routing a payload raised something other than a typed error (a bug); the payload is
    dead-lettered like undecodable input."""

    code = "decoder_failure"


class TooManyEventsError(InputError):
    """A payload holds more events than one request may carry (``serve.max_events``); HTTP 413."""

    code = "too_many_events"


#: payloads above this size are decoded on a worker thread by :meth:`Bridge.ahandle`
OFF_LOOP_BYTES = 64 * 1024


def _release_memory() -> None:
    """Hand the heap freed after a big decode back to the OS (glibc keeps it otherwise, and a burst of
    big bodies would leave the process at its peak size for good)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        import ctypes

        fn: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc: nothing to do
    return fn


class UnroutedError(BatchBridgeError):
    """No route matched the event, and ``unrouted = "deadletter"``."""

    code = "unrouted"


@dataclass
class IntakeResult:
    """What one :meth:`Bridge.handle` did. Everything in it is durable when it is returned."""

    #: ids of the canonical events decoded from the payload
    event_ids: list[str] = field(default_factory=list)
    #: outbox rows written (one per event and destination)
    deliveries: int = 0
    #: events no route matched
    unrouted: int = 0
    #: the dead-letter ids written (the payload itself when it failed, or its unrouted events)
    dead_letter_ids: list[int] = field(default_factory=list)
    #: why the payload was refused; None when it was decoded
    error: InputError | None = None
    #: events kept from a ``supersede`` route's destinations as stale (one per event and route)
    stale: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def events(self) -> int:
        return len(self.event_ids)


@dataclass
class _Intake:
    rows: list[OutboxRow]
    dead: list[DeadLetter]
    result: IntakeResult
    types: list[str]
    dropped: int = 0
    #: the events and their candidate rows, for the gate that picks the rows at commit time
    gated: list[tuple[Observation | None, list[Candidate]]] | None = None


def _as_bytes(payload: Payload) -> bytes:
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogatepass")
    if isinstance(payload, Mapping):
        try:
            return orjson.dumps(payload)
        except TypeError:
            return repr(payload).encode()
    return bytes(payload)


def canonical_event(payload: bytes | Mapping[str, Any]) -> dict[str, Any] | None:
    """The payload as a canonical CloudEvent when it presents itself as one (our ``dataschema``: a relay
    from a queue the bridge itself feeds, a dead letter's event, ``publish -``); None when it does not.
    One that presents itself so is taken only under "Trust at intake" (:mod:`.trust`), else
    InvalidEventError."""
    if isinstance(payload, Mapping):
        obj: Any = payload if payload.__class__ is dict else dict(payload)
    else:
        if DATASCHEMA.encode() not in payload:
            return None
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
    if not claims_canonical(obj):
        return None
    return trusted_event(obj)


def decode_payload(payload: bytes | Mapping[str, Any], *, provider: str | None = None,
                   attributes: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Any payload the bridge accepts -> canonical events; raises InputError subclasses only.

    Accepted: an already-canonical CloudEvent (recognised by our ``dataschema``); every vendor
    envelope and event :func:`normalize` knows; and, when the transport carried message attributes
    (a pulled Pub/Sub message: GCP Batch puts its notification there), body and attributes together
    as one Pub/Sub message.
    """
    # the module is imported once, at the top: a function-level import here cost every small push a
    # Python-level ``__spec__.parent`` look-up on the event loop (a tenth of the loop's time in a
    # profile); called through the module, so that what normalizing.normalize is now is what runs
    event = canonical_event(payload)
    if event is not None:
        return [event]
    try:
        return normalizing.normalize(payload, provider=provider)
    except UnrecognizedFormatError:
        if attributes and isinstance(payload, (bytes, bytearray)):
            message = {"data": base64.b64encode(payload).decode(), "attributes": dict(attributes)}
            return normalizing.normalize(message, provider=provider)
        raise


def _carried(meta: Mapping[str, Any] | None) -> Mapping[str, str] | None:
    attributes = (meta or {}).get("attributes")
    return attributes if isinstance(attributes, Mapping) else None


def plan_intake(router: Router, raw: bytes | Mapping[str, Any], *, source: str, provider: str | None,
                attributes: Mapping[str, str] | None, max_events: int | None) -> _Intake:
    """Decode and route one payload: the work of intake before the commit, which needs only the router
    (so a decoding process can do it, see :mod:`.intake_process`). Raises InputError subclasses for bad
    input (and whatever a buggy decoder raises)."""
    events = decode_payload(raw, provider=provider, attributes=attributes)
    if max_events is not None and len(events) > max_events:
        # refused like an oversized body: the sender must split it; nothing is kept
        too_many = TooManyEventsError(f"the payload holds {len(events)} events; at most {max_events} are "
                                      "taken per request (serve.max_events)", where="$")
        return _Intake([], [], IntakeResult(error=too_many), [])
    return _route(router, events, source)


def _route(router: Router, events: list[dict[str, Any]], source: str) -> _Intake:
    dead: list[DeadLetter] = []
    result = IntakeResult(event_ids=[str(e.get("id")) for e in events])
    dropped = 0
    gated: list[tuple[Observation | None, list[Candidate]]] = []
    events = tracing.committing(events, source)  # the context goes in before the commit, never after
    for event in events:
        decision = router.route(event)
        candidates = []
        for d in decision.deliveries:
            row = OutboxRow.of(d.destination, d.event)
            r = d.supersede
            candidates.append(Candidate(row) if r is None else
                              Candidate(row, r.label, r.stale_to, r.state_retention))
        gated.append((Observation.of(event), candidates))
        if decision.unrouted:
            result.unrouted += 1
            if decision.dead_letter:
                err = UnroutedError(f"no route matches {event.get('type')} from "
                                    f"{(event.get('data') or {}).get('provider')}", where=str(event.get("id")))
                dead.append(DeadLetter.of(UNROUTED, source, orjson.dumps(event), err,
                                          event_id=str(event.get("id"))))
            elif not decision.deliveries:
                dropped += 1
    # every event is observed by the state store; the rows are picked at commit (``IntakeGate``)
    result.deliveries = sum(len(c) for _, c in gated)
    return _Intake([], dead, result, [str(e.get("type")) for e in events], dropped, gated)


#: what a decoder gives back for one payload: its plan, the input error it found, or None (it could not
#: say: the payload is then decoded here, on a thread)
Planned = _Intake | InputError | None


class Decoder(Protocol):
    """Decodes and routes big payloads elsewhere (``core/intake_process.py``: a process of its own)."""

    async def plan(self, raw: bytes, *, source: str, provider: str | None, attributes: Mapping[str, str] | None,
                   max_events: int | None) -> Planned: ...


class Bridge:
    """Intake, routing, the outbox and its publisher threads. Use as a context manager, or call
    :meth:`start` / :meth:`stop`; :meth:`handle` works before :meth:`start` (rows just wait)."""

    def __init__(self, config: BridgeConfig | None = None, *, outbox: OutboxStore | str | Path | None = None,
                 stats: Stats | None = None) -> None:
        self.config = config or BridgeConfig()
        self.router = Router.from_config(self.config)
        #: the store (``Any``: the SQLite outbox's extras -- ``lock``, ``expire``, supersede gates -- are
        #: looked up on it, not part of the interface)
        self.outbox: Any
        if outbox is None or isinstance(outbox, (str, Path)):
            settings = self.config.with_outbox(outbox).outbox if outbox is not None else self.config.outbox
            self.outbox = open_store(settings, routes=self.config.routes)
        else:
            self.outbox = outbox
            self.outbox.dead_letter_max_rows = self.config.outbox.dead_letter_max_rows
            self.outbox.dead_letter_max_bytes = self.config.outbox.dead_letter_max_bytes
        own: Callable[[int], str | None] | None = getattr(self.outbox, "dead_letter_refusal", None)
        #: why a new intake dead letter of so many bytes may not be kept (``core/dead_letters.py``)
        self._dead_letter_refusal = own if own is not None else DeadLetterBounds(
            usage_of(self.outbox), max_rows=self.config.outbox.dead_letter_max_rows,
            max_bytes=self.config.outbox.dead_letter_max_bytes).refusal
        #: the subject-state store, when the outbox has one (it observes inside the intake transaction)
        self.state: StateStore | None = getattr(self.outbox, "state", None)
        self.stats = stats or Stats()
        self.delivery = Delivery(self.outbox, self.config.outbox, self.stats)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._started = False
        self._supervisor: threading.Thread | None = None
        #: per event loop (a bridge may serve several, one after another in tests)
        self._off_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = \
            weakref.WeakKeyDictionary()
        #: where :meth:`ahandle` has big payloads decoded and routed (``serve`` sets a process); None: a thread
        self.decoder: Decoder | None = None
        #: big payloads in :meth:`ahandle` now, and whether one came since memory was last released
        #: (:meth:`_release_when_quiet`); the lock: a bridge may serve several event loops at once
        self._big_in_flight = 0
        self._release_due = False
        self._big_lock = threading.Lock()
        self.outbox.on_commit(self._committed)

    def __repr__(self) -> str:
        return f"Bridge(outbox={self.outbox.where!r}, routes={len(self.router.routes)})"

    # --- intake ------------------------------------------------------------------------------------

    def handle(self, payload: Payload, *, source: str = "api", provider: str | None = None,
               meta: Mapping[str, Any] | None = None) -> IntakeResult:
        """Decode, route and commit one payload; returns once it is durable in the outbox (or, when it
        cannot be decoded, in the dead-letter table -- then ``result.error`` says why). Raises only
        OutboxError (the outbox cannot be written: do not acknowledge the source)."""
        return self.handle_many([(payload, meta)], source=source, provider=provider)[0]

    def handle_many(self, items: Sequence[tuple[Payload, Mapping[str, Any] | None]], *, source: str = "api",
                    provider: str | None = None) -> list[IntakeResult]:
        """:meth:`handle` for several payloads (each with its metadata) in one outbox transaction."""
        plans = [self._plan(p, source=source, provider=provider, meta=m) for p, m in items]
        gate, indexes = self._gate(plans)
        return self._finish(plans, self._submit(plans, gate).result().dead_ids, gate, indexes)

    async def ahandle(self, payload: Payload, *, source: str = "api", provider: str | None = None,
                      meta: Mapping[str, Any] | None = None, max_events: int | None = None) -> IntakeResult:
        """:meth:`handle` for asyncio: the commit is awaited, never blocking the event loop, and joins
        the same group commit as every other request waiting at that moment. A payload larger than
        ``OFF_LOOP_BYTES`` is decoded off the event loop -- in :attr:`decoder`'s process when one is set
        (``serve`` sets it), else on a worker thread -- so one big body cannot stall other requests.
        Over ``max_events`` events, ``result.error`` is TooManyEventsError and nothing is kept."""
        Plan = tuple[list[_Intake], IntakeGate | None, list[int | None]]

        def plan() -> Plan:
            plans = [self._plan(payload, source=source, provider=provider, meta=meta, max_events=max_events)]
            return (plans, *self._gate(plans))

        if not (isinstance(payload, (bytes, bytearray, memoryview, str)) and len(payload) > OFF_LOOP_BYTES):
            plans, gate, indexes = plan()
            return await self._commit(plans, gate, indexes)
        with self._big_lock:
            self._big_in_flight += 1
        try:
            planned = await self._plan_elsewhere(payload, source=source, provider=provider, meta=meta,
                                                 max_events=max_events)
            if planned is not None:
                plans = [planned]
                # a step per event: off the loop too
                gate, indexes = await asyncio.to_thread(self._gate, plans)
            else:
                plans, gate, indexes = await self._on_thread(plan)
            return await self._commit(plans, gate, indexes)
        finally:
            with self._big_lock:
                self._big_in_flight -= 1
                self._release_due = True

    async def _commit(self, plans: list[_Intake], gate: IntakeGate | None, indexes: list[int | None]
                      ) -> IntakeResult:
        rows, dead, gate_arg = self._collect(plans, gate)
        inserted = await (self.outbox.asubmit(rows, dead, gate_arg) if gate_arg is not None
                          else self.outbox.asubmit(rows, dead))
        return self._finish(plans, inserted.dead_ids, gate, indexes)[0]

    async def _plan_elsewhere(self, payload: Payload, *, source: str, provider: str | None,
                              meta: Mapping[str, Any] | None, max_events: int | None) -> _Intake | None:
        """The plan made by :attr:`decoder`'s process; None when there is none (or it could not say)."""
        decoder = self.decoder
        # with tracing on, the intake span belongs to this process (its exporter, its context)
        if decoder is None or tracing.is_enabled():
            return None
        raw = _as_bytes(payload)
        planned = await decoder.plan(raw, source=source, provider=provider, attributes=_carried(meta),
                                     max_events=max_events)
        if isinstance(planned, InputError):
            return self._refused(raw, planned, source=source, provider=provider, meta=meta)
        return None if planned is None else self._bounded(planned)

    async def _on_thread(self, work: Callable[[], _T]) -> _T:
        def off_loop() -> _T:
            try:
                return work()
            finally:
                _release_memory()

        # one big decode at a time: they hold the GIL, and each more would slow every small request
        loop = asyncio.get_running_loop()
        one_at_a_time = self._off_loop.get(loop)
        if one_at_a_time is None:
            one_at_a_time = self._off_loop[loop] = asyncio.Semaphore(1)
        async with one_at_a_time:
            return await asyncio.to_thread(off_loop)

    def _collect(self, plans: Sequence[_Intake], gate: IntakeGate | None
                 ) -> tuple[list[OutboxRow], list[DeadLetter], IntakeGate | None]:
        """The rows and dead letters of ``plans``, and the gate to decide the rows in the store's
        transaction. A store without a state store gets the gate's rows decided here, with no priors
        (every candidate goes out; :func:`~batchbridge.core.stores.check_state_support` refuses routes
        that need more)."""
        rows = [r for p in plans for r in p.rows]
        dead = [d for p in plans for d in p.dead]
        if gate is not None and self.state is None:
            return rows + gate.rows([None] * len(gate.observations)), dead, None
        return rows, dead, gate

    def _submit(self, plans: Sequence[_Intake], gate: IntakeGate | None) -> Future[Inserted]:
        rows, dead, gate_arg = self._collect(plans, gate)
        done: Future[Inserted] = (self.outbox.submit(rows, dead, gate_arg) if gate_arg is not None
                                  else self.outbox.submit(rows, dead))
        return done

    @staticmethod
    def _gate(plans: Sequence[_Intake]) -> tuple[IntakeGate | None, list[int | None]]:
        """One gate for the plans' events (the state store observes them all, in order, at commit)."""
        gate: IntakeGate | None = None
        indexes: list[int | None] = []
        for p in plans:
            if p.gated is None:
                indexes.append(None)
                continue
            gate = gate or IntakeGate()
            indexes.append(gate.add(p.gated))
        return gate, indexes

    def _finish(self, plans: Sequence[_Intake], dead_ids: list[int], gate: IntakeGate | None = None,
                indexes: Sequence[int | None] = ()) -> list[IntakeResult]:
        ids = iter(dead_ids)
        if gate is not None:
            for p, i in zip(plans, indexes, strict=True):
                if i is not None:
                    stale = gate.stale[i]
                    p.result.stale = sum(stale.values())
                    p.result.deliveries = gate.rows_per_request[i]
                    for label, n in stale.items():
                        self.stats.add(self.stats.stale, label, n)
        return [self._done(p, [next(ids) for _ in p.dead]) for p in plans]

    def _plan(self, payload: Payload, *, source: str, provider: str | None,
              meta: Mapping[str, Any] | None, max_events: int | None = None) -> _Intake:
        raw = payload if isinstance(payload, Mapping) else _as_bytes(payload)
        try:
            return self._bounded(plan_intake(self.router, raw, source=source, provider=provider,
                                             attributes=_carried(meta), max_events=max_events))
        except InputError as exc:
            error: InputError = exc
        except Exception as exc:
            # a bug in a decoder or a route must not make one payload a crash loop (a relay would get
            # it redelivered forever, serve would answer 500 for good): it is kept like bad input, with
            # what went wrong, and `dlq replay` takes it again once the bug is fixed
            log.error("decoding or routing a payload failed unexpectedly (%s: %s); it is kept in the dead-letter "
                      "store", type(exc).__name__, redact(str(exc)), exc_info=True)
            error = DecoderFailure(redact(f"the decoder failed unexpectedly: {type(exc).__name__}: {exc}"), where="$")
        return self._refused(raw, error, source=source, provider=provider, meta=meta)

    def _refused(self, raw: bytes | Mapping[str, Any], error: InputError, *, source: str, provider: str | None,
                 meta: Mapping[str, Any] | None) -> _Intake:
        """The plan for a payload that failed: kept as a dead letter with its reason, within the bound."""
        info = dict(meta or {})
        if provider:
            info["provider"] = provider
        kept = _as_bytes(raw)
        full = self._dead_letter_refusal(len(kept))
        if full is not None:
            # refused all the same (the sender is told why), but not kept: bad input must not crowd out good
            log.warning("a payload refused as %s is not kept: %s", error.code, full)
            self.stats.add(self.stats.rejected_unkept, error.code)
            return _Intake([], [], IntakeResult(error=error), [])
        dead = DeadLetter.of(INTAKE, source, kept, error, meta=info or None)
        return _Intake([], [dead], IntakeResult(error=error), [])

    def _bounded(self, plan: _Intake) -> _Intake:
        """``plan`` with its unrouted events' dead letters kept within the dead-letter bound. Past it an
        unrouted event is still acknowledged (it was valid) but not kept, and counted -- like bad input.
        Done here, not in :func:`plan_intake`, because a decoding process has no store to ask."""
        if plan.result.error is not None or not plan.dead:
            return plan
        kept: list[DeadLetter] = []
        for d in plan.dead:
            full = self._dead_letter_refusal(len(d.payload))
            if full is None:
                kept.append(d)
            else:
                log.warning("an unrouted event is not kept: %s", full)
                self.stats.add(self.stats.rejected_unkept, d.code)
        plan.dead = kept
        return plan

    def _done(self, plan: _Intake, dead_ids: list[int]) -> IntakeResult:
        plan.result.dead_letter_ids = dead_ids
        s = self.stats
        for t, n in Counter(plan.types).items():  # one step per type, not per event (thousands in a body)
            s.add(s.received, t, n)
        if plan.result.error is not None:
            s.add(s.rejected, plan.result.error.code)
            if plan.dead:
                s.add(s.dead_lettered, INTAKE)
        elif plan.dead:
            s.add(s.dead_lettered, UNROUTED, len(plan.dead))
        s.drop_unrouted(plan.dropped)
        return plan.result  # the committed rows already went to their publishers (``_committed``)

    def _committed(self, rows: list[tuple[int, OutboxRow]]) -> None:
        """On the committer thread, right after a commit: wake the delivery workers (``core/delivery.py``)."""
        self.delivery.offer(rows)

    # --- dead letters ------------------------------------------------------------------------------

    def replay(self, dl_id: int, to: Sequence[str] = ()) -> IntakeResult:
        """Run a dead letter through again: intake and unrouted items through decoding and routing
        (with the current config), a refused event straight back to its destination -- or to ``to``
        instead, when given. The dead letter is replaced atomically by what that produced; if it fails
        again it stays, with the new reason."""
        rec = self.outbox.dead_letter(dl_id)
        if rec is None:
            raise ConfigError(f"no dead letter with id {dl_id}", where=self.outbox.where)
        if rec.stage == PUBLISH and (rec.destination or to):
            try:
                event = orjson.loads(rec.payload)
            except orjson.JSONDecodeError:
                event = None
            if not isinstance(event, dict):
                bad = MalformedPayloadError("the stored event is not a JSON object", where=f"dead letter {dl_id}")
                self.outbox.failed_again(dl_id, bad)
                return IntakeResult(error=bad, dead_letter_ids=[dl_id])
            targets = list(to) or [rec.destination or ""]
            plan = _Intake([OutboxRow.of(d, event) for d in targets], [],
                           IntakeResult(event_ids=[str(event.get("id"))], deliveries=len(targets)), [])
        else:
            meta = rec.meta
            provider = meta.get("provider") if isinstance(meta.get("provider"), str) else None
            plan = self._plan(rec.payload, source=rec.source, provider=provider, meta=meta)
            if plan.result.error is not None:
                self.outbox.failed_again(dl_id, plan.result.error)
                plan.result.dead_letter_ids = [dl_id]
                return plan.result
            if plan.dead and not plan.rows:
                self.outbox.failed_again(dl_id, UnroutedError("still no route matches",
                                                              where=f"dead letter {dl_id}"))
                return IntakeResult(event_ids=plan.result.event_ids, unrouted=plan.result.unrouted,
                                    dead_letter_ids=[dl_id])
        gate, indexes = self._gate([plan])
        rows, dead, gate_arg = self._collect([plan], gate)
        if gate_arg is not None:
            self.outbox.resolve(dl_id, rows, dead, gate_arg)
        else:
            self.outbox.resolve(dl_id, rows, dead)
        plan.types = []  # counted when first received
        return self._finish([plan], [], gate, indexes)[0] if gate is not None else self._done(plan, [])

    # --- publishing --------------------------------------------------------------------------------

    def start(self) -> Bridge:
        """Start the delivery workers (one per destination in the config or in the outbox)."""
        with self._lock:
            if self._started:
                return self
            lock = getattr(self.outbox, "lock", None)
            if lock is not None:
                lock()  # the SQLite outbox: only this process (or the workers of its serve) deliver from it
            self._started = True
            self._stopping.clear()
        self.delivery.start([*self.config.destinations(), *self.outbox.destinations()])
        self._supervisor = threading.Thread(target=self._supervise, name="batchbridge-supervisor", daemon=True)
        self._supervisor.start()
        return self

    def _supervise(self) -> None:
        scanned = time.monotonic()
        next_forget = 0.0
        while not self._stopping.wait(IDLE_POLL):
            try:
                if time.monotonic() - scanned >= RESCAN:
                    scanned = time.monotonic()
                    for destination in self.outbox.destinations():
                        self.delivery.worker(destination)
                self._expire()
                self._release_when_quiet()
                if time.monotonic() >= next_forget:
                    next_forget = time.monotonic() + FORGET_EVERY
                    self.forget_idle_subjects()
            except BatchBridgeError as exc:
                log.warning("cannot scan the outbox: %s", redact(str(exc)))

    def _release_when_quiet(self) -> None:
        """After a burst of big payloads, the heap they and their delivery freed back to the OS.

        A last resort, measured: with the events never in this process (``core/intake_process.py``) and
        delivered from their stored bytes, what is left after a burst is no live object but freed
        memory glibc keeps, scattered among long-lived blocks (1.33x the baseline RSS; ``malloc_trim``
        takes it to 1.02x, see ``docs/reliability.md``). So: once no big payload is in flight, every
        supervisor turn until the outbox is empty (its rows are read and freed while it drains). glibc
        only; the call releases the GIL, and takes ~16 ms on a 70 MiB heap left fragmented (a thread
        allocating meanwhile may wait for it), once a second at most."""
        if not self._release_due or self._big_in_flight:
            return
        if self.outbox.depth() == 0:
            self._release_due = False
        _release_memory()

    def _expire(self) -> None:
        """Rows older than ``outbox.max_pending_age`` go to the dead letters, each with its destination."""
        age = self.config.outbox.max_pending_age
        expire = getattr(self.outbox, "expire", None)
        if age <= 0 or expire is None:
            return
        moved = expire(age, f"not delivered within outbox.max_pending_age ({age:g}s)")
        if moved:
            self.stats.add(self.stats.dead_lettered, PUBLISH, len(moved))
            for label, n in Counter(redact_uri(d.destination or "") for d in moved).items():
                log.error("dead-lettered %d event(s) for %s: pending longer than %gs (dlq replay sends them "
                          "again)", n, label, age)

    def failing(self) -> dict[str, tuple[float, str]]:
        """Destinations (redacted) whose delivery has been failing without a success: for how many
        seconds, and the last error."""
        return self.delivery.failing()

    @property
    def state_retention(self) -> float:
        """How long the state store keeps an idle subject: the longest any route needs it."""
        return max((r.state_retention for r in self.config.routes), default=DEFAULT_STATE_RETENTION)

    def forget_idle_subjects(self, now: float | None = None) -> int:
        """Delete from the state store the subjects idle longer than :attr:`state_retention`."""
        if self.state is None:
            return 0
        return self.state.forget_idle((time.time() if now is None else now) - self.state_retention)

    def unwritable(self) -> str | None:
        """Why intake cannot be written now (``/readyz``), when the store can tell (the SQLite outbox:
        its file gone or its disk full); None otherwise."""
        check: Callable[[], str | None] | None = getattr(self.outbox, "unwritable", None)
        return check() if check is not None else None

    @property
    def running(self) -> bool:
        return self._started and not self._stopping.is_set()

    def drain(self, timeout: float = 30.0) -> bool:
        """Publish until the outbox is empty or ``timeout`` passes; True when it is empty. Rows whose
        backend is down stay (durably) for the next run."""
        self.start()
        for destination in self.outbox.destinations():
            self.delivery.worker(destination).wake.set()
        deadline = time.monotonic() + timeout
        while True:
            if self.outbox.depth() == 0:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the delivery workers (each finishes its batch in flight) and close the outbox.
        Returns False if a worker did not finish in time (its rows stay in the outbox)."""
        with self._lock:
            self._stopping.set()
        finished = self.delivery.stop(timeout)
        if finished:
            self.outbox.close()
        else:
            log.warning("a publisher did not finish within %.1fs; its rows stay in the outbox", timeout)
        return finished

    close = stop

    def __enter__(self) -> Bridge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
