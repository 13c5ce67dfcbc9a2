"""The small interface each backend adapter implements (as in Go CDK's ``pubsub/driver``).

A new backend is one module with a ``BACKEND`` object (``core/registry.py``) whose drivers pass
``tests/conformance.py``. A driver only moves bytes. Its obligations, all of them (the conformance
suite checks each):

* **state its limits**: ``max_batch_count``, ``max_batch_bytes`` and ``max_message_bytes`` (bytes as
  ``Message.size`` counts them: body plus attribute names and values); ``attribute_prefix`` and
  ``max_attributes``, every attribute one message may carry; ``content_type_attribute = True`` when
  the backend has no content-type field of its own (the binding then sends ``content-type`` as one of
  the ``max_attributes``); ``one_key_per_batch = True`` when one request may carry one ordering key
  only (the portable layer then splits batches per key and sends the keys side by side). The last
  two are optional (default ``False``);
* **send** one batch of at most ``max_batch_count`` messages and ``max_batch_bytes`` bytes, and say
  per message whether the backend confirmed it (a partial failure is never a success); send
  ``Message.attributes`` as they are, and refuse per message (a typed error in its slot) what the
  backend would refuse for the whole request (an attribute value too long, a body it cannot carry);
* **receive** at most the number asked for, waiting at most ``timeout``; **ack**, **nack** (available
  again at once) and, where the backend can, **defer** (available again after a delay: visibility
  timeout, ack deadline) and **dead_letter** (the backend's own dead-letter queue);
* **map** every SDK exception to a portable :class:`~batchbridge.core.retry.ErrorCode`
  (``error_code``), and never retry on its own: the SDK's retries are off (botocore: one attempt;
  Pub/Sub: ``retry=None``; Service Bus: ``retry_total=0``), so that the one policy in
  :mod:`batchbridge.core.retry` decides what is tried again, how often and when;
* map ``Message.ordering_key`` and ``dedup_id`` to the backend's own fields, and bound every call by a
  timeout (no hangs);
* **close** idempotently, and raise :class:`~batchbridge.core.errors.ClosedError` after it.

What a driver does *not* do: batching, lanes and fan-out per ordering key, retries, back-off and
dead-lettering of what cannot be processed (``Subscriber.reject``), the CloudEvents binding
(``content-type``, attribute names, the attribute budget), envelopes of other services (SNS:
:func:`batchbridge.core.envelopes.unwrap_sns`), tracing, logging -- those live once, in
:mod:`batchbridge.core.publisher`, :mod:`batchbridge.core.keyfanout`,
:mod:`batchbridge.core.subscriber` and :mod:`batchbridge.core.binding`, for every backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .retry import ErrorCode


@dataclass(frozen=True, slots=True)
class Message:
    """One outgoing message, already in the backend's binding (see ``binding.to_message``)."""

    body: bytes
    #: binding attributes, already named with the backend's prefix (``ce-id`` / ``cloudEvents_id``)
    attributes: dict[str, str]
    content_type: str
    #: the job or environment id; drivers map it to MessageGroupId / ordering_key / session_id
    ordering_key: str | None = None
    #: the CloudEvent id; drivers map it to MessageDeduplicationId / message_id
    dedup_id: str | None = None
    #: the CloudEvent type (Service Bus puts it in ``subject``)
    event_type: str | None = None
    # ``content_type`` is also in ``attributes`` (as ``content-type``) for a driver that declares
    # ``content_type_attribute``; a driver with a content-type field of its own maps this one to it
    #: bytes the message occupies against a backend limit: body plus attribute names and values
    #: (computed once: the portable layer consults it several times per message)
    size: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        size = len(self.body)
        for k, v in self.attributes.items():
            # attribute names and values are nearly always ASCII: skip the encode there
            size += len(k) + len(v) if k.isascii() and v.isascii() else len(k.encode()) + len(v.encode())
        object.__setattr__(self, "size", size)


