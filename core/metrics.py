"""The bridge's counters, kept in plain Python so the core needs no metrics library.

``serve`` exposes them in the Prometheus format through a collector that reads this object at
scrape time (:func:`prometheus_registry`, which imports ``prometheus_client`` lazily); the demo and
the relay print them. Destination labels are always redacted URIs.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .secrets import redact_uri

#: publish latency buckets, seconds (a batch to a local file takes ~1 ms; to a cloud queue ~50 ms)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds
        self.n += 1

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, c in zip((*map(str, LATENCY_BUCKETS), "+Inf"), self.counts, strict=True):
            running += c
            out.append((bound, running))
        return out


class Stats:
    """Thread-safe counters of everything the bridge did since it started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: canonical events accepted into the outbox path, per type
        self.received: Counter[str] = Counter()
        #: payloads refused at intake, per error code
        self.rejected: Counter[str] = Counter()
        #: events confirmed by a backend, per destination (redacted)
        self.published: Counter[str] = Counter()
        #: failed publish attempts (kept for retry), per destination
        self.failed: Counter[str] = Counter()
        #: items written to the dead-letter table, per stage
        self.dead_lettered: Counter[str] = Counter()
        #: payloads refused at intake but not kept (the dead-letter store was full), per error code
        self.rejected_unkept: Counter[str] = Counter()
        #: events no route matched and the policy dropped
        self.unrouted_dropped = 0
        #: events kept from a supersede route's destinations as stale, per route label
        self.stale: Counter[str] = Counter()
        self._latency: dict[str, _Histogram] = {}

    def add(self, counter: Counter[str], key: str, n: int = 1) -> None:
        if n:
            with self._lock:
                counter[key] += n

    def drop_unrouted(self, n: int = 1) -> None:
        with self._lock:
            self.unrouted_dropped += n

    def observe_publish(self, destination: str, seconds: float) -> None:
        with self._lock:
            self._latency.setdefault(redact_uri(destination), _Histogram()).observe(seconds)

    def latency(self) -> Iterator[tuple[str, list[tuple[str, int]], float, int]]:
        with self._lock:
            snapshot = [(d, h.cumulative(), h.total, h.n) for d, h in self._latency.items()]
        yield from snapshot

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "received": sum(self.received.values()),
                "received_by_type": dict(self.received),
                "rejected": dict(self.rejected),
                "rejected_unkept": dict(self.rejected_unkept),
                "published": dict(self.published),
                "failed": dict(self.failed),
                "dead_lettered": dict(self.dead_lettered),
                "unrouted_dropped": self.unrouted_dropped,
                "stale": dict(self.stale),
            }


def prometheus_registry(stats: Stats, depths: Callable[[], Mapping[str, int]], *,
                        backlog: Callable[[], Sequence[Any]] | None = None,
                        health: Callable[[], tuple[bool, Mapping[str, float]]] | None = None) -> Any:
    """A fresh ``CollectorRegistry`` (one per app, so two apps in one process never clash) that reads
    ``stats`` and the outbox depth when scraped; with ``backlog`` (the outbox's :meth:`backlog` rows)
    and ``health`` (whether the outbox can be written, and the seconds each failing destination has
    been failing) the backlog and readiness gauges too (``docs/operations.md`` says what to alert on)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    class _Collector:
        def collect(self) -> Iterator[Any]:
            snap = stats.snapshot()
            received = CounterMetricFamily("batchbridge_events_received", "canonical events taken in",
                                           labels=["type"])
            for t, n in sorted(snap["received_by_type"].items()):
                received.add_metric([t], n)
            yield received
            rejected = CounterMetricFamily("batchbridge_payloads_rejected",
                                           "payloads refused at intake (and dead-lettered)", labels=["error"])
            for code, n in sorted(snap["rejected"].items()):
                rejected.add_metric([code], n)
            yield rejected
            unkept = CounterMetricFamily("batchbridge_payloads_rejected_unkept",
                                         "payloads refused at intake and not kept: the dead-letter store was full",
                                         labels=["error"])
            for code, n in sorted(snap["rejected_unkept"].items()):
                unkept.add_metric([code], n)
            yield unkept
            for name, doc, key in (
                ("batchbridge_events_published", "events confirmed by a backend", "published"),
                ("batchbridge_publish_failures", "publish attempts that failed and will be retried", "failed"),
            ):
                fam = CounterMetricFamily(name, doc, labels=["destination"])
                for dest, n in sorted(snap[key].items()):
                    fam.add_metric([dest], n)
                yield fam
            dead = CounterMetricFamily("batchbridge_dead_lettered", "items moved to the dead-letter store",
                                       labels=["stage"])
            for stage, n in sorted(snap["dead_lettered"].items()):
                dead.add_metric([stage], n)
            yield dead
            yield CounterMetricFamily("batchbridge_events_unrouted_dropped",
                                      "events that matched no route and were dropped",
                                      value=snap["unrouted_dropped"])
            stale = CounterMetricFamily("batchbridge_events_stale", "events not sent to a supersede route's "
                                        "destinations because a newer one of their subject was seen",
                                        labels=["route"])
            for route, n in sorted(snap["stale"].items()):
                stale.add_metric([route], n)
            yield stale
            depth = GaugeMetricFamily("batchbridge_outbox_depth", "events waiting in the outbox",
                                      labels=["destination"])
            for dest, n in sorted(depths().items()):
                depth.add_metric([redact_uri(dest)], n)
            yield depth
            if backlog is not None:
                age = GaugeMetricFamily("batchbridge_backlog_oldest_age_seconds",
                                        "age of the oldest event waiting for the destination", labels=["destination"])
                attempts = GaugeMetricFamily("batchbridge_backlog_attempts",
                                             "failed attempts of the oldest waiting event", labels=["destination"])
                for b in backlog():
                    age.add_metric([redact_uri(b.destination)], b.oldest_age)
                    attempts.add_metric([redact_uri(b.destination)], b.attempts)
                yield age
                yield attempts
            if health is not None:
                writable, failing = health()
                yield GaugeMetricFamily("batchbridge_outbox_writable",
                                        "1 while the outbox file can take events, 0 once it cannot (disk full, "
                                        "file deleted, replaced or truncated)", value=1 if writable else 0)
                failing_fam = GaugeMetricFamily("batchbridge_destination_failing_seconds",
                                        "seconds the destination has failed without a success (0: it works)",
                                        labels=["destination"])
                for dest, seconds in sorted(failing.items()):
                    failing_fam.add_metric([dest], seconds)
                yield failing_fam
            latency = HistogramMetricFamily("batchbridge_publish_latency_seconds",
                                            "time to publish one batch from the outbox", labels=["destination"])
            for dest, buckets, total, _n in stats.latency():
                latency.add_metric([dest], buckets, total)
            yield latency

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return registry
