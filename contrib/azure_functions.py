"""Azure Functions handler for Azure Batch diagnostic logs streamed to Event Hubs.

A Batch account's diagnostic setting sends its ``ServiceLog`` category to an event hub; each event
body is one JSON document ``{"records": [...]}``. Wire an Event Hubs trigger with
``cardinality: many`` to the handler::

    import azure.functions as func
    from batchbridge.contrib.azure_functions import make_event_hub_handler

    handle = make_event_hub_handler("servicebus://ns.servicebus.windows.net/batch-events")
    app = func.FunctionApp()

    @app.event_hub_message_trigger(arg_name="events", event_hub_name="batch-logs",
                                   connection="EVENTHUB_CONNECTION", cardinality="many")
    def batch_logs(events: list[func.EventHubEvent]) -> None:
        handle(events)

It accepts ``azure.functions.EventHubEvent`` objects (anything with ``.get_body()``), bytes, text or
parsed JSON, one or a list -- azure-functions itself is not needed. Records of operations the bridge
does not map (a diagnostic setting sends every ServiceLog operation) are skipped; a body that is not a
diagnostic export at all goes to the dead-letter store. When a destination does not confirm in time
the handler raises a :class:`~batchbridge.core.errors.BackendError`: give the function a retry policy
(``fixedDelay`` or ``exponentialBackoff``) so the batch is delivered again instead of the checkpoint
moving past it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from batchbridge.core.bridge import Bridge, Payload
from batchbridge.core.errors import InputError
from batchbridge.core.normalizing import normalize

from ._common import Runtime, Target, as_bytes, summary

__all__ = ["EventHubHandler", "make_event_hub_handler"]

log = logging.getLogger("batchbridge.contrib.azure_functions")


def _body(event: Any) -> bytes:
    get_body = getattr(event, "get_body", None)
    return as_bytes(get_body() if callable(get_body) else event)


def _meta(event: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for name in ("sequence_number", "offset", "partition_key", "enqueued_time"):
        value = getattr(event, name, None)
        if value is not None:
            meta[name] = str(value)
    return meta


class EventHubHandler:
    """``handler(events)`` for an Event Hubs trigger batch; returns a summary."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @property
    def bridge(self) -> Bridge:
        return self.runtime.bridge

    def __call__(self, events: Any) -> dict[str, int]:
        batch = list(events) if isinstance(events, Sequence) and not isinstance(events, (str, bytes)) else [events]
        items: list[tuple[Payload, Mapping[str, Any] | None]] = []
        skipped = 0
        for event in batch:
            body = _body(event)
            meta = _meta(event)
            try:
                decoded = normalize(body, provider="azure", skip_unsupported=True)
            except InputError:
                items.append((body, meta))  # decoded again by the bridge, which dead-letters it with the reason
                continue
            if not decoded:
                skipped += 1
            items += [(e, meta) for e in decoded]
        results = self.runtime.handle(items) if items else []
        if any(r.deliveries for r in results) and not self.runtime.flush():
            raise self.runtime.not_delivered()
        return {**summary(results), "skipped_bodies": skipped}

    def close(self) -> None:
        self.runtime.close()


def make_event_hub_handler(target: Target, *, outbox: str | Path | None = None,
                           drain_timeout: float = 30.0) -> EventHubHandler:
    """An Event Hubs trigger handler. ``target``: a backend URI, a list of them, a config file, a config
    document, a ``BridgeConfig`` or a ``Bridge``; ``outbox``: the outbox file (default: in
    ``$BATCHBRIDGE_OUTBOX_DIR`` or the temp directory); ``drain_timeout``: seconds one invocation waits
    for the destinations."""
    return EventHubHandler(Runtime(target, outbox=outbox, drain_timeout=drain_timeout, kind="azure-event-hubs"))
