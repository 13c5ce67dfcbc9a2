"""The portable publisher: what every backend gets for free on top of its tiny driver.

* the CloudEvents binding (structured or ``?mode=binary``),
* per-message size checks against the driver's limit, before anything is sent,
* batching up to the driver's count and byte limits,
* bounded concurrency in *lanes*: all messages with one ordering key go through one lane, in order,
  so ordering per job/environment holds while different keys are sent in parallel; where a request
  may carry one key only (``one_key_per_batch``), a lane's batch is split per key and the keys sent
  side by side (:mod:`batchbridge.core.keyfanout`),
* retries under the one policy (:mod:`batchbridge.core.retry`) on what failed transiently,
  resending only the messages the backend did not confirm,
* one :class:`PublishResult` per event, so a partial batch failure is never reported as success.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from . import binding, logs, tracing
from .driver import AsyncPublisherDriver, Message, PublisherDriver
from .errors import BackendError, BatchBridgeError, ClosedError, MessageTooLargeError
from .keyfanout import fanned
from .outcomes import PublishResult as PublishResult  # re-exported: its home before outcomes.py
from .registry import BackendURI
from .retry import ErrorCode, RetryPolicy, code_of, is_transient
from .secrets import redact

log = logging.getLogger("batchbridge.publisher")


def is_retryable(driver: Any, exc: BaseException) -> bool:
    """Typed errors carry their own code; anything else the driver maps; the policy decides."""
    return is_transient(code_of(exc, driver))


def wrap_error(exc: BaseException, code: ErrorCode, where: str) -> BatchBridgeError:
    """Turn a driver/SDK exception into a typed error whose text carries no secret."""
    if isinstance(exc, BatchBridgeError):
        return exc
    return BackendError(redact(f"{type(exc).__name__}: {exc}"), where=where, error_code=code, cause=exc)


@dataclass(frozen=True)
class _Settings:
    mode: str
    concurrency: int
    batch_count: int
    batch_bytes: int
    max_message: int
    policy: RetryPolicy
    prefix: str
    max_attributes: int
    content_type_attribute: bool

    @classmethod
    def of(cls, driver: PublisherDriver | AsyncPublisherDriver, options: Mapping[str, Any]) -> _Settings:
        cap = int(options.get("batch_size") or 0)
        count = min(cap, driver.max_batch_count) if cap > 0 else driver.max_batch_count
        return cls(
            mode=str(options.get("mode", "structured")),
            concurrency=max(1, int(options.get("concurrency", 4))),
            batch_count=max(1, count),
            batch_bytes=driver.max_batch_bytes,
            max_message=driver.max_message_bytes,
            policy=RetryPolicy.from_options(options),
            prefix=driver.attribute_prefix,
            max_attributes=driver.max_attributes,
            content_type_attribute=bool(getattr(driver, "content_type_attribute", False)),
        )


class Stored(NamedTuple):
    """An event as the outbox keeps it: its id and its structured JSON, byte for byte the body
    :func:`~batchbridge.core.binding.to_message` makes of it (the outbox stores ``orjson.dumps(event)``)."""

    event_id: str | None
    body: bytes


#: the ordering key of every message of :meth:`Publisher.publish_stored` (see :meth:`_Batches.stored`)
_STORED_KEY = "stored"


class _Batches:
    """Events bound to messages, refused ones recorded, the rest split into ordered lanes of batches."""

    def __init__(self, ids: list[str | None], messages: Iterable[Message | BatchBridgeError], s: _Settings,
                 where: str) -> None:
        self.results: list[PublishResult | None] = [None] * len(ids)
        self.ids = ids
        lanes: list[list[tuple[int, Message]]] = [[] for _ in range(s.concurrency)]
        spread = 0
        for i, msg in enumerate(messages):
            if isinstance(msg, BatchBridgeError):
                self.results[i] = PublishResult(ids[i], msg)
                continue
            self._add(i, msg, s, lanes, where, spread)
            spread += 1
        self.lanes = [self._batches(lane, s) for lane in lanes if lane]

    @classmethod
    def of_events(cls, events: Sequence[Mapping[str, Any]], s: _Settings, where: str) -> _Batches:
        """Events bound to messages by the binding; one that cannot be is refused with its typed error."""
        def bound() -> Iterable[Message | BatchBridgeError]:
            for event in events:
                try:
                    yield binding.to_message(event, mode=s.mode, prefix=s.prefix, max_attributes=s.max_attributes,
                                             content_type_attribute=s.content_type_attribute)
                except BatchBridgeError as exc:
                    yield exc

        return cls([str(e.get("id")) if e.get("id") else None for e in events], bound(), s, where)

    @classmethod
    def stored(cls, items: Sequence[Stored], s: _Settings, where: str) -> _Batches:
        """Stored events as the messages of a driver that keeps the body alone (``stores_body``). They
        share one ordering key: one lane, in order, and after a retryable failure the rest of the call
        is held back -- the order of the whole call is kept, whatever the events' own keys."""
        return cls([i.event_id for i in items],
                   (Message(i.body, {}, binding.STRUCTURED_CONTENT_TYPE, _STORED_KEY, i.event_id) for i in items),
                   s, where)

    def _add(
        self, i: int, msg: Message, s: _Settings, lanes: list[list[tuple[int, Message]]], where: str, spread: int
    ) -> None:
        if msg.size > s.max_message:
            self.results[i] = PublishResult(
                self.ids[i],
                MessageTooLargeError(
                    f"message is {msg.size} bytes (body and attributes); the backend's limit is {s.max_message}",
                    where=f"{where} event {self.ids[i]}",
                ),
            )
            return
        key = msg.ordering_key
        lane = zlib.crc32(key.encode()) % s.concurrency if key else spread % s.concurrency
        lanes[lane].append((i, msg))

    @staticmethod
    def _batches(lane: list[tuple[int, Message]], s: _Settings) -> list[list[tuple[int, Message]]]:
        batches: list[list[tuple[int, Message]]] = []
        current: list[tuple[int, Message]] = []
        size = 0
        for item in lane:
            if current and (len(current) >= s.batch_count or size + item[1].size > s.batch_bytes):
                batches.append(current)
                current, size = [], 0
            current.append(item)
            size += item[1].size
        if current:
            batches.append(current)
        return batches

    def settle(self, batch: list[tuple[int, Message]], outcome: list[BaseException | None] | BaseException,
               driver: Any, where: str) -> None:
        for pos, (i, _) in enumerate(batch):
            err = outcome if isinstance(outcome, BaseException) else outcome[pos]
            self.results[i] = PublishResult(
                self.ids[i], None if err is None else wrap_error(err, code_of(err, driver), where)
            )

    def final(self) -> list[PublishResult]:
        return [r if r is not None else PublishResult(self.ids[i], BackendError("not sent", retryable=True))
                for i, r in enumerate(self.results)]

    def hold_back(self, batch: list[tuple[int, Message]], held: set[str], where: str) -> list[tuple[int, Message]]:
        """The messages of ``batch`` that may go now: one whose ordering key already failed retryably in
        this lane waits (a retryable "not sent"), or it would overtake the failed one, which the caller
        sends again later."""
        if not held:
            return batch
        go = []
        for i, msg in batch:
            if msg.ordering_key in held:
                self.results[i] = PublishResult(self.ids[i], BackendError(
                    "not sent: an earlier event with the same ordering key failed; it goes after that one",
                    where=where, retryable=True))
            else:
                go.append((i, msg))
        return go

    def note_failed_keys(self, batch: list[tuple[int, Message]], held: set[str]) -> None:
        for i, msg in batch:
            r = self.results[i]
            if msg.ordering_key and r is not None and isinstance(r.error, BackendError) and r.error.retryable:
                held.add(msg.ordering_key)


