"""The portable publisher's own behaviour: retries, partial failures, give-up, ordering, redaction."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from batchbridge.adapters import memory
from batchbridge.core.backends import open_subscriber
from batchbridge.core.driver import Message
from batchbridge.core.errors import BackendError, BatchBridgeError, MessageTooLargeError
from batchbridge.core.publisher import AsyncPublisher, Publisher
from batchbridge.core.registry import parse_uri
from batchbridge.core.secrets import remember
from conformance import drain, make_event


class Flaky(Exception):
    pass


class Fatal(Exception):
    pass


class FaultyDriver:
    """A real memory driver behind scripted faults: whole-batch exceptions or per-message errors."""

    def __init__(self, uri: str, script: list[Any]) -> None:
        backend, parsed = parse_uri(uri)
        self.inner = backend.open_publisher(parsed)
        self.uri = parsed
        self.script = script
        self.calls: list[list[str]] = []
        for name in ("max_batch_count", "max_batch_bytes", "max_message_bytes", "attribute_prefix",
                     "max_attributes"):
            setattr(self, name, getattr(self.inner, name))

    def send_batch(self, messages: Sequence[Message]) -> list[BaseException | None]:
        self.calls.append([m.dedup_id or "" for m in messages])
        step = self.script.pop(0) if self.script else None
        if isinstance(step, BaseException):
            raise step
        if callable(step):
            verdicts: list[BaseException | None] = [step(i, m) for i, m in enumerate(messages)]
            self.inner.send_batch([m for m, v in zip(messages, verdicts, strict=True) if v is None])
            return verdicts
        return self.inner.send_batch(messages)

    def is_retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, Flaky)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def queue() -> str:
    return f"memory://pub-{uuid.uuid4().hex[:8]}"


def fast(**extra: Any) -> dict[str, Any]:
    return {"retry_max_wait": 0.01, "concurrency": 1, **extra}


def test_whole_batch_retryable_failure_is_retried(queue: str) -> None:
    driver = FaultyDriver(queue, [Flaky("503"), Flaky("503")])
    events = [make_event("j", i) for i in range(5)]
    with Publisher(driver, driver.uri, fast()) as pub, open_subscriber(queue) as sub:
        assert all(r.ok for r in pub.publish(events))
        assert len(driver.calls) == 3
        assert sorted(g.event["id"] for g in drain(sub, 5) if g.event) == sorted(e["id"] for e in events)


def test_only_failed_messages_are_resent(queue: str) -> None:
    events = [make_event("j", i) for i in range(4)]
    bad_id = events[2]["id"]
    driver = FaultyDriver(queue, [lambda i, m: Flaky("throttled") if m.dedup_id == bad_id else None])
    with Publisher(driver, driver.uri, fast()) as pub, open_subscriber(queue) as sub:
        assert all(r.ok for r in pub.publish(events))
        assert driver.calls[1] == [bad_id]
        ids = [g.event["id"] for g in drain(sub, 4) if g.event]
        assert sorted(ids) == sorted(e["id"] for e in events) and len(ids) == 4


def test_partial_permanent_failure_is_reported_per_message(queue: str) -> None:
    events = [make_event("j", i) for i in range(3)]
    bad_id = events[1]["id"]
    driver = FaultyDriver(queue, [lambda i, m: Fatal("InvalidParameterValue") if m.dedup_id == bad_id else None])
    with Publisher(driver, driver.uri, fast()) as pub:
        results = pub.publish(events)
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].event_id == bad_id
    assert isinstance(results[1].error, BackendError) and not results[1].error.retryable
    assert "InvalidParameterValue" in results[1].error.reason
    assert len(driver.calls) == 1


def test_gives_up_after_the_configured_attempts(queue: str) -> None:
    driver = FaultyDriver(queue, [Flaky("down")] * 10)
    with Publisher(driver, driver.uri, fast(retries=3)) as pub:
        results = pub.publish([make_event("j", 1), make_event("j", 2)])
    assert len(driver.calls) == 3
    assert all(not r.ok and isinstance(r.error, BackendError) and r.error.retryable for r in results)


def test_non_retryable_exception_is_not_retried(queue: str) -> None:
    driver = FaultyDriver(queue, [Fatal("AccessDenied")])
    with Publisher(driver, driver.uri, fast()) as pub:
        results = pub.publish([make_event("j", 1), make_event("j", 2)])
    assert len(driver.calls) == 1
    assert all(not r.ok and "AccessDenied" in r.error.reason for r in results if r.error)


def test_results_keep_input_order_across_lanes(queue: str) -> None:
    events = [make_event(f"job-{i % 5}", i) for i in range(40)]
    driver = FaultyDriver(queue, [])
    with Publisher(driver, driver.uri, {"concurrency": 4, "batch_size": 3}) as pub:
        results = pub.publish(events)
    assert [r.event_id for r in results] == [e["id"] for e in events]
    assert all(len(call) <= 3 for call in driver.calls)


def test_one_key_stays_in_one_lane_in_order(queue: str) -> None:
    events = [make_event("job-same", i) for i in range(25)]
    driver = FaultyDriver(queue, [])
    with Publisher(driver, driver.uri, {"concurrency": 8, "batch_size": 2}) as pub:
        assert all(r.ok for r in pub.publish(events))
    sent = [i for call in driver.calls for i in call]
    assert sent == [e["id"] for e in events]


def test_oversized_is_refused_before_sending(queue: str) -> None:
    driver = FaultyDriver(f"{queue}?max_bytes=4096", [])
    with Publisher(driver, driver.uri, fast()) as pub:
        small, big = pub.publish([make_event("j", 1), make_event("j", 2, pad=5000)])
    assert small.ok and isinstance(big.error, MessageTooLargeError)
    assert driver.calls == [[small.event_id]]


def test_driver_exception_text_is_redacted(queue: str) -> None:
    secret = "s3cr3t-" + uuid.uuid4().hex
    driver = FaultyDriver(queue, [Fatal(f"auth failed for key {secret}")])
    remember(secret)  # what every adapter does with the secrets it opens with
    with Publisher(driver, driver.uri, fast()) as pub:
        [result] = pub.publish([make_event("j", 1)])
    assert result.error is not None
    assert secret not in str(result.error) and secret not in repr(result.error.to_dict())
    assert "***" in result.error.reason


def test_wrong_result_count_from_a_driver_is_an_error(queue: str) -> None:
    driver = FaultyDriver(queue, [])
    driver.send_batch = lambda messages: []  # type: ignore[method-assign]
    with Publisher(driver, driver.uri, fast()) as pub:
        [result] = pub.publish([make_event("j", 1)])
    assert isinstance(result.error, BatchBridgeError)
    assert "returned 0 results for 1" in result.error.reason


def test_async_publisher_retries_too(queue: str) -> None:
    driver = FaultyDriver(queue, [Flaky("503")])

    async def run() -> list[bool]:
        async with AsyncPublisher(driver, driver.uri, fast()) as pub:
            return [r.ok for r in await pub.publish([make_event("j", i) for i in range(3)])]

    assert asyncio.run(run()) == [True, True, True]
    assert len(driver.calls) == 2
    assert memory.depth(queue.removeprefix("memory://")) == 3
