"""``relay``: consume from any backend with a subscriber, normalise, route, and publish via the outbox.

A received message may be a vendor payload (an SQS queue fed by an EventBridge rule, a Pub/Sub
subscription with GCP Batch notifications, a CMQ/MNS queue) or an already-canonical CloudEvent in
either binding mode; both are handled. Each received batch is committed to the outbox in one
transaction and only then acknowledged; a message that cannot be decoded is committed to the
dead-letter table (raw body, attributes, reason) and then acknowledged too, so it never blocks
the queue. A failure to commit nacks the batch: the source redelivers it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .backends import open_subscriber
from .binding import PREFIXES
from .bridge import Bridge, Payload
from .errors import BackendError, BatchBridgeError
from .event import DATASCHEMA
from .outcomes import Received
from .retry import Backoff
from .secrets import redact, redact_uri
from .subscriber import Subscriber

log = logging.getLogger("batchbridge.relay")
#: between failed receives: a source that is down is polled less and less often, up to every 30 s
_RECEIVE_BACKOFF = Backoff(initial=1.0, maximum=30.0)


@dataclass
class RelayReport:
    messages: int = 0
    events: int = 0
    dead_lettered: int = 0
    batches: int = 0


def _vendor_attributes(attributes: Mapping[str, str]) -> dict[str, str]:
    """The message attributes that are not the CloudEvents binding's own (``ce-*``, ``cloudEvents_*``)."""
    return {k: v for k, v in attributes.items() if not k.startswith(PREFIXES) and k not in ("content-type",)}


def _intake(r: Received) -> tuple[Payload, dict[str, Any]]:
    """What to hand the bridge for one message: the decoded event when the binding produced a canonical
    one (binary mode keeps attributes outside the body), else the body with the vendor attributes."""
    meta: dict[str, Any] = {}
    if r.message.message_id:
        meta["message_id"] = r.message.message_id
    attrs = _vendor_attributes(r.message.attributes)
    if attrs:
        meta["attributes"] = attrs
    if r.event is not None and r.event.get("dataschema") == DATASCHEMA:
        return r.event, meta  # intake checks it, and dead-letters it with the reason if it is broken
    return r.body, meta


class Relay:
    """Move events from ``source`` (a subscriber URI) through ``bridge``. The caller starts the bridge."""

    def __init__(self, bridge: Bridge, source: str, *, batch: int = 10, wait: float = 1.0,
                 provider: str | None = None) -> None:
        self.bridge = bridge
        self.source = source
        self.label = f"relay {redact_uri(source)}"
        self.batch = batch
        self.wait = wait
        self.provider = provider
        self.report = RelayReport()

    def run(self, stop: threading.Event, *, max_messages: int | None = None) -> RelayReport:
        """Receive until ``stop`` is set (or ``max_messages`` were taken); the batch in flight is
        always finished -- committed and acknowledged -- before returning."""
        sub = open_subscriber(self.source)
        sub.expects_vendor_payloads = True  # vendor payloads are the normal case here, not a warning
        failures = 0
        try:
            while not stop.is_set():
                if max_messages is not None and self.report.messages >= max_messages:
                    break
                want = self.batch if max_messages is None else min(self.batch, max_messages - self.report.messages)
                try:
                    received = sub.receive(want, timeout=self.wait)
                except BackendError as exc:
                    if not exc.retryable:
                        raise
                    failures += 1
                    delay = _RECEIVE_BACKOFF.delay(failures)
                    log.warning("%s: receive failed (%s); retrying in %.1fs", self.label, redact(str(exc)), delay)
                    stop.wait(delay)
                    continue
                failures = 0
                if received:
                    self._process(sub, received, stop)
        finally:
            sub.close()
        return self.report

    def _process(self, sub: Subscriber, received: list[Received], stop: threading.Event) -> None:
        items = [_intake(r) for r in received]
        try:
            results = self.bridge.handle_many(items, source=self.label, provider=self.provider)
        except BatchBridgeError as exc:
            # nothing is durable: let the source redeliver, and slow down until the outbox is writable
            log.error("%s: cannot commit to the outbox (%s); messages returned to the source",
                      self.label, redact(str(exc)))
            sub.nack(received)
            stop.wait(1.0)
            return
        try:
            sub.ack(received)
        except BatchBridgeError as exc:
            # the events are safe in the outbox; the source redelivers them and intake sees the same ids
            log.warning("%s: could not acknowledge %d messages (%s); they will be redelivered",
                        self.label, len(received), redact(str(exc)))
        self.report.batches += 1
        self.report.messages += len(received)
        for res in results:
            self.report.events += res.events
            if res.error is not None:
                self.report.dead_lettered += 1
                log.warning("%s: dead-lettered an undecodable message (%s)", self.label, redact(str(res.error)))


def relay(bridge: Bridge, source: str, stop: threading.Event, *, drain_timeout: float = 30.0,
          batch: int = 10, wait: float = 1.0, provider: str | None = None) -> tuple[RelayReport, bool]:
    """Run a relay until ``stop``, then flush the outbox for up to ``drain_timeout`` seconds.
    Returns the report and whether the outbox was empty at the end."""
    r = Relay(bridge, source, batch=batch, wait=wait, provider=provider)
    bridge.start()
    started = time.monotonic()
    # an error (a bad --from, a source that refuses us) ends the relay at once; what it committed
    # stays in the outbox for the next start
    report = r.run(stop)
    drained = bridge.drain(drain_timeout)
    log.info("%s: stopped after %.1fs; outbox %s", r.label, time.monotonic() - started,
             "empty" if drained else "still holds events (they go out on the next start)")
    return report, drained