class _Endpoint:
    """What publishers and subscribers share: the driver, the URI's options with keyword overrides, a
    redacted location for errors and reprs, and the closed state."""

    _role = "endpoint"

    def __init__(self, driver: Any, uri: BackendURI | None, options: Mapping[str, Any] | None) -> None:
        self._driver = driver
        self.uri = uri
        self._options: dict[str, Any] = dict(uri.options) if uri else {}
        self._options.update(options or {})
        self._closed = False
        self._where = uri.redacted if uri else type(driver).__name__

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._where!r})"

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{self._role} is closed", where=self._where)


class _Base(_Endpoint):
    _role = "publisher"

    def __init__(self, driver: Any, uri: BackendURI | None, options: Mapping[str, Any] | None) -> None:
        super().__init__(driver, uri, options)
        self._settings = _Settings.of(driver, self._options)

    def _is_retryable(self, exc: BaseException) -> bool:
        return is_retryable(self._driver, exc)

    def _pending_after(
        self, pending: list[tuple[int, Message]], outcome: list[BaseException | None], plan: _Batches
    ) -> list[tuple[int, Message]]:
        """Record what settled; return the messages to send again (those that failed transiently)."""
        if len(outcome) != len(pending):
            raise BackendError(f"driver returned {len(outcome)} results for {len(pending)} messages",
                               where=self._where)
        again = []
        for (i, msg), err in zip(pending, outcome, strict=True):
            if err is not None and self._is_retryable(err):
                again.append((i, msg))
            else:
                plan.settle([(i, msg)], [err], self._driver, self._where)
        return again

    def _attempt_failed(self, plan: _Batches, pending: list[tuple[int, Message]], attempt: int,
                        exc: BaseException | None) -> bool:
        """After attempt ``attempt`` left ``pending`` unsent (``exc``: the whole batch raised): True to
        try again; else the messages are settled with their last error."""
        code = ErrorCode.UNAVAILABLE if exc is None else code_of(exc, self._driver)
        policy = self._settings.policy
        if policy.again(attempt, code):
            return True
        if exc is None:
            plan.settle(pending, BackendError(
                f"gave up after {policy.attempts} attempts: {len(pending)} messages failed retryably",
                where=self._where, error_code=ErrorCode.UNAVAILABLE), None, self._where)
        else:
            if is_transient(code):
                log.warning("batch of %d failed after %d attempts: %s", len(pending), policy.attempts,
                            redact(str(exc)))
            plan.settle(pending, exc, self._driver, self._where)
        return False


