"""The portable subscriber: receive from any backend, decode the CloudEvents binding, ack/nack.

Prefetch is bounded by what the caller asks for in one :meth:`Subscriber.receive` (never more than
the driver's ``max_receive_count``), so no lock or lease expires because more was fetched than
processed. A message that is not a CloudEvent is returned with its :class:`DecodeMessageError`
instead of an event; :meth:`Subscriber.dead_letter` settles it on the backend's own dead-letter
queue where there is one (``can_dead_letter``); elsewhere the caller keeps the payload (the bridge's
dead-letter store) before acking, so nothing is lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tenacity import AsyncRetrying, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from . import binding, tracing
from .driver import ReceivedMessage, SubscriberDriver
from .errors import BatchBridgeError, ConfigError, DecodeMessageError
from .publisher import _Endpoint, is_retryable, wrap_error
from .registry import BackendURI


@dataclass(slots=True)
class Received:
    message: ReceivedMessage
    event: dict[str, Any] | None
    error: DecodeMessageError | None = None

    @property
    def body(self) -> bytes:
        return self.message.body


def decode(msg: ReceivedMessage) -> Received:
    try:
        return Received(msg, binding.from_message(msg.body, msg.attributes, msg.content_type))
    except DecodeMessageError as exc:
        return Received(msg, None, exc)


class _SubBase(_Endpoint):
    _role = "subscriber"

    def __init__(self, driver: Any, uri: BackendURI | None, options: Mapping[str, Any] | None) -> None:
        super().__init__(driver, uri, options)
        self._attempts = max(1, int(self._options.get("retries", 5)))
        self._max_wait = float(self._options.get("retry_max_wait", 5.0))

    def _policy(self) -> dict[str, Any]:
        return {
            "stop": stop_after_attempt(self._attempts),
            "wait": wait_exponential_jitter(initial=0.05, max=self._max_wait),
            "retry": retry_if_exception(lambda e: is_retryable(self._driver, e)),
            "reraise": True,
        }

    def _typed(self, exc: Exception) -> BatchBridgeError:
        return wrap_error(exc, is_retryable(self._driver, exc), self._where)

    def _count(self, max_messages: int) -> int:
        return max(1, min(max_messages, int(self._driver.max_receive_count)))

    @staticmethod
    def _messages(items: Sequence[Received | ReceivedMessage]) -> list[ReceivedMessage]:
        return [i.message if isinstance(i, Received) else i for i in items]


class Subscriber(_SubBase):
    """Receive canonical events from one backend. Use as a context manager, or iterate."""

    def __init__(self, driver: SubscriberDriver, uri: BackendURI | None = None,
                 options: Mapping[str, Any] | None = None) -> None:
        super().__init__(driver, uri, options)

    def receive(self, max_messages: int = 10, timeout: float = 5.0) -> list[Received]:
        """Wait up to ``timeout`` s for at most ``max_messages``; each decoded, or with its error."""
        self._check_open()
        try:
            msgs = Retrying(**self._policy())(self._driver.receive_batch, self._count(max_messages), timeout)
        except BatchBridgeError:
            raise
        except Exception as exc:
            raise self._typed(exc) from None
        return tracing.consumed(self.uri, self._where, [decode(m) for m in msgs])

    def ack(self, items: Sequence[Received | ReceivedMessage]) -> None:
        self._settle("ack", items)

    def nack(self, items: Sequence[Received | ReceivedMessage]) -> None:
        self._settle("nack", items)

    @property
    def can_dead_letter(self) -> bool:
        """True when the backend has a native dead-letter queue (else keep the payload, then ack)."""
        return hasattr(self._driver, "dead_letter")

    def dead_letter(self, items: Sequence[Received | ReceivedMessage], reason: str, description: str = "") -> None:
        """Move messages to the backend's own dead-letter queue, with the reason."""
        if not self.can_dead_letter:
            raise ConfigError("this backend has no native dead-letter queue; keep the payload, then ack",
                              where=self._where)
        self._settle("dead_letter", items, reason, description)

    def _settle(self, op: str, items: Sequence[Received | ReceivedMessage], *args: str) -> None:
        self._check_open()
        msgs = self._messages(items)
        if not msgs:
            return
        try:
            Retrying(**self._policy())(getattr(self._driver, op), msgs, *args)
        except BatchBridgeError:
            raise
        except Exception as exc:
            raise self._typed(exc) from None

    def __iter__(self) -> Iterator[Received]:
        while not self._closed:
            yield from self.receive()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._driver.close()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSubscriber(_SubBase):
    """The asyncio twin of :class:`Subscriber`; a sync driver runs in worker threads."""

    def __init__(self, driver: Any, uri: BackendURI | None = None, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(driver, uri, options)
        self._native = asyncio.iscoroutinefunction(getattr(driver, "receive_batch", None))

    async def _call(self, op: str, *args: Any) -> Any:
        fn = getattr(self._driver, op)
        try:
            async for attempt in AsyncRetrying(**self._policy()):
                with attempt:
                    return await fn(*args) if self._native else await asyncio.to_thread(fn, *args)
        except BatchBridgeError:
            raise
        except Exception as exc:
            raise self._typed(exc) from None
        return None

    async def receive(self, max_messages: int = 10, timeout: float = 5.0) -> list[Received]:
        self._check_open()
        msgs = await self._call("receive_batch", self._count(max_messages), timeout)
        return tracing.consumed(self.uri, self._where, [decode(m) for m in msgs or []])

    async def ack(self, items: Sequence[Received | ReceivedMessage]) -> None:
        self._check_open()
        if items:
            await self._call("ack", self._messages(items))

    async def nack(self, items: Sequence[Received | ReceivedMessage]) -> None:
        self._check_open()
        if items:
            await self._call("nack", self._messages(items))

    @property
    def can_dead_letter(self) -> bool:
        return hasattr(self._driver, "dead_letter")

    async def dead_letter(self, items: Sequence[Received | ReceivedMessage], reason: str,
                          description: str = "") -> None:
        self._check_open()
        if not self.can_dead_letter:
            raise ConfigError("this backend has no native dead-letter queue; keep the payload, then ack",
                              where=self._where)
        if items:
            await self._call("dead_letter", self._messages(items), reason, description)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._native:
            await self._driver.close()
        else:
            await asyncio.to_thread(self._driver.close)

    async def __aenter__(self) -> AsyncSubscriber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
