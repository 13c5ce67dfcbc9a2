"""Per-ordering-key fan-out in the portable layer (core/keyfanout.py), on a real memory:// driver
that declares ``one_key_per_batch`` as Pub/Sub with ordering does: every request carries one key,
each key's events arrive in order, keys go side by side, and an endpoint failure stops the rest."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from batchbridge.core.backends import open_subscriber
from batchbridge.core.driver import Message
from batchbridge.core.errors import BackendError, EntityNotFoundError
from batchbridge.core.keyfanout import KEY_FANOUT, AsyncKeyFanout, KeyFanout, fanned
from batchbridge.core.publisher import AsyncPublisher, Publisher
from batchbridge.core.registry import parse_uri
from batchbridge.core.retry import ErrorCode
from conformance import drain, make_event


class OneKeyDriver:
    """The memory driver behind the ``one_key_per_batch`` rule: a request mixing keys is refused, as
    Pub/Sub refuses it; each request recorded, optionally failed or held at a barrier."""

    one_key_per_batch = True

    def __init__(self, uri: str, fail: BaseException | None = None, barrier: threading.Barrier | None = None) -> None:
        backend, self.uri = parse_uri(uri)
        self._d = backend.open_publisher(self.uri)
        self.fail = fail
        self.barrier = barrier
        self.calls: list[list[str | None]] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._d, name)

    def send_batch(self, messages: Sequence[Message]) -> list[BaseException | None]:
        with self._lock:
            self.calls.append([m.ordering_key for m in messages])
        if len({m.ordering_key for m in messages}) != 1:
            raise AssertionError(f"a request mixing keys: {[m.ordering_key for m in messages]}")
        if self.barrier is not None:
            self.barrier.wait()  # raises BrokenBarrierError unless another key's request is in flight too
        if self.fail is not None:
            raise self.fail
        result: list[BaseException | None] = self._d.send_batch(messages)
        return result

    def close(self) -> None:
        self._d.close()


@pytest.fixture
def queue() -> str:
    return f"memory://fan-{uuid.uuid4().hex[:8]}"


def _events(keys: int, per_key: int) -> list[dict[str, Any]]:
    return [make_event(f"job-{i % keys}", i) for i in range(keys * per_key)]


def _assert_in_order(events: list[dict[str, Any]], got: list[dict[str, Any]]) -> None:
    assert sorted(e["id"] for e in got) == sorted(e["id"] for e in events)
    for key in {e["data"]["job"]["id"] for e in events}:
        sent = [e["id"] for e in events if e["data"]["job"]["id"] == key]
        assert [e["id"] for e in got if e["data"]["job"]["id"] == key] == sent, key


def test_each_request_carries_one_key_in_order_and_keys_overlap(queue: str) -> None:
    events = _events(keys=6, per_key=5)
    # two keys' requests must be in flight at once, or the barrier breaks (5 s) and the send fails
    driver = OneKeyDriver(queue, barrier=threading.Barrier(2, timeout=5))
    with Publisher(driver, driver.uri, {"concurrency": 1}) as pub, open_subscriber(queue) as sub:
        assert isinstance(pub._driver, KeyFanout)
        results = pub.publish(events)
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        got = [g.event for g in drain(sub, len(events)) if g.event]
    assert sorted(len(c) for c in driver.calls) == [5] * 6  # one lane's batch, split into one request per key
    _assert_in_order(events, got)


def test_asyncio_publisher_fans_out_the_same_way(queue: str) -> None:
    events = _events(keys=4, per_key=3)
    driver = OneKeyDriver(queue)

    async def run() -> list[Any]:
        async with AsyncPublisher(driver, driver.uri, {"concurrency": 1}) as pub:
            return await pub.publish(events)

    assert all(r.ok for r in asyncio.run(run()))
    assert sorted(len(c) for c in driver.calls) == [3] * 4
    with open_subscriber(queue) as sub:
        _assert_in_order(events, [g.event for g in drain(sub, len(events)) if g.event])


def test_an_unreachable_endpoint_stops_the_other_keys_and_fails_the_batch_as_one(queue: str) -> None:
    down = BackendError("UNAVAILABLE: connection refused", error_code=ErrorCode.UNAVAILABLE)
    driver = OneKeyDriver(queue, fail=down)
    events = _events(keys=40, per_key=1)
    with Publisher(driver, driver.uri, {"concurrency": 1, "retries": 2, "retry_max_wait": 0.01}) as pub:
        results = pub.publish(events)
    assert all(not r.ok and isinstance(r.error, BackendError) and r.error.retryable for r in results)
    # two attempts of the whole batch, each stopped after at most one round of side-by-side requests
    assert len(driver.calls) <= 2 * KEY_FANOUT < 2 * len(events)


def test_a_missing_entity_fails_every_key(queue: str) -> None:
    missing = EntityNotFoundError("topic does not exist")
    driver = OneKeyDriver(queue, fail=missing)
    with Publisher(driver, driver.uri, {"concurrency": 1, "retries": 3}) as pub:
        results = pub.publish(_events(keys=3, per_key=2))
    assert all(isinstance(r.error, EntityNotFoundError) for r in results)
    assert len(driver.calls) <= 3  # not retried: not_found is not transient


def test_a_per_message_failure_holds_back_only_that_key(queue: str) -> None:
    """One key's request fails transiently: only its messages are sent again, before anything later
    of that key; the other keys' messages went once."""
    events = _events(keys=3, per_key=2)
    failing = "job-1"
    attempts: dict[str, int] = {}

    class FlakyKey(OneKeyDriver):
        def send_batch(self, messages: Sequence[Message]) -> list[BaseException | None]:
            key = messages[0].ordering_key or ""
            attempts[key] = attempts.get(key, 0) + 1
            if key == failing and attempts[key] == 1:
                self.calls.append([m.ordering_key for m in messages])
                return [BackendError("throttled", error_code=ErrorCode.RESOURCE_EXHAUSTED) for _ in messages]
            return super().send_batch(messages)

    driver = FlakyKey(queue)
    with Publisher(driver, driver.uri, {"concurrency": 1, "retry_max_wait": 0.01}) as pub, \
            open_subscriber(queue) as sub:
        assert all(r.ok for r in pub.publish(events))
        got = [g.event for g in drain(sub, len(events)) if g.event]
    assert attempts == {"job-0": 1, "job-1": 2, "job-2": 1}
    _assert_in_order(events, got)


def test_drivers_without_the_rule_are_not_wrapped(queue: str) -> None:
    backend, uri = parse_uri(queue)
    plain = backend.open_publisher(uri)
    assert fanned(plain) is plain
    plain.close()

    class AsyncOneKey:
        one_key_per_batch = True

        async def send_batch(self, messages: Sequence[Message]) -> list[BaseException | None]:
            return [None] * len(messages)

    assert isinstance(fanned(AsyncOneKey()), AsyncKeyFanout)