class Publisher(_Base):
    """Publish canonical events to one backend. Thread-safe; use as a context manager."""

    def __init__(self, driver: PublisherDriver, uri: BackendURI | None = None,
                 options: Mapping[str, Any] | None = None) -> None:
        super().__init__(fanned(driver), uri, options)
        self._pool = ThreadPoolExecutor(self._settings.concurrency, thread_name_prefix="batchbridge-pub")
        self._close_lock = threading.Lock()

    def publish(self, events: Iterable[Mapping[str, Any]]) -> list[PublishResult]:
        """Send every event; return one result per event, in input order."""
        self._check_open()
        with tracing.publishing(self.uri, self._where, list(events)) as obs:
            plan = _Batches.of_events(obs.events, self._settings, self._where)
            if len(plan.lanes) == 1:  # nothing to overlap: spare the hand-over to a pool thread
                self._send_lane(plan, plan.lanes[0])
            else:
                for fut in [self._pool.submit(self._send_lane, plan, lane) for lane in plan.lanes]:
                    fut.result()
            obs.results = plan.final()
        return obs.results

    def publish_one(self, event: Mapping[str, Any]) -> PublishResult:
        return self.publish([event])[0]

    def takes_stored(self) -> bool:
        """Whether :meth:`publish_stored` sends what :meth:`publish` would: the driver keeps the body
        alone (``stores_body``: file://), the mode is structured, and no trace context is to be added."""
        return (bool(getattr(self._driver, "stores_body", False)) and self._settings.mode == "structured"
                and not tracing.is_enabled())

    def publish_stored(self, items: Sequence[Stored]) -> list[PublishResult]:
        """:meth:`publish` for events already serialised (the outbox's rows), when :meth:`takes_stored`:
        the bytes go out as they are, never parsed and serialised again. One result per item, in order."""
        self._check_open()
        plan = _Batches.stored(items, self._settings, self._where)
        for lane in plan.lanes:
            self._send_lane(plan, lane)
        results = plan.final()
        logs.published(self._where, _Parsed(items), results)
        return results

    def _send_lane(self, plan: _Batches, lane: list[list[tuple[int, Message]]]) -> None:
        held: set[str] = set()
        for batch in lane:
            batch = plan.hold_back(batch, held, self._where)
            if batch:
                self._send_batch(plan, batch)
                plan.note_failed_keys(batch, held)

    def _send_batch(self, plan: _Batches, batch: list[tuple[int, Message]]) -> None:
        pending, attempt = batch, 1
        while True:
            exc: Exception | None = None
            try:
                pending = self._pending_after(pending, self._driver.send_batch([m for _, m in pending]), plan)
            except Exception as e:  # the whole batch failed; the policy decides from its code
                exc = e
            if not pending or not self._attempt_failed(plan, pending, attempt, exc):
                return
            time.sleep(self._settings.policy.backoff.delay(attempt))
            attempt += 1

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._pool.shutdown(wait=True)
        self._driver.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Parsed(Sequence[Mapping[str, Any]]):
    """Stored events for the log records of a publish call (:func:`~batchbridge.core.logs.published`):
    each is parsed only when a record asks for its fields (a debug record per event, a warning per
    refused one), so a batch that goes through unlogged is never parsed."""

    def __init__(self, items: Sequence[Stored]) -> None:
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [_Lazy(item) for item in self._items[i]]
        return _Lazy(self._items[i])


