"""Supersedence in the bridge: the intake step that observes every event's subject in the state
store and keeps stale events away from the destinations of ``supersede = true`` routes.

The bridge hands each intake request's candidate rows to the outbox together with an
:class:`IntakeGate`. Inside the intake transaction the outbox has the state store observe the
events (check and advance, atomically) and asks the gate which rows to insert: every row of a route
without supersedence; for a supersede route, the row only when the event is not stale -- else the
event is counted and, when the route names ``stale_to``, that row goes there instead. Because the
decision and the insert share one transaction and rows leave the outbox in insert order, a
destination of a supersede route never receives an event after a newer one of its subject.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from .outbox import OutboxRow
from .state import Observation, Prior


@dataclass(frozen=True, slots=True)
class Candidate:
    """One outbox row an event would get, and the supersede policy of the route that asked for it."""

    row: OutboxRow
    #: the route's label for ``batchbridge_events_stale_total``; None: no supersedence for this row
    supersede: str | None = None
    stale_to: str | None = None
    #: a subject last observed longer ago than this (seconds) is unknown to the route, so not stale
    retention: float = 0.0


@dataclass(slots=True)
class _Event:
    observation: Observation | None
    candidates: list[Candidate]


class IntakeGate:
    """The supersede decision for one outbox insert (one or several intake requests, in order)."""

    __slots__ = ("_plans", "observations", "rows_per_request", "stale")

    def __init__(self) -> None:
        self._plans: list[list[_Event]] = []
        #: what the store observes, in event order
        self.observations: list[Observation] = []
        #: per request (in :meth:`add` order), stale events per route label, from the last :meth:`rows`
        self.stale: list[Counter[str]] = []
        #: per request, the rows the last :meth:`rows` picked for it
        self.rows_per_request: list[int] = []

    def add(self, events: Sequence[tuple[Observation | None, list[Candidate]]]) -> int:
        """Add one request's events; its index among the requests of this gate."""
        plan = [_Event(o, c) for o, c in events]
        self._plans.append(plan)
        self.observations += [e.observation for e in plan if e.observation is not None]
        return len(self._plans) - 1

    def rows(self, priors: Sequence[Prior | None]) -> list[OutboxRow]:
        """The rows to insert, given what the store held before each observation. Called inside the
        transaction, possibly more than once (a group commit retried request by request): it keeps
        no state across calls but its last result's counts."""
        now = time.time()
        out: list[OutboxRow] = []
        stale_counts: list[Counter[str]] = []
        row_counts: list[int] = []
        it = iter(priors)
        for plan in self._plans:
            first = len(out)
            counts: Counter[str] = Counter()
            for event in plan:
                prior = next(it) if event.observation is not None else None
                seq = event.observation.sequence if event.observation is not None else ""
                stale_for: set[str] = set()
                for c in event.candidates:
                    if (c.supersede is not None and prior is not None and seq and seq < prior.sequence
                            and now - prior.updated <= c.retention):
                        stale_for.add(c.supersede)
                        if c.stale_to is not None:
                            r = c.row
                            out.append(OutboxRow(c.stale_to, r.event_id, r.event_type, r.body, r.event, r.key))
                        continue
                    out.append(c.row)
                counts.update(stale_for)
            stale_counts.append(counts)
            row_counts.append(len(out) - first)
        self.stale = stale_counts
        self.rows_per_request = row_counts
        return out