@dataclass(slots=True)
class ReceivedMessage:
    """One incoming message as the driver got it."""

    body: bytes
    attributes: dict[str, str]
    #: opaque handle the driver needs to ack/nack (receipt handle, ack id, lock token, ...)
    ack_id: Any
    #: the backend's own content-type field; None where it has none (the subscriber then reads the
    #: ``content-type`` attribute)
    content_type: str | None = None
    delivery_count: int | None = None
    ordering_key: str | None = None
    #: backend-native message id, for logs
    message_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class PublisherDriver(Protocol):
    #: the most messages one ``send_batch`` call may carry
    max_batch_count: int
    #: the most bytes (``Message.size`` summed) one ``send_batch`` call may carry
    max_batch_bytes: int
    #: the most bytes one message may have; larger ones are refused before sending
    max_message_bytes: int
    #: how binding attributes are named on this backend: ``"ce-"`` or ``"cloudEvents_"``
    attribute_prefix: str
    #: the most attributes one message may carry, ``content-type`` included where it is one (SQS/SNS: 10)
    max_attributes: int
    # optional (read with getattr, default False):
    #   content_type_attribute: bool -- no content-type field: the binding sends ``content-type`` as an attribute
    #   one_key_per_batch: bool -- a request carries one ordering key only: core/keyfanout.py splits per key

    def send_batch(self, messages: Sequence[Message]) -> list[BaseException | None]:
        """Send ``messages`` as one batch.

        Returns one entry per message: ``None`` when the backend confirmed it, else the exception for
        that message (so a partial failure is never reported as success). Raises when the whole batch
        failed (connection lost, entity missing); the portable layer asks :meth:`error_code` for its
        code.
        """
        ...

    def error_code(self, exc: BaseException) -> ErrorCode:
        """The portable code of an exception this driver (its SDK) raised."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class SubscriberDriver(Protocol):
    #: the most messages one ``receive_batch`` call may ask for
    max_receive_count: int

    def receive_batch(self, max_messages: int, timeout: float) -> list[ReceivedMessage]:
        """Wait up to ``timeout`` seconds for at most ``max_messages``; return what arrived (maybe none)."""
        ...

    def ack(self, messages: Sequence[ReceivedMessage]) -> None: ...

    def nack(self, messages: Sequence[ReceivedMessage]) -> None:
        """Make the messages available for redelivery as soon as the backend allows."""
        ...

    def error_code(self, exc: BaseException) -> ErrorCode: ...

    def close(self) -> None: ...


class Deferring(Protocol):
    """Optional: a subscriber driver that can hide received messages for a while (SQS visibility,
    Pub/Sub ack deadline, file:// and memory://). Without it the portable layer holds them itself."""

    def defer(self, messages: Sequence[ReceivedMessage], delay: float) -> None: ...


class DeadLetterCapable(Protocol):
    """Optional: a subscriber driver whose backend has a native dead-letter queue (Service Bus)."""

    def dead_letter(self, messages: Sequence[ReceivedMessage], reason: str, description: str) -> None: ...


@runtime_checkable
class AsyncPublisherDriver(Protocol):
    """Optional native asyncio driver; without one, the portable layer runs the sync driver in threads."""

    max_batch_count: int
    max_batch_bytes: int
    max_message_bytes: int
    attribute_prefix: str
    max_attributes: int

    async def send_batch(self, messages: Sequence[Message]) -> list[BaseException | None]: ...

    def error_code(self, exc: BaseException) -> ErrorCode: ...

    async def close(self) -> None: ...


@runtime_checkable
class AsyncSubscriberDriver(Protocol):
    max_receive_count: int

    async def receive_batch(self, max_messages: int, timeout: float) -> list[ReceivedMessage]: ...

    async def ack(self, messages: Sequence[ReceivedMessage]) -> None: ...

    async def nack(self, messages: Sequence[ReceivedMessage]) -> None: ...

    def error_code(self, exc: BaseException) -> ErrorCode: ...

    async def close(self) -> None: ...