class _Lazy(Mapping[str, Any]):
    """One stored event, parsed on first look."""

    __slots__ = ("_event", "_item")

    def __init__(self, item: Stored) -> None:
        self._item = item
        self._event: dict[str, Any] | None = None

    def _parsed(self) -> dict[str, Any]:
        if self._event is None:
            try:
                event = orjson.loads(self._item.body)
            except orjson.JSONDecodeError:
                event = None
            self._event = event if isinstance(event, dict) else {"id": self._item.event_id}
        return self._event

    def __getitem__(self, key: str) -> Any:
        return self._parsed()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._parsed())

    def __len__(self) -> int:
        return len(self._parsed())


class _ThreadedAsyncDriver:
    """Runs a sync driver in worker threads for the asyncio API when the SDK has no native async."""

    def __init__(self, driver: PublisherDriver) -> None:
        self._d = driver
        self.max_batch_count = driver.max_batch_count
        self.max_batch_bytes = driver.max_batch_bytes
        self.max_message_bytes = driver.max_message_bytes
        self.attribute_prefix = driver.attribute_prefix
        self.max_attributes = driver.max_attributes
        self.content_type_attribute = bool(getattr(driver, "content_type_attribute", False))

    async def send_batch(self, messages: Sequence[Message]) -> list[BaseException | None]:
        return await asyncio.to_thread(self._d.send_batch, messages)

    def error_code(self, exc: BaseException) -> ErrorCode:
        return code_of(exc, self._d)

    async def close(self) -> None:
        await asyncio.to_thread(self._d.close)


class AsyncPublisher(_Base):
    """The asyncio twin of :class:`Publisher`, on a native async driver or a threaded sync one."""

    def __init__(self, driver: AsyncPublisherDriver | PublisherDriver, uri: BackendURI | None = None,
                 options: Mapping[str, Any] | None = None) -> None:
        driver = fanned(driver)
        if not asyncio.iscoroutinefunction(getattr(driver, "send_batch", None)):
            driver = _ThreadedAsyncDriver(driver)  # type: ignore[arg-type]
        super().__init__(driver, uri, options)

    async def publish(self, events: Iterable[Mapping[str, Any]]) -> list[PublishResult]:
        self._check_open()
        with tracing.publishing(self.uri, self._where, list(events)) as obs:
            plan = _Batches.of_events(obs.events, self._settings, self._where)
            await asyncio.gather(*(self._send_lane(plan, lane) for lane in plan.lanes))
            obs.results = plan.final()
        return obs.results

    async def publish_one(self, event: Mapping[str, Any]) -> PublishResult:
        return (await self.publish([event]))[0]

    async def _send_lane(self, plan: _Batches, lane: list[list[tuple[int, Message]]]) -> None:
        held: set[str] = set()
        for batch in lane:
            batch = plan.hold_back(batch, held, self._where)
            if batch:
                await self._send_batch(plan, batch)
                plan.note_failed_keys(batch, held)

    async def _send_batch(self, plan: _Batches, batch: list[tuple[int, Message]]) -> None:
        pending, attempt = batch, 1
        while True:
            exc: Exception | None = None
            try:
                pending = self._pending_after(pending, await self._driver.send_batch([m for _, m in pending]), plan)
            except Exception as e:
                exc = e
            if not pending or not self._attempt_failed(plan, pending, attempt, exc):
                return
            await asyncio.sleep(self._settings.policy.backoff.delay(attempt))
            attempt += 1

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._driver.close()

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
