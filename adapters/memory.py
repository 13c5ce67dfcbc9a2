"""``memory://name``: an in-process broker, for embedding and tests.

It behaves like a small queue service: peek-lock with a visibility timeout, redelivery on nack or
expiry in publication order, optional de-duplication by id within a window, and a size limit. A
queue exists once a publisher opened it (or ``create=true`` on the subscriber), so a subscriber to a
misspelt name fails the way it would on a real broker.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from batchbridge.core.driver import Message, ReceivedMessage
from batchbridge.core.errors import ClosedError, EntityNotFoundError
from batchbridge.core.registry import BackendURI, Option
from batchbridge.core.retry import ErrorCode, code_of


@dataclass(order=True)
class _Stored:
    seq: int
    body: bytes = field(compare=False)
    attributes: dict[str, str] = field(compare=False)
    content_type: str = field(compare=False)
    ordering_key: str | None = field(compare=False)
    message_id: str = field(compare=False)
    deliveries: int = field(default=0, compare=False)


class _Queue:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.ready: list[_Stored] = []
        self.in_flight: dict[str, tuple[_Stored, float]] = {}
        self.seen: dict[str, float] = {}
        self.seq = itertools.count()

    def put(self, msg: Message, dedup_window: float) -> None:
        with self.cond:
            now = time.monotonic()
            if dedup_window > 0 and msg.dedup_id:
                if self.seen.get(msg.dedup_id, -1.0) > now:
                    return
                self.seen[msg.dedup_id] = now + dedup_window
            heapq.heappush(self.ready, _Stored(next(self.seq), msg.body, dict(msg.attributes), msg.content_type,
                                               msg.ordering_key, uuid.uuid4().hex))
            self.cond.notify_all()

    def _expire(self, now: float) -> None:
        for token, (stored, deadline) in list(self.in_flight.items()):
            if deadline <= now:
                del self.in_flight[token]
                heapq.heappush(self.ready, stored)

    def take(self, n: int, timeout: float, visibility: float) -> list[ReceivedMessage]:
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                now = time.monotonic()
                self._expire(now)
                if self.ready or now >= end:
                    break
                self.cond.wait(min(end - now, 0.05))
            out: list[ReceivedMessage] = []
            while self.ready and len(out) < n:
                stored = heapq.heappop(self.ready)
                stored.deliveries += 1
                token = uuid.uuid4().hex
                self.in_flight[token] = (stored, now + visibility)
                out.append(ReceivedMessage(stored.body, dict(stored.attributes), token, stored.content_type,
                                           stored.deliveries, stored.ordering_key, stored.message_id))
            return out

    def settle(self, tokens: Sequence[str], requeue: bool) -> None:
        with self.cond:
            for t in tokens:
                entry = self.in_flight.pop(t, None)
                if entry and requeue:
                    heapq.heappush(self.ready, entry[0])
            self.cond.notify_all()

    def defer(self, tokens: Sequence[str], delay: float) -> None:
        """Keep the messages hidden for ``delay`` more seconds, as a visibility timeout does."""
        with self.cond:
            deadline = time.monotonic() + delay
            for t in tokens:
                entry = self.in_flight.get(t)
                if entry:
                    self.in_flight[t] = (entry[0], deadline)


_queues: dict[str, _Queue] = {}
_lock = threading.Lock()


def queue(name: str, create: bool) -> _Queue:
    with _lock:
        q = _queues.get(name)
        if q is None:
            if not create:
                raise EntityNotFoundError(f"memory queue {name!r} does not exist", where=f"memory://{name}")
            q = _queues[name] = _Queue()
        return q


def depth(name: str) -> int:
    """Messages ready plus in flight, for tests and the bridge's metrics."""
    q = queue(name, create=False)
    with q.cond:
        return len(q.ready) + len(q.in_flight)


def reset() -> None:
    with _lock:
        _queues.clear()


class MemoryPublisher:
    attribute_prefix = "ce-"
    max_attributes = 64
    max_batch_count = 500

    def __init__(self, uri: BackendURI) -> None:
        self._name = uri.name
        self._q = queue(uri.name, create=True)
        self._dedup = float(uri.options["dedup_window"])
        self.max_message_bytes = int(uri.options["max_bytes"])
        # one request carries at most one message's worth of bytes, as SQS and Service Bus do
        self.max_batch_bytes = self.max_message_bytes
        self._closed = False

    def send_batch(self, messages: Sequence[Message]) -> list[BaseException | None]:
        if self._closed:
            raise ClosedError("memory publisher is closed", where=f"memory://{self._name}")
        for m in messages:
            self._q.put(m, self._dedup)
        return [None] * len(messages)

    def error_code(self, exc: BaseException) -> ErrorCode:
        return code_of(exc)  # it raises typed errors only

    def close(self) -> None:
        self._closed = True


class MemorySubscriber:
    max_receive_count = 1000

    def __init__(self, uri: BackendURI) -> None:
        self._name = uri.name
        self._q = queue(uri.name, create=bool(uri.options["create"]))
        self._visibility = float(uri.options["visibility_timeout"])
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise ClosedError("memory subscriber is closed", where=f"memory://{self._name}")

    def receive_batch(self, max_messages: int, timeout: float) -> list[ReceivedMessage]:
        self._check()
        return self._q.take(max_messages, timeout, self._visibility)

    def ack(self, messages: Sequence[ReceivedMessage]) -> None:
        self._check()
        self._q.settle([m.ack_id for m in messages], requeue=False)

    def nack(self, messages: Sequence[ReceivedMessage]) -> None:
        self._check()
        self._q.settle([m.ack_id for m in messages], requeue=True)

    def defer(self, messages: Sequence[ReceivedMessage], delay: float) -> None:
        self._check()
        self._q.defer([m.ack_id for m in messages], delay)

    def error_code(self, exc: BaseException) -> ErrorCode:
        return code_of(exc)  # it raises typed errors only

    def close(self) -> None:
        self._closed = True


class _MemoryBackend:
    schemes = ("memory",)
    extra = ""
    forms = ("memory://NAME",)
    options = (
        Option("dedup_window", float, 0.0, "seconds an id is remembered to drop duplicates; 0 = off"),
        Option("max_bytes", int, 1024 * 1024, "largest message accepted, bytes"),
        Option("visibility_timeout", float, 30.0, "seconds a received, unacked message stays hidden"),
        Option("create", bool, False, "subscriber: create the queue if no publisher has yet"),
    )

    def open_publisher(self, uri: BackendURI) -> MemoryPublisher:
        return MemoryPublisher(uri)

    def open_subscriber(self, uri: BackendURI) -> MemorySubscriber:
        return MemorySubscriber(uri)


BACKEND = _MemoryBackend()
