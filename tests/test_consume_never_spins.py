"""Consumers never spin on a message they cannot process: it is backed off with growing delays
(visibility or lock extended) and, at its ``max_deliveries``-th delivery, dead-lettered with its reason;
``consume --idle`` and ``--max`` always end. Counted on real backends: file://, memory:// and SQS on
moto's HTTP server -- receive calls through the real driver, and the log lines written."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from batchbridge.adapters import memory
from batchbridge.core.driver import Message, ReceivedMessage
from batchbridge.core.outbox import Outbox
from batchbridge.core.registry import parse_uri
from batchbridge.core.subscriber import AsyncSubscriber, Received, Subscriber
from conformance import make_event

if TYPE_CHECKING:
    from aws_servers import AwsServer

pytest_plugins = ["aws_servers"]

CLI = str(Path(sys.executable).with_name("batchbridge"))
BAD = b'{"not": "a CloudEvent"}'


class Counting:
    """The real driver, with its receive calls and the messages they returned counted."""

    def __init__(self, driver: Any) -> None:
        self._d = driver
        self.receives = 0
        self.delivered = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._d, name)

    def receive_batch(self, max_messages: int, timeout: float) -> list[ReceivedMessage]:
        self.receives += 1
        got: list[ReceivedMessage] = self._d.receive_batch(max_messages, timeout)
        self.delivered += len(got)
        return got


class NoDefer:
    """A driver that cannot hide a message: its ``defer`` taken away."""

    def __init__(self, d: Any) -> None:
        self._d = d

    def __getattr__(self, name: str) -> Any:
        if name == "defer":
            raise AttributeError(name)
        return getattr(self._d, name)


def _subscriber(uri: str) -> tuple[Subscriber, Counting]:
    backend, parsed = parse_uri(uri)
    driver = Counting(backend.open_subscriber(parsed))
    return Subscriber(driver, parsed), driver


def _consume(sub: Subscriber, seconds: float, sink: Any = None) -> tuple[int, int]:
    """Receive and reject for ``seconds``; (messages rejected, dead-lettered)."""
    rejected = dead = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        batch = sub.receive(max_messages=10, timeout=0.2)
        bad = [r for r in batch if r.event is None]
        if bad:
            rejected += len(bad)
            dead += sub.reject(bad, "undecodable", sink).dead_lettered
    return rejected, dead


@pytest.fixture
def memory_queue() -> Iterator[str]:
    name = f"spin-{time.monotonic_ns()}"
    yield name
    memory.reset()


def _put_raw(uri: str, body: bytes) -> None:
    backend, parsed = parse_uri(uri)
    driver = backend.open_publisher(parsed)
    try:
        assert driver.send_batch([Message(body, {}, "application/json")]) == [None]
    finally:
        driver.close()


def test_memory_backs_off_then_dead_letters_with_the_reason(memory_queue: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    uri = f"memory://{memory_queue}?max_deliveries=3"
    _put_raw(uri, BAD)
    kept: list[Received] = []
    sub, counted = _subscriber(uri)
    with caplog.at_level(logging.WARNING, logger="batchbridge"), sub:
        # delays 1 s then 2 s (each drawn from its upper half): three deliveries need at least 1.5 s
        rejected, dead = _consume(sub, 1.2, kept.extend)
        assert (rejected, dead) == (2, 0), "redelivered before its back-off ran out"
        rejected, dead = _consume(sub, 3.5, kept.extend)
    assert (rejected, dead) == (1, 1)
    assert counted.delivered == 3
    assert [r.body for r in kept] == [BAD] and kept[0].error is not None
    assert "not a CloudEvent" in kept[0].error.reason
    assert memory.depth(memory_queue) == 0  # acked once it was kept
    # one log line per delivery, not one per spin
    lines = [r for r in caplog.records if "not a CloudEvent" in r.getMessage()]
    assert len(lines) == 3
    # ~0.2 s long polls over ~4.7 s: a few dozen receive calls, never thousands
    assert counted.receives < 40


def test_file_consume_cli_ends_on_idle_and_keeps_the_line(tmp_path: Path) -> None:
    """The report's case: one bad line, ``--max 1 --idle 1`` used to run forever (27,754 lines in 5 s)."""
    path = tmp_path / "one_bad.jsonl"
    path.write_bytes(BAD + b"\n")
    store = tmp_path / "dead.db"
    started = time.monotonic()
    done = subprocess.run([CLI, "consume", f"file://{path}?max_deliveries=1", "--max", "1", "--idle", "1",
                           "--dead-letters", str(store)], capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert took < 15
    lines = done.stderr.splitlines()
    assert len(lines) <= 4, lines
    assert "1 dead-lettered" in done.stderr
    with Outbox(store) as box:
        [record] = box.dead_letters()
    assert record.payload == BAD and "not a CloudEvent" in record.reason


def test_file_without_a_store_is_backed_off_and_consume_still_ends(tmp_path: Path) -> None:
    path = tmp_path / "one_bad.jsonl"
    good = make_event("job-after")
    import orjson

    path.write_bytes(BAD + b"\n" + orjson.dumps(good) + b"\n")
    done = subprocess.run([CLI, "consume", f"file://{path}", "--max", "5", "--idle", "1.5"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert [orjson.loads(line)["id"] for line in done.stdout.splitlines()] == [good["id"]]
    # backed off 1-2 s after its first delivery: seen at most twice in the 1.5 s of idleness
    assert 1 <= done.stderr.count("undecodable message") <= 2, done.stderr


def test_sqs_visibility_is_extended_and_dead_lettered(moto_server: AwsServer) -> None:
    queue = moto_server.queue()
    moto_server.client("sqs").send_message(QueueUrl=queue.url, MessageBody=BAD.decode())
    uri = moto_server.uri("sqs", queue.name, max_deliveries=2, wait_time_seconds=0)
    kept: list[Received] = []
    sub, counted = _subscriber(uri)
    with sub:
        rejected, dead = _consume(sub, 0.8, kept.extend)
        assert (rejected, dead) == (1, 0), "visibility not extended: redelivered at once"
        rejected, dead = _consume(sub, 4.0, kept.extend)
    assert (rejected, dead) == (1, 1)
    assert counted.delivered == 2
    assert [r.body for r in kept] == [BAD]
    attrs = moto_server.client("sqs").get_queue_attributes(
        QueueUrl=queue.url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
    assert attrs["Attributes"] == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}


def test_backends_without_defer_are_held_then_released(memory_queue: str) -> None:
    """A driver that cannot hide a message (no ``defer``) gets it held by the portable layer."""
    uri = f"memory://{memory_queue}?max_deliveries=5"
    _put_raw(uri, BAD)
    backend, parsed = parse_uri(uri)

    counted = Counting(NoDefer(backend.open_subscriber(parsed)))
    with Subscriber(counted, parsed) as sub:
        rejected, _ = _consume(sub, 0.4)
        assert rejected == 1
        rejected, _ = _consume(sub, 1.8)
        assert rejected >= 1  # released after its delay (0.5-1 s), delivered again
    assert counted.delivered <= 3


def test_relay_logs_good_vendor_messages_at_debug(memory_queue: str, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    import threading

    from batchbridge.core.bridge import Bridge
    from batchbridge.core.config import config_from_dict
    from batchbridge.core.relay import Relay
    from vendor_payloads import alibaba_job, compact

    source = f"memory://{memory_queue}"
    _put_raw(source, compact(alibaba_job("OnJobFailed")))
    config = config_from_dict({"outbox": {"path": str(tmp_path / "o.db")},
                               "routes": [{"to": (tmp_path / "out.jsonl").as_uri()}]})
    with caplog.at_level(logging.DEBUG, logger="batchbridge"), Bridge(config) as bridge:
        report = Relay(bridge, source, wait=0.2).run(threading.Event(), max_messages=1)
    assert report.events == 1 and report.dead_lettered == 0
    vendor = [r for r in caplog.records if "not a CloudEvent" in r.getMessage()]
    assert vendor and all(r.levelno == logging.DEBUG for r in vendor)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def _aconsume(sub: AsyncSubscriber, seconds: float, sink: Any = None) -> tuple[int, int]:
    """``_consume`` for the asyncio subscriber."""
    rejected = dead = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        batch = await sub.receive(max_messages=10, timeout=0.2)
        bad = [r for r in batch if r.event is None]
        if bad:
            rejected += len(bad)
            dead += (await sub.reject(bad, "undecodable", sink)).dead_lettered
    return rejected, dead


def test_asyncio_subscriber_backs_off_then_dead_letters_like_the_sync_one(memory_queue: str) -> None:
    """The same schedule as ``test_memory_backs_off_then_dead_letters_with_the_reason``, through
    ``AsyncSubscriber.reject`` with a coroutine as the dead-letter sink."""
    uri = f"memory://{memory_queue}?max_deliveries=3"
    _put_raw(uri, BAD)
    kept: list[Received] = []

    async def keep(items: Sequence[Received]) -> None:
        kept.extend(items)

    async def run() -> tuple[tuple[int, int], tuple[int, int], int]:
        backend, parsed = parse_uri(uri)
        counted = Counting(backend.open_subscriber(parsed))
        async with AsyncSubscriber(counted, parsed) as sub:
            first = await _aconsume(sub, 1.2, keep)
            second = await _aconsume(sub, 3.5, keep)
        return first, second, counted.delivered

    first, second, delivered = asyncio.run(run())
    assert first == (2, 0), "redelivered before its back-off ran out"
    assert second == (1, 1)
    assert delivered == 3
    assert [r.body for r in kept] == [BAD] and kept[0].error is not None
    assert "not a CloudEvent" in kept[0].error.reason
    assert memory.depth(memory_queue) == 0  # acked once it was kept


def test_asyncio_subscriber_without_defer_or_sink_keeps_the_message_held(memory_queue: str) -> None:
    """No ``defer`` on the driver: the asyncio subscriber holds the message for its delay and
    releases it on a later receive; at the last delivery with no sink it is kept, not lost."""
    uri = f"memory://{memory_queue}?max_deliveries=2"
    _put_raw(uri, BAD)

    async def run() -> tuple[list[Any], int]:
        backend, parsed = parse_uri(uri)
        counted = Counting(NoDefer(backend.open_subscriber(parsed)))
        outcomes: list[Any] = []
        async with AsyncSubscriber(counted, parsed) as sub:
            end = time.monotonic() + 4.0
            while len(outcomes) < 2 and time.monotonic() < end:
                bad = [r for r in await sub.receive(max_messages=10, timeout=0.2) if r.event is None]
                if bad:
                    outcomes.append(await sub.reject(bad))
        return outcomes, counted.delivered

    outcomes, delivered = asyncio.run(run())
    assert [(o.deferred, o.dead_lettered, o.kept) for o in outcomes] == [(1, 0, 0), (0, 0, 1)]
    assert delivered == 2
    assert memory.depth(memory_queue) == 1  # released when the subscriber closed, still on the queue
