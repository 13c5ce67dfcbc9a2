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
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import binding, tracing
from .driver import ReceivedMessage, SubscriberDriver
from .errors import BatchBridgeError, ConfigError, DecodeMessageError
from .outcomes import Received as Received  # re-exported: its home before outcomes.py
from .publisher import _Endpoint, wrap_error
from .registry import BackendURI
from .retry import Backoff, RetryPolicy, code_of

log = logging.getLogger("batchbridge.consume")

#: delays before a message that could not be processed is delivered again: 1 s, 2 s, 4 s, ... 60 s
REDELIVERY_BACKOFF = Backoff(initial=1.0, maximum=60.0)
#: default of the ``max_deliveries`` URI option
DEFAULT_MAX_DELIVERIES = 5
#: messages whose deliveries are counted here (for backends that do not count them); beyond, the
#: oldest counts are forgotten -- a message then gets a few more deliveries, never fewer
_MAX_COUNTED = 10_000


def decode_message(msg: ReceivedMessage) -> Received:
    if msg.content_type is None:  # a backend without a content-type field carries it as an attribute
        msg.content_type = binding.content_type_of(msg.attributes)
    try:
        return Received(msg, binding.from_message(msg.body, msg.attributes, msg.content_type))
    except DecodeMessageError as exc:
        return Received(msg, None, exc)


class _SubBase(_Endpoint):
    _role = "subscriber"

    def __init__(self, driver: Any, uri: BackendURI | None, options: Mapping[str, Any] | None) -> None:
        super().__init__(driver, uri, options)
        self._policy = RetryPolicy.from_options(self._options)
        self.max_deliveries = max(1, int(self._options.get("max_deliveries", DEFAULT_MAX_DELIVERIES)))
        #: log undecodable messages at DEBUG, not WARNING: set by a consumer that expects vendor
        #: payloads beside CloudEvents (relay), for which "not a CloudEvent" is the normal case
        self.expects_vendor_payloads = False
        self._counted: dict[Any, int] = {}
        #: messages waiting out their delay on a backend that cannot hide them (released by receive)
        self._held: list[tuple[float, list[ReceivedMessage]]] = []

    def _deliveries(self, m: ReceivedMessage) -> int:
        """How often ``m`` was delivered: the backend's count where it keeps one, else ours."""
        key = m.message_id or m.body
        n = self._counted.get(key, 0) + 1
        if len(self._counted) >= _MAX_COUNTED:
            self._counted.clear()
        self._counted[key] = n
        return max(n, m.delivery_count or 0)

    def _typed(self, exc: Exception) -> BatchBridgeError:
        return wrap_error(exc, code_of(exc, self._driver), self._where)

    def _count(self, max_messages: int) -> int:
        return max(1, min(max_messages, int(self._driver.max_receive_count)))

    @staticmethod
    def _messages(items: Sequence[Received | ReceivedMessage]) -> list[ReceivedMessage]:
        return [i.message if isinstance(i, Received) else i for i in items]

    @property
    def can_dead_letter(self) -> bool:
        """True when the backend has a native dead-letter queue (else keep the payload, then ack)."""
        return hasattr(self._driver, "dead_letter")

    def _can_defer(self) -> bool:
        return hasattr(self._driver, "defer")

    def _triage(self, items: Sequence[Received]) -> tuple[Rejected, dict[float, list[ReceivedMessage]], list[Received]]:
        """What :meth:`Subscriber.reject` does, without the I/O: the delays to hide messages for (those
        below ``max_deliveries``) and the messages at their last delivery."""
        out = Rejected()
        due: dict[float, list[ReceivedMessage]] = {}
        final: list[Received] = []
        for r in items:
            n = self._deliveries(r.message)
            if n >= self.max_deliveries:
                final.append(r)
            else:
                due.setdefault(REDELIVERY_BACKOFF.delay(n), []).append(r.message)
                out.deferred += 1
        return out, due, final

    @staticmethod
    def _description(final: Sequence[Received]) -> str:
        return "; ".join(sorted({str(r.error) for r in final if r.error is not None}))[:1024]

    def _forget(self, final: Sequence[Received]) -> None:
        """Messages at their last delivery are settled: their delivery counts are not needed any more."""
        for r in final:
            self._counted.pop(r.message.message_id or r.message.body, None)

    def _hold(self, msgs: list[ReceivedMessage], delay: float) -> None:
        self._held.append((time.monotonic() + delay, msgs))

    def _due_held(self, everything: bool = False) -> list[ReceivedMessage]:
        """The held messages whose delay is over (all of them with ``everything``), no longer held."""
        now = time.monotonic()
        due = [m for when, msgs in self._held if everything or when <= now for m in msgs]
        if due:
            self._held = [(when, msgs) for when, msgs in self._held if not everything and when > now]
        return due

    def _check_dead_letter(self) -> None:
        if not self.can_dead_letter:
            raise ConfigError("this backend has no native dead-letter queue; keep the payload, then ack",
                              where=self._where)


