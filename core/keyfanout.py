"""Per-ordering-key fan-out, once for every backend whose requests may carry one ordering key only.

Pub/Sub with ordering ("all messages in a PublishRequest must specify the same ordering_key") is
such a backend; a driver says so with ``one_key_per_batch = True``. The publisher then hands each
batch of a lane to :class:`KeyFanout` (or :class:`AsyncKeyFanout`), which splits it into one batch
per key, each key's messages in their order, and sends the keys' batches side by side (up to
:data:`KEY_FANOUT` at once). To the publisher it is one ``send_batch`` with one outcome per message,
so its retries resend only what failed, before anything newer of that key.

When one key's batch fails because the endpoint is the problem (the topic is missing, the server
unreachable or too slow), the other keys would only wait for the same answer, each up to the
driver's timeout: the keys not yet sent get that error without being tried, and a batch of which
nothing was sent fails as a whole (the publisher retries it as one).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .driver import Message
from .errors import BackendError, ClosedError
from .retry import ErrorCode, code_of

#: batches of different ordering keys sent side by side, per publisher
KEY_FANOUT = 8
#: after one of these the other keys' batches would only wait for the same answer
_ENDPOINT_CODES = frozenset({ErrorCode.NOT_FOUND, ErrorCode.UNAVAILABLE, ErrorCode.DEADLINE_EXCEEDED})


def _groups(messages: Sequence[Message]) -> list[list[int]]:
    """Indices of ``messages`` by ordering key, keys in order of first appearance, each key's in order."""
    by_key: dict[str | None, list[int]] = {}
    for i, m in enumerate(messages):
        by_key.setdefault(m.ordering_key, []).append(i)
    return list(by_key.values())


class _Outcome:
    """One batch's per-message results as the keys' batches settle, and the error that stops the rest."""

    def __init__(self, n: int) -> None:
        self.results: list[BaseException | None] = [None] * n
        self.sent = 0
        self.abort: BaseException | None = None
        self.abort_code: ErrorCode | None = None
        self._lock = threading.Lock()  # keys settle from several pool threads

    def record(self, group: list[int], outcome: list[BaseException | None] | BaseException,
               code: ErrorCode | None) -> None:
        if isinstance(outcome, BaseException):
            for i in group:
                self.results[i] = outcome
            with self._lock:
                if code in _ENDPOINT_CODES and self.abort is None:
                    self.abort, self.abort_code = outcome, code
            return
        if len(outcome) != len(group):  # the publisher reports a miscounting driver; keep the count
            for i in group:
                self.results[i] = BackendError(f"driver returned {len(outcome)} results for {len(group)} messages",
                                               retryable=False)
            return
        with self._lock:
            for i, err in zip(group, outcome, strict=True):
                self.results[i] = err
                self.sent += err is None

    def skip(self, group: list[int]) -> bool:
        """True (and the group settled with the abort error) when an earlier key found the endpoint failing."""
        if self.abort is None:
            return False
        for i in group:
            self.results[i] = self.abort
        return True

    def final(self) -> list[BaseException | None]:
        if self.abort is not None and (self.abort_code is ErrorCode.NOT_FOUND or self.sent == 0):
            # nothing went (or the entity is gone): the whole batch failed, the publisher decides as one
            raise self.abort
        return self.results


class KeyFanout:
    """A sync driver whose batches are split per ordering key and sent side by side."""

    def __init__(self, driver: Any) -> None:
        self._d = driver
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False

    def __getattr__(self, name: str) -> Any:  # limits, prefix, probe: the driver's own
        return getattr(self._d, name)

    def send_batch(self, messages: Sequence[Message]) -> list[BaseException | None]:
        groups = _groups(messages)
        if len(groups) <= 1:
            result: list[BaseException | None] = self._d.send_batch(messages)
            return result
        out = _Outcome(len(messages))

        def one(group: list[int]) -> None:
            if out.skip(group):
                return
            try:
                outcome: list[BaseException | None] | BaseException = self._d.send_batch([messages[i] for i in group])
            except Exception as exc:
                out.record(group, exc, code_of(exc, self._d))
                return
            out.record(group, outcome, None)

        list(self._fanout().map(one, groups))
        return out.final()

    def _fanout(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise ClosedError("publisher is closed")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(KEY_FANOUT, thread_name_prefix="batchbridge-keys")
            return self._pool

    def error_code(self, exc: BaseException) -> ErrorCode:
        return code_of(exc, self._d)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self._d.close()


class AsyncKeyFanout:
    """The asyncio twin of :class:`KeyFanout`, for a native async driver."""

    def __init__(self, driver: Any) -> None:
        self._d = driver

    def __getattr__(self, name: str) -> Any:
        return getattr(self._d, name)

    async def send_batch(self, messages: Sequence[Message]) -> list[BaseException | None]:
        groups = _groups(messages)
        if len(groups) <= 1:
            result: list[BaseException | None] = await self._d.send_batch(messages)
            return result
        out = _Outcome(len(messages))
        gate = asyncio.Semaphore(KEY_FANOUT)

        async def one(group: list[int]) -> None:
            async with gate:
                if out.skip(group):
                    return
                try:
                    outcome: list[BaseException | None] | BaseException = await self._d.send_batch(
                        [messages[i] for i in group])
                except Exception as exc:
                    out.record(group, exc, code_of(exc, self._d))
                    return
                out.record(group, outcome, None)

        await asyncio.gather(*(one(g) for g in groups))
        return out.final()

    def error_code(self, exc: BaseException) -> ErrorCode:
        return code_of(exc, self._d)

    async def close(self) -> None:
        await self._d.close()


def fanned(driver: Any) -> Any:
    """``driver`` itself, or wrapped in the key fan-out when it declares ``one_key_per_batch``."""
    if not getattr(driver, "one_key_per_batch", False):
        return driver
    return AsyncKeyFanout(driver) if asyncio.iscoroutinefunction(getattr(driver, "send_batch", None)) \
        else KeyFanout(driver)
