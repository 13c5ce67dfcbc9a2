"""The Azure Functions Event Hubs handler, invoked with a trigger batch of diagnostic-settings exports of
Azure Batch ServiceLog records, publishing to a file:// backend."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from batchbridge.contrib.azure_functions import make_event_hub_handler
from batchbridge.core import BackendError, normalize

SAMPLES = Path(__file__).resolve().parent.parent / "core" / "samples"
TASK_PAIR = (SAMPLES / "azure-records-task-failed-pair.json").read_bytes()
POOL = (SAMPLES / "azure-records-pool-events.json").read_bytes()

try:
    from azure.functions import EventHubEvent  # the real type where azure-functions is installed
except ImportError:
    EventHubEvent = None


class HubEvent:
    """The ``azure.functions.EventHubEvent`` interface the handler relies on (``get_body()`` and the
    system properties), for when the azure-functions package is not installed."""

    def __init__(self, body: bytes, sequence_number: int) -> None:
        self._body = body
        self.sequence_number = sequence_number
        self.offset = str(sequence_number * 1024)
        self.partition_key = None
        self.enqueued_time = datetime(2024, 3, 5, 10, 19, tzinfo=timezone.utc)

    def get_body(self) -> bytes:
        return self._body


def _event(body: bytes, n: int) -> Any:
    if EventHubEvent is not None:
        return EventHubEvent(body=body, sequence_number=n, offset=str(n * 1024))
    return HubEvent(body, n)


def _with_unmapped_record(body: bytes) -> bytes:
    """A diagnostic setting streams every ServiceLog operation, not only the mapped ones."""
    doc = json.loads(body)
    doc["records"].append({**doc["records"][0], "operationName": "JobStartEvent"})
    return json.dumps(doc).encode()


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    handlers: list[Any] = []
    yield handlers
    for h in handlers:
        h.close()


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_event_hub_batch_is_published(tmp_path: Path, closing: list[Any]) -> None:
    out = tmp_path / "events.jsonl"
    handler = make_event_hub_handler(f"file://{out}", outbox=tmp_path / "outbox.db")
    closing.append(handler)
    batch = [_event(_with_unmapped_record(TASK_PAIR), 1), _event(POOL, 2)]
    summary = handler(batch)
    assert summary["events"] == 4 and summary["dead_lettered"] == 0 and summary["skipped_bodies"] == 0
    expected = normalize(TASK_PAIR) + normalize(POOL)
    # TaskFailEvent and TaskCompleteEvent report one transition: one id, delivered as the same event
    assert {e["id"] for e in _lines(out)} == {e["id"] for e in expected}
    assert all(e["data"]["provider"] == "azure" for e in _lines(out))


def test_bytes_text_and_single_bodies_are_accepted(tmp_path: Path, closing: list[Any]) -> None:
    out = tmp_path / "events.jsonl"
    handler = make_event_hub_handler(f"file://{out}", outbox=tmp_path / "outbox.db")
    closing.append(handler)
    assert handler(POOL)["events"] == 2  # cardinality "one": a single body
    assert handler([POOL.decode()])["events"] == 2
    assert handler([json.loads(TASK_PAIR)])["events"] == 2


def test_a_body_that_is_no_export_is_dead_lettered_and_the_rest_published(tmp_path: Path,
                                                                         closing: list[Any]) -> None:
    out = tmp_path / "events.jsonl"
    handler = make_event_hub_handler(f"file://{out}", outbox=tmp_path / "outbox.db")
    closing.append(handler)
    only_unmapped = json.dumps({"records": [{**json.loads(POOL)["records"][0],
                                             "operationName": "JobStartEvent"}]}).encode()
    summary = handler([_event(b"{not json", 1), _event(POOL, 2), _event(only_unmapped, 3)])
    assert summary["dead_lettered"] == 1 and summary["events"] == 2 and summary["skipped_bodies"] == 1
    assert len(_lines(out)) == 2
    [dl] = handler.bridge.outbox.dead_letters()
    assert dl.payload == b"{not json" and dl.meta["sequence_number"] == "1"


def test_raises_when_the_destination_does_not_confirm(tmp_path: Path, closing: list[Any]) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    handler = make_event_hub_handler(f"file://{blocker}/events.jsonl", outbox=tmp_path / "outbox.db",
                                     drain_timeout=1.0)
    closing.append(handler)
    with pytest.raises(BackendError) as err:
        handler([_event(POOL, 1)])
    assert err.value.retryable  # the Functions retry policy delivers the batch again
    assert handler.bridge.outbox.depth() == 2