@dataclass(slots=True)
class Rejected:
    """What :meth:`Subscriber.reject` did with the messages it was given."""

    deferred: int = 0
    dead_lettered: int = 0
    kept: int = 0


class Subscriber(_SubBase):
    """Receive canonical events from one backend. Use as a context manager, or iterate."""

    def __init__(self, driver: SubscriberDriver, uri: BackendURI | None = None,
                 options: Mapping[str, Any] | None = None) -> None:
        super().__init__(driver, uri, options)

    def receive(self, max_messages: int = 10, timeout: float = 5.0) -> list[Received]:
        """Wait up to ``timeout`` s for at most ``max_messages``; each decoded, or with its error."""
        self._check_open()
        try:
            msgs = self._policy.call(self._driver.receive_batch, self._count(max_messages), timeout,
                                     driver=self._driver)
        except BatchBridgeError:
            raise
        except Exception as exc:
            raise self._typed(exc) from None
        self._release_held()
        return tracing.consumed(self.uri, self._where, [decode_message(m) for m in msgs],
                                quiet=self.expects_vendor_payloads)

    def reject(self, items: Sequence[Received], reason: str = "undecodable",
               dead_letters: Callable[[Sequence[Received]], None] | None = None) -> Rejected:
        """Settle messages that cannot be processed without ever spinning on them.

        Below ``max_deliveries`` each is hidden for a growing delay (its visibility timeout or ack
        deadline extended; on a backend without that, held here and released after the delay). At its
        ``max_deliveries``-th delivery it goes to the backend's native dead-letter queue with
        ``reason``, or to ``dead_letters`` (the bridge's store) and is then acked; with neither, it stays
        on the queue, hidden for the longest delay, and is counted as ``kept``."""
        self._check_open()
        out, due, final = self._triage(items)
        for delay, msgs in due.items():
            self._defer(msgs, delay)
        if final:
            description = self._description(final)
            if self.can_dead_letter:
                self.dead_letter(final, reason, description)
                out.dead_lettered += len(final)
            elif dead_letters is not None:
                dead_letters(final)
                self.ack(final)
                out.dead_lettered += len(final)
            else:
                self._defer(self._messages(final), REDELIVERY_BACKOFF.maximum)
                out.kept += len(final)
            self._forget(final)
        return out

    def _defer(self, msgs: list[ReceivedMessage], delay: float) -> None:
        if self._can_defer():
            self._settle("defer", msgs, delay)
        else:
            self._hold(msgs, delay)

    def _release_held(self, everything: bool = False) -> None:
        due = self._due_held(everything)
        if due:
            try:
                self._settle("nack", due)
            except BatchBridgeError as exc:
                # a lock that lapsed meanwhile (Service Bus) has made them available again already
                log.debug("releasing %d held messages failed (%s); the backend redelivers them", len(due), exc)

    def ack(self, items: Sequence[Received | ReceivedMessage]) -> None:
        self._settle("ack", items)

    def nack(self, items: Sequence[Received | ReceivedMessage]) -> None:
        self._settle("nack", items)

    def dead_letter(self, items: Sequence[Received | ReceivedMessage], reason: str, description: str = "") -> None:
        """Move messages to the backend's own dead-letter queue, with the reason."""
        self._check_dead_letter()
        self._settle("dead_letter", items, reason, description)

    def _settle(self, op: str, items: Sequence[Received | ReceivedMessage], *args: Any) -> None:
        self._check_open()
        msgs = self._messages(items)
        if not msgs:
            return
        try:
            self._policy.call(getattr(self._driver, op), msgs, *args, driver=self._driver)
        except BatchBridgeError:
            raise
        except Exception as exc:
            raise self._typed(exc) from None

    def __iter__(self) -> Iterator[Received]:
        while not self._closed:
            yield from self.receive()

    def close(self) -> None:
        if not self._closed:
            self._release_held(everything=True)
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

        async def once(*a: Any) -> Any:
            return await fn(*a) if self._native else await asyncio.to_thread(fn, *a)

        try:
            return await self._policy.acall(once, *args, driver=self._driver)
        except BatchBridgeError:
            raise
        except Exception as exc:
            raise self._typed(exc) from None

    async def receive(self, max_messages: int = 10, timeout: float = 5.0) -> list[Received]:
        self._check_open()
        msgs = await self._call("receive_batch", self._count(max_messages), timeout)
        await self._release_held()
        return tracing.consumed(self.uri, self._where, [decode_message(m) for m in msgs or []],
                                quiet=self.expects_vendor_payloads)

    async def ack(self, items: Sequence[Received | ReceivedMessage]) -> None:
        self._check_open()
        if items:
            await self._call("ack", self._messages(items))

    async def nack(self, items: Sequence[Received | ReceivedMessage]) -> None:
        self._check_open()
        if items:
            await self._call("nack", self._messages(items))

    async def dead_letter(self, items: Sequence[Received | ReceivedMessage], reason: str,
                          description: str = "") -> None:
        self._check_open()
        self._check_dead_letter()
        if items:
            await self._call("dead_letter", self._messages(items), reason, description)

    async def reject(self, items: Sequence[Received], reason: str = "undecodable",
                     dead_letters: Callable[[Sequence[Received]], Awaitable[None] | None] | None = None) -> Rejected:
        """:meth:`Subscriber.reject` for asyncio, with the same semantics; ``dead_letters`` may be a
        coroutine function."""
        self._check_open()
        out, due, final = self._triage(items)
        for delay, msgs in due.items():
            await self._defer(msgs, delay)
        if final:
            description = self._description(final)
            if self.can_dead_letter:
                await self.dead_letter(final, reason, description)
                out.dead_lettered += len(final)
            elif dead_letters is not None:
                kept = dead_letters(final)
                if kept is not None:
                    await kept
                await self.ack(final)
                out.dead_lettered += len(final)
            else:
                await self._defer(self._messages(final), REDELIVERY_BACKOFF.maximum)
                out.kept += len(final)
            self._forget(final)
        return out

    async def _defer(self, msgs: list[ReceivedMessage], delay: float) -> None:
        if self._can_defer():
            await self._call("defer", msgs, delay)
        else:
            self._hold(msgs, delay)

    async def _release_held(self, everything: bool = False) -> None:
        due = self._due_held(everything)
        if due:
            try:
                await self._call("nack", due)
            except BatchBridgeError as exc:
                log.debug("releasing %d held messages failed (%s); the backend redelivers them", len(due), exc)

    async def close(self) -> None:
        if self._closed:
            return
        await self._release_held(everything=True)
        self._closed = True
        if self._native:
            await self._driver.close()
        else:
            await asyncio.to_thread(self._driver.close)

    async def __aenter__(self) -> AsyncSubscriber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
