"""AWS Lambda handlers: AWS Batch state changes from EventBridge, or from an SQS queue.

Build the handler once, at module level, so its bridge (and its backend clients) are reused by every
warm invocation::

    from batchbridge.contrib.aws_lambda import make_sqs_handler

    handler = make_sqs_handler("sns://arn:aws:sns:eu-west-1:123456789012:batch-events")

Each invocation commits the events to the bridge's outbox, publishes them, and returns only once
the destinations confirmed them (or the time budget ran out): Lambda freezes the instance between
invocations, so nothing may be left for later.

* :func:`make_eventbridge_handler` -- the target of an EventBridge rule on ``Batch Job State Change``
  (or ``Batch Job Queue Blocked``), or a function subscribed to an SNS topic such a rule publishes to
  (Lambda's ``{"Records": [{"Sns": ...}]}`` event, unwrapped like every other envelope).
  When an event cannot be published in time the invocation fails with a
  :class:`~batchbridge.core.errors.BackendError` and Lambda retries it (asynchronous invocation).
* :func:`make_sqs_handler` -- an SQS event source mapping with ``ReportBatchItemFailures``. Answers
  ``{"batchItemFailures": [{"itemIdentifier": messageId}]}`` naming only the records whose events a
  destination did not confirm, so only those are retried (from a FIFO queue: the first such record
  and every one after it, as order requires). A record that cannot be decoded is kept in the
  dead-letter store and counts as handled (retrying it cannot help).

Records may be EventBridge events (an EventBridge rule with an SQS target), SNS notifications (a
queue subscribed to a topic, with or without raw delivery), any other envelope the bridge decodes,
or CloudEvents published by batchbridge in either binding mode.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from batchbridge.core.bridge import Bridge, Payload
from batchbridge.core.envelopes import unwrap_sns
from batchbridge.core.errors import BatchBridgeError

from ._common import Runtime, Target, as_bytes, intake, summary

__all__ = ["EventBridgeHandler", "SqsHandler", "make_eventbridge_handler", "make_sqs_handler"]

log = logging.getLogger("batchbridge.contrib.aws_lambda")

#: seconds kept back from the invocation's remaining time for returning the answer
SAFETY_MARGIN = 1.5


def _budget(context: Any) -> float | None:
    """Seconds this invocation may still spend publishing; None outside Lambda (no context)."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return None
    return max(0.0, float(remaining()) / 1000.0 - SAFETY_MARGIN)


class EventBridgeHandler:
    """``handler(event, context)`` for EventBridge events; returns a summary of what it did."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @property
    def bridge(self) -> Bridge:
        return self.runtime.bridge

    def __call__(self, event: Mapping[str, Any], context: Any = None) -> dict[str, int]:
        meta = {"event_id": event.get("id"), "detail_type": event.get("detail-type")} if isinstance(event, Mapping) \
            else None
        results = self.runtime.handle([(event, meta)])
        if results[0].deliveries and not self.runtime.flush(_budget(context)):
            raise self.runtime.not_delivered()
        return summary(results)

    def close(self) -> None:
        self.runtime.close()


class SqsHandler:
    """``handler(event, context)`` for an SQS batch; returns the partial batch response."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @property
    def bridge(self) -> Bridge:
        return self.runtime.bridge

    def __call__(self, event: Mapping[str, Any], context: Any = None) -> dict[str, list[dict[str, str]]]:
        records = [r for r in event.get("Records") or [] if isinstance(r, Mapping)]
        ids = [str(r.get("messageId")) for r in records]
        items = [_record(r) for r in records]
        try:
            results = self.runtime.handle(items)
        except BatchBridgeError as exc:
            # nothing is durable: every record goes back to the queue
            log.error("cannot commit %d SQS records: %s", len(records), exc, extra={"error_code": exc.code})
            return _failures(ids)
        if any(r.deliveries for r in results) and not self.runtime.flush(_budget(context)):
            pending = self.runtime.pending_ids()
            failed = [i for i, r in enumerate(results) if pending.intersection(r.event_ids)]
            if failed and any(str(r.get("eventSourceARN", "")).endswith(".fifo") for r in records):
                # a FIFO queue keeps order only if nothing after the first failure counts as done
                failed = list(range(failed[0], len(ids)))
            log.warning("%d of %d SQS records not delivered; they will be retried", len(failed), len(ids))
            return _failures([ids[i] for i in failed])
        return _failures([])

    def close(self) -> None:
        self.runtime.close()


def _failures(ids: list[str]) -> dict[str, list[dict[str, str]]]:
    return {"batchItemFailures": [{"itemIdentifier": i} for i in ids]}


def _record(record: Mapping[str, Any]) -> tuple[Payload, dict[str, Any]]:
    """One SQS record -> what the bridge takes, undoing SNS's envelope when the queue gets one."""
    body = as_bytes(record.get("body") or "")
    attributes = {name: str(a["stringValue"]) for name, a in (record.get("messageAttributes") or {}).items()
                  if isinstance(a, Mapping) and a.get("stringValue") is not None}
    meta: dict[str, Any] = {"message_id": record.get("messageId")}
    unwrapped = unwrap_sns(body, attributes)  # a queue subscribed to SNS without raw delivery
    if unwrapped is not None:
        message, attributes, sns = unwrapped
        body = message.encode("utf-8")
        meta["sns_message_id"] = sns.get("MessageId")
    return intake(body, attributes, meta=meta)


def make_eventbridge_handler(target: Target, *, outbox: str | Path | None = None,
                             drain_timeout: float = 30.0) -> EventBridgeHandler:
    """A Lambda handler for EventBridge ``Batch Job State Change`` events.

    ``target``: a backend URI, a list of them, a config file, a config document, a ``BridgeConfig``
    or a ``Bridge``. ``outbox``: the outbox file (default: in ``$BATCHBRIDGE_OUTBOX_DIR`` or /tmp).
    ``drain_timeout``: the most seconds one invocation waits for the destinations (never past the
    invocation's own deadline).
    """
    return EventBridgeHandler(Runtime(target, outbox=outbox, drain_timeout=drain_timeout, kind="aws-lambda-events"))


def make_sqs_handler(target: Target, *, outbox: str | Path | None = None,
                     drain_timeout: float = 30.0) -> SqsHandler:
    """A Lambda handler for SQS batches, answering with ``batchItemFailures``; arguments as for
    :func:`make_eventbridge_handler`."""
    return SqsHandler(Runtime(target, outbox=outbox, drain_timeout=drain_timeout, kind="aws-lambda-sqs"))
