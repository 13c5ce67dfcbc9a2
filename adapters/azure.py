"""``servicebus://``: Azure Service Bus queues, topics and topic subscriptions (extra ``[azure]``).

URI forms::

    servicebus://NAMESPACE.servicebus.windows.net/QUEUE-OR-TOPIC   publish; DefaultAzureCredential unless a
                                                                  connection string is set (same namespace)
    servicebus:///QUEUE-OR-TOPIC                                  publish; namespace from the connection string
    servicebus:///QUEUE                                           consume a queue
    servicebus:///TOPIC/subscriptions/SUBSCRIPTION                consume a topic subscription
    servicebus:///QUEUE/$deadletterqueue                          consume a dead-letter sub-queue (also after
                                                                  .../subscriptions/SUBSCRIPTION)

Authentication: the connection string in ``SERVICEBUS_CONNECTION_STRING`` (or the variable named by
``?connection_string_env=``), else ``DefaultAzureCredential`` from ``azure-identity`` on the URI's
namespace host. The official emulator's connection string (``UseDevelopmentEmulator=true``) works
unchanged. The connection string and its key are registered with :mod:`batchbridge.core.secrets`, so
no log line, error or repr shows them.

On the wire (the CloudEvents AMQP binding): application properties ``cloudEvents_*`` (or the
binding's own ``cloudEvents:*`` with ``?amqp_prefix=colon``; received messages may use either, and
properties in native AMQP types -- timestamp, binary, uuid -- are read as the binding maps them),
``subject`` = event type, ``content_type``, ``message_id`` = event id (Service Bus duplicate
detection works on it), ``session_id`` = job or environment id with ``?sessions=true``. A batch the
portable layer hands over is sent as one or more ``ServiceBusMessageBatch``es, never larger than the
size the SDK reports; each SDK batch is all-or-nothing and its outcome is reported per message.

Receiving is peek-lock: ack = complete, nack = abandon (redelivered at once, ``delivery_count``
grows), :meth:`dead_letter` = the entity's native ``$deadletterqueue`` with reason and description.
With ``?sessions=true`` the subscriber takes the next available session, drains it and moves on to
the next (or stays on ``?session=ID``).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from batchbridge.core.binding import AMQP_PREFIXES, amqp_properties
from batchbridge.core.driver import Message, ReceivedMessage
from batchbridge.core.errors import (
    BackendError,
    BatchBridgeError,
    ClosedError,
    ConfigError,
    EntityNotFoundError,
    MessageTooLargeError,
    MissingDependencyError,
)
from batchbridge.core.registry import BackendURI, Option
from batchbridge.core.retry import ErrorCode, is_transient
from batchbridge.core.secrets import redact, remember

log = logging.getLogger("batchbridge.adapters.azure")

DEFAULT_ENV = "SERVICEBUS_CONNECTION_STRING"
#: the standard tier's limit per message and per batch; the link's own figure replaces it once open
STANDARD_TIER_BYTES = 256 * 1024
#: room left in ``max_message_bytes`` for what ``Message.size`` does not count (AMQP sections, ids)
_ENVELOPE = 2 * 1024
#: kept free in every SDK batch: the SDK does not count the batch envelope's own properties (the first
#: message's message_id/session_id), so a batch it calls full can exceed the link's limit by that much
_BATCH_MARGIN = 1024
_INSTALL = "pip install 'batchbridge[azure]'"


# --------------------------------------------------------------------------------------------- SDK


_SB: Any = None


def _sdk() -> Any:
    """``azure.servicebus``, imported on first use (it is on the per-message path: cache it)."""
    global _SB
    if _SB is None:
        try:
            import azure.servicebus as sb
        except ImportError:
            raise MissingDependencyError(
                f"servicebus:// needs the Azure Service Bus SDK: {_INSTALL}", where="servicebus://"
            ) from None
        _SB = sb
    return _SB


def _aio() -> Any:
    _sdk()
    import azure.servicebus.aio as sb_aio

    return sb_aio


def _exceptions() -> Any:
    import azure.servicebus.exceptions as exc

    return exc


# --------------------------------------------------------------------------------------------- URI


@dataclass(frozen=True)
class _Target:
    entity: str
    subscription: str | None
    dead_letter: bool
    namespace: str | None
    sessions: bool
    session: str | None
    max_wait_time: float
    prefetch: int
    operation_timeout: float
    where: str
    conn_str: str | None = field(default=None, repr=False)


def _conn_parts(conn_str: str) -> dict[str, str]:
    parts: dict[str, str] = {}
    for item in conn_str.split(";"):
        key, sep, value = item.strip().partition("=")
        if sep:
            parts[key.strip().lower()] = value.strip()
    return parts


def _endpoint_host(endpoint: str) -> str:
    host = endpoint.split("://", 1)[-1].split("/", 1)[0]
    return host.rsplit(":", 1)[0].lower() if host.count(":") == 1 else host.lower()


def _target(uri: BackendURI, *, subscriber: bool) -> _Target:
    where = uri.redacted
    segments = [s for s in uri.path.split("/") if s]
    if not segments:
        raise ConfigError("servicebus:// needs an entity: servicebus:///QUEUE or servicebus:///TOPIC/subscriptions/SUB",
                          where=where)
    dead_letter = subscriber and len(segments) > 1 and segments[-1].lower() == "$deadletterqueue"
    if dead_letter:
        segments = segments[:-1]
    subscription = None
    if len(segments) == 3 and segments[1].lower() == "subscriptions":
        subscription = segments[2]
        if not subscriber:
            raise ConfigError(f"publish to the topic {segments[0]!r}, not to one of its subscriptions", where=where)
    elif len(segments) != 1:
        raise ConfigError("the path is QUEUE, TOPIC or TOPIC/subscriptions/SUBSCRIPTION (a subscriber may add "
                          "/$deadletterqueue)", where=where)
    opts = uri.options
    env = str(opts.get("connection_string_env") or DEFAULT_ENV)
    conn_str = os.environ.get(env) or None
    namespace = uri.host or None
    if conn_str:
        parts = _conn_parts(conn_str)
        remember(conn_str, parts.get("sharedaccesskey"), parts.get("sharedaccesssignature"))
        if "endpoint" not in parts:
            raise ConfigError(f"the connection string in ${env} has no Endpoint", where=where)
        own = _endpoint_host(parts["endpoint"])
        if namespace and namespace.rsplit(":", 1)[0].lower() != own:
            raise ConfigError(f"the URI names namespace {namespace!r} but the connection string in ${env} is for "
                              f"{own!r}", where=where)
    elif not namespace:
        raise ConfigError(f"no namespace: set ${env} to a connection string, or name the namespace host "
                          "(servicebus://NAMESPACE.servicebus.windows.net/ENTITY) to use DefaultAzureCredential",
                          where=where)
    session = opts.get("session") or None
    max_wait = float(opts.get("max_wait_time", 60.0))
    timeout = float(opts.get("operation_timeout", 30.0))
    if dead_letter and (opts.get("sessions") or session):
        raise ConfigError("a dead-letter queue has no sessions: drop sessions= and session=", where=where)
    if max_wait <= 0 or timeout <= 0:
        raise ConfigError("max_wait_time and operation_timeout must be greater than 0", where=where)
    return _Target(
        entity=segments[0],
        subscription=subscription,
        dead_letter=dead_letter,
        namespace=namespace,
        sessions=bool(opts.get("sessions")) or session is not None,
        session=session,
        max_wait_time=max_wait,
        prefetch=max(0, int(opts.get("prefetch", 0))),
        operation_timeout=timeout,
        where=where,
        conn_str=conn_str,
    )


def _client_kwargs(t: _Target) -> dict[str, Any]:
    # the one retry policy (core/retry.py) decides; SDK-level retries would multiply its attempts
    return {"retry_total": 0, "try_timeout": t.operation_timeout}


def _credential(t: _Target, aio: bool) -> Any:
    try:
        credential: Any
        if aio:
            from azure.identity.aio import DefaultAzureCredential as credential
        else:
            from azure.identity import DefaultAzureCredential as credential
    except ImportError:
        raise MissingDependencyError(
            f"no connection string in the environment, and azure-identity is not installed for "
            f"DefaultAzureCredential: set ${DEFAULT_ENV} or pip install azure-identity",
            where=t.where,
        ) from None
    return credential()


def _client(t: _Target) -> Any:
    sb = _sdk()
    if t.conn_str:
        return sb.ServiceBusClient.from_connection_string(t.conn_str, **_client_kwargs(t))
    return sb.ServiceBusClient(t.namespace, _credential(t, False), **_client_kwargs(t))


def _aio_client(t: _Target) -> Any:
    sb_aio = _aio()
    if t.conn_str:
        return sb_aio.ServiceBusClient.from_connection_string(t.conn_str, **_client_kwargs(t))
    return sb_aio.ServiceBusClient(t.namespace, _credential(t, True), **_client_kwargs(t))


# ----------------------------------------------------------------------------------------- errors


def error_code(exc: BaseException) -> ErrorCode:
    """The portable code of an SDK exception."""
    if isinstance(exc, BatchBridgeError):
        return exc.error_code
    sb = _exceptions()
    for kinds, code in (
        ((sb.MessagingEntityNotFoundError, sb.MessageNotFoundError), ErrorCode.NOT_FOUND),
        ((sb.ServiceBusAuthenticationError, sb.ServiceBusAuthorizationError), ErrorCode.PERMISSION_DENIED),
        ((sb.MessageSizeExceededError,), ErrorCode.INVALID_ARGUMENT),
        ((sb.MessagingEntityDisabledError, sb.MessageLockLostError, sb.SessionLockLostError,
          sb.MessageAlreadySettled), ErrorCode.FAILED_PRECONDITION),
        ((sb.ServiceBusServerBusyError, sb.ServiceBusQuotaExceededError), ErrorCode.RESOURCE_EXHAUSTED),
        ((sb.OperationTimeoutError,), ErrorCode.DEADLINE_EXCEEDED),
        ((sb.ServiceBusConnectionError, sb.ServiceBusCommunicationError, sb.SessionCannotBeLockedError),
         ErrorCode.UNAVAILABLE),
    ):
        if isinstance(exc, kinds):
            return code
    if isinstance(exc, sb.ServiceBusError):
        return ErrorCode.UNAVAILABLE if getattr(exc, "_retryable", False) else ErrorCode.UNKNOWN
    if isinstance(exc, TimeoutError):
        return ErrorCode.DEADLINE_EXCEEDED
    return ErrorCode.UNAVAILABLE if isinstance(exc, (ConnectionError, OSError)) else ErrorCode.UNKNOWN


def is_retryable(exc: BaseException) -> bool:
    """Whether trying the same operation again may succeed (the one policy's verdict on the code)."""
    return is_transient(error_code(exc))


def _typed(exc: BaseException, where: str) -> BatchBridgeError:
    """An SDK exception as a typed error whose text carries no secret."""
    if isinstance(exc, BatchBridgeError):
        return exc
    sb_exc = _exceptions()
    text = redact(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, sb_exc.MessagingEntityNotFoundError):
        return EntityNotFoundError(text, where=where, provider="azure", cause=exc)
    if isinstance(exc, (sb_exc.ServiceBusAuthenticationError, sb_exc.ServiceBusAuthorizationError)):
        return BackendError(f"{text} (check the key or role; a missing entity can also look like this)",
                            where=where, provider="azure", error_code=ErrorCode.PERMISSION_DENIED, cause=exc)
    if isinstance(exc, sb_exc.MessageSizeExceededError):
        return MessageTooLargeError(text, where=where, provider="azure", cause=exc)
    return BackendError(text, where=where, provider="azure", error_code=error_code(exc), cause=exc)


# ---------------------------------------------------------------------------------------- binding


def _outgoing(m: Message, sessions: bool) -> Any:
    sb = _sdk()
    session_id = None
    if sessions:  # a session entity refuses messages without one; keyless events get their own
        session_id = m.ordering_key or m.dedup_id or "default"
    return sb.ServiceBusMessage(
        m.body,
        application_properties=dict(m.attributes),
        content_type=m.content_type,
        subject=m.event_type,
        message_id=m.dedup_id,
        session_id=session_id,
    )


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime.datetime):
        stamp: datetime.datetime = value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
        return stamp.astimezone(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
    return str(value)


def _body(msg: Any) -> bytes:
    sb_amqp = _sdk().amqp
    kind = msg.body_type
    body = msg.body
    if kind == sb_amqp.AmqpMessageBodyType.DATA:
        return b"".join(bytes(b) for b in body)
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    if kind == sb_amqp.AmqpMessageBodyType.SEQUENCE:
        body = list(body)
    return json.dumps(body, default=_text).encode()


@dataclass(eq=False)
class _Handle:
    """What a ReceivedMessage's ``ack_id`` holds: the SDK message and the receiver that locked it."""

    receiver: Any
    message: Any
    settled: bool = False

    def __repr__(self) -> str:
        return f"_Handle(lock_token={self.message.lock_token!s})"


def _received(receiver: Any, msg: Any) -> ReceivedMessage:
    attributes = amqp_properties(msg.application_properties)
    count = msg.delivery_count
    return ReceivedMessage(
        body=_body(msg),
        attributes=attributes,
        ack_id=_Handle(receiver, msg),
        content_type=msg.content_type,
        delivery_count=None if count is None else count + 1,  # the wire counts earlier attempts
        ordering_key=msg.session_id,
        message_id=None if msg.message_id is None else str(msg.message_id),
        extra={"sequence_number": msg.sequence_number, "enqueued_time": msg.enqueued_time_utc,
               "subject": msg.subject, "dead_letter_reason": msg.dead_letter_reason},
    )


# -------------------------------------------------------------------------------------- publishing


def _quiet_close(obj: Any) -> None:
    """Close an SDK handler; a failure is logged, never raised (it must not hide the caller's error)."""
    try:
        obj.close()
    except Exception as exc:
        log.debug("closing a Service Bus handler: %s", redact(str(exc)))


async def _aquiet_close(obj: Any) -> None:
    try:
        await obj.close()
    except Exception as exc:
        log.debug("closing a Service Bus handler: %s", redact(str(exc)))


class _PublisherBase:
    attribute_prefix = "cloudEvents_"
    #: Service Bus caps the whole header (properties) at 64 KB, not the count; the binding uses < 20
    max_attributes = 64
    #: a bound on messages per send; the bytes limit is the SDK batch size (256 KiB on standard tier)
    max_batch_count = 200

    def __init__(self, uri: BackendURI) -> None:
        self._t = _target(uri, subscriber=False)
        self._closed = False
        self._limits(STANDARD_TIER_BYTES, STANDARD_TIER_BYTES)
        self.attribute_prefix = AMQP_PREFIXES[str(uri.options.get("amqp_prefix") or "underscore")]

    def _limits(self, message_bytes: int, batch_bytes: int) -> None:
        self.max_message_bytes = max(1024, message_bytes - _ENVELOPE)
        # AMQP framing per message (ids, section headers) is not in Message.size: keep 1/8 for it, and
        # split again in send_batch whenever the SDK says a batch is full
        self.max_batch_bytes = max(1024, batch_bytes - batch_bytes // 8)

    def _check(self) -> None:
        if self._closed:
            raise ClosedError("Service Bus publisher is closed", where=self._t.where)

    def _error(self, exc: BaseException) -> BatchBridgeError:
        return _typed(exc, self._t.where)

    def _outgoing(self, m: Message, i: int, results: list[BaseException | None]) -> Any:
        """The SDK message for ``m``, or None with the reason in ``results[i]`` when the SDK refuses it
        (an id or session id over Service Bus's 128 characters, say)."""
        try:
            return _outgoing(m, self._t.sessions)
        except (ValueError, TypeError) as exc:
            results[i] = BackendError(redact(f"Service Bus refuses this message: {exc}"),
                                      where=f"{self._t.where} event {m.dedup_id}", provider="azure")
            return None

    def _send_failed(self, groups: list[tuple[list[int], Any]], n: int, exc: BaseException,
                     results: list[BaseException | None]) -> None:
        """SDK batch ``n`` of ``groups`` failed: it and every later one get the error (a session's or the
        entity's order must not be overtaken); raised when it was the whole call (retried as a whole)."""
        err = self._error(exc)
        if n == 0 and len(groups[0][0]) == len(results):
            raise err from None
        for later, _ in groups[n:]:
            for i in later:
                results[i] = err

    def _too_big(self, m: Message, limit: int) -> MessageTooLargeError:
        return MessageTooLargeError(
            f"message is {m.size} bytes (body and attributes) and does not fit one Service Bus message of "
            f"{limit} bytes with its AMQP envelope", where=f"{self._t.where} event {m.dedup_id}", provider="azure")

    def error_code(self, exc: BaseException) -> ErrorCode:
        return error_code(exc)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._t.where!r})"


def _packing(pub: _PublisherBase, messages: Sequence[Message],
             results: list[BaseException | None]) -> Generator[None, Any, list[tuple[list[int], Any]]]:
    """Split ``messages`` into SDK batches, each within the size the SDK reports; yields whenever it
    needs a fresh ``ServiceBusMessageBatch`` (sent in), returns ``[(indices, batch), ...]``. Refused
    messages get their error in ``results``. With sessions, a batch holds one session id only (a
    partitioned entity refuses a batch that mixes them)."""
    groups: list[tuple[list[int], Any]] = []
    batch: Any = None
    indices: list[int] = []
    session: str | None = None
    for i, m in enumerate(messages):
        outgoing = pub._outgoing(m, i, results)
        if outgoing is None:
            continue
        if indices and pub._t.sessions and outgoing.session_id != session:
            groups.append((indices, batch))
            batch, indices = None, []
        for _ in range(2):  # into the current batch, else into a fresh one
            if batch is None:
                batch = yield
            if _fill(batch, outgoing):
                if not indices:
                    session = outgoing.session_id
                indices.append(i)
                break
            if not indices:  # alone in an empty batch and still too big
                results[i] = pub._too_big(m, batch.max_size_in_bytes)
                break
            groups.append((indices, batch))
            batch, indices = None, []
    if indices:
        groups.append((indices, batch))
    return groups


def _fill(batch: Any, outgoing: Any) -> bool:
    """Add one message to an SDK batch; False when the batch is full."""
    try:
        batch.add_message(outgoing)
    except _exceptions().MessageSizeExceededError:
        return False
    return True


class ServiceBusPublisher(_PublisherBase):
    """Sync driver: one ServiceBusSender for the life of the driver (sends are serialised on it)."""

    def __init__(self, uri: BackendURI) -> None:
        super().__init__(uri)
        self._lock = threading.Lock()
        self._client = _client(self._t)
        self._sender = self._client.get_queue_sender(self._t.entity)
        self._open = False
        self._cap = STANDARD_TIER_BYTES - _BATCH_MARGIN
        try:  # fail fast on a wrong entity or key, and learn the link's limits
            self._ensure_open()
        except BackendError as exc:
            if not exc.retryable:
                self.close()
                raise
            log.debug("Service Bus sender not open yet (%s); it opens on the first send", exc)

    def probe(self) -> None:
        """``batchbridge check``: open the link now, whatever the error (opening only logs a retryable one)."""
        with self._lock:
            self._ensure_open()

    def _ensure_open(self) -> None:
        if self._open:
            return
        try:
            batch = self._sender.create_message_batch()  # opens the link and reads its limits
        except Exception as exc:
            raise self._error(exc) from None
        self._limits(getattr(self._sender, "_max_message_size_on_link", 0) or batch.max_size_in_bytes,
                     batch.max_size_in_bytes)
        self._cap = batch.max_size_in_bytes - _BATCH_MARGIN
        self._open = True

    def send_batch(self, messages: Sequence[Message]) -> list[BaseException | None]:
        self._check()
        results: list[BaseException | None] = [None] * len(messages)
        with self._lock:
            self._ensure_open()
        # building SDK batches is CPU work without I/O: done outside the lock, it overlaps another
        # lane's send, which waits on the network
        groups = self._pack(messages, results)
        with self._lock:
            self._check()
            for n, (_, batch) in enumerate(groups):
                try:
                    self._sender.send_messages(batch, timeout=self._t.operation_timeout)
                except Exception as exc:
                    self._send_failed(groups, n, exc, results)
                    break
        return results

    def _pack(self, messages: Sequence[Message], results: list[BaseException | None]) -> list[tuple[list[int], Any]]:
        packing = _packing(self, messages, results)
        try:
            next(packing)
            while True:
                packing.send(self._sender.create_message_batch(self._cap))
        except StopIteration as done:
            groups: list[tuple[list[int], Any]] = done.value
            return groups
        except Exception as exc:
            raise self._error(exc) from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lock:
            for handler in (self._sender, self._client):
                _quiet_close(handler)


class AsyncServiceBusPublisher(_PublisherBase):
    """Native asyncio driver on ``azure.servicebus.aio``; the link opens on the first send."""

    def __init__(self, uri: BackendURI) -> None:
        super().__init__(uri)
        self._client: Any = None
        self._sender: Any = None
        self._lock: asyncio.Lock | None = None
        self._cap: int | None = None

    async def _ensure_open(self) -> Any:
        if self._sender is None:
            self._client = _aio_client(self._t)
            self._sender = self._client.get_queue_sender(self._t.entity)
        return self._sender

    async def send_batch(self, messages: Sequence[Message]) -> list[BaseException | None]:
        self._check()
        if self._lock is None:
            self._lock = asyncio.Lock()
        results: list[BaseException | None] = [None] * len(messages)
        async with self._lock:
            sender = await self._ensure_open()
            if self._cap is None:  # the first batch opens the link and tells its limit
                try:
                    self._cap = (await sender.create_message_batch()).max_size_in_bytes - _BATCH_MARGIN
                except Exception as exc:
                    raise self._error(exc) from None
        groups = await self._pack(sender, messages, results)  # no I/O once open: overlaps another send
        async with self._lock:
            self._check()
            for n, (_, batch) in enumerate(groups):
                try:
                    await sender.send_messages(batch, timeout=self._t.operation_timeout)
                except Exception as exc:
                    self._send_failed(groups, n, exc, results)
                    break
        return results

    async def _pack(self, sender: Any, messages: Sequence[Message],
                    results: list[BaseException | None]) -> list[tuple[list[int], Any]]:
        packing = _packing(self, messages, results)
        try:
            next(packing)
            while True:
                packing.send(await sender.create_message_batch(self._cap))
        except StopIteration as done:
            groups: list[tuple[list[int], Any]] = done.value
            return groups
        except Exception as exc:
            raise self._error(exc) from None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for handler in (self._sender, self._client):
            if handler is not None:
                await _aquiet_close(handler)


# -------------------------------------------------------------------------------------- receiving


class _SubscriberBase:
    #: the most messages one receive asks for (the link credit with the default prefetch of 0)
    max_receive_count = 100
    #: how long the subscriber listens on an idle session before it tries the next one
    session_idle = 0.3

    def __init__(self, uri: BackendURI) -> None:
        self._t = _target(uri, subscriber=True)
        self._closed = False
        self._receiver: Any = None  # the receiver in use (the current session's, with sessions)
        self._held: dict[Any, int] = {}  # session receivers with unsettled messages -> how many

    def _check(self) -> None:
        if self._closed:
            raise ClosedError("Service Bus subscriber is closed", where=self._t.where)

    # What the sync and the asyncio drivers share: everything but the SDK calls themselves.

    def _close_later(self, receiver: Any) -> None:
        raise NotImplementedError

    def _next_session(self) -> Any:
        return self._t.session if self._t.session else _sdk().NEXT_AVAILABLE_SESSION

    def _session_wait(self, remaining: float) -> float:
        """How long to listen on the current session: an idle one is left after ``session_idle``."""
        return self._wait(remaining if self._t.session else min(remaining, self.session_idle))

    def _locked(self, msgs: Sequence[Any], count: bool) -> list[ReceivedMessage]:
        """Messages the current receiver locked; with ``count`` (a session's) counted against it, so it
        stays open until the last of them is settled."""
        if count and msgs:
            self._held[self._receiver] = self._held.get(self._receiver, 0) + len(msgs)
        return [_received(self._receiver, m) for m in msgs]

    def _session_was_idle(self) -> None:
        """The current session had nothing within the wait: go on to the next one (unless one is named);
        its receiver closes now, or after its last settlement."""
        if self._t.session is not None:
            return
        receiver, self._receiver = self._receiver, None
        if not self._held.get(receiver):
            self._held.pop(receiver, None)
            self._close_later(receiver)

    def _settle_call(self, h: _Handle, op: str, args: tuple[Any, ...]) -> Any:
        """The SDK's settlement call for one message (a coroutine on the asyncio receiver)."""
        if op == "dead_letter":
            return h.receiver.dead_letter_message(h.message, reason=args[0], error_description=args[1])
        return getattr(h.receiver, op)(h.message)

    def _settled(self, h: _Handle) -> None:
        h.settled = True
        receiver = h.receiver
        if receiver not in self._held:
            return
        self._held[receiver] -= 1
        if self._held[receiver] <= 0:
            del self._held[receiver]
            if receiver is not self._receiver:
                self._close_later(receiver)

    def _open_receivers(self) -> set[Any]:
        return {*self._held, self._receiver} - {None}

    def _receiver_kwargs(self, wait: float | None = None) -> dict[str, Any]:
        kw: dict[str, Any] = {"max_wait_time": wait or self._t.max_wait_time, "prefetch_count": self._t.prefetch}
        if self._t.dead_letter:
            kw["sub_queue"] = _sdk().ServiceBusSubQueue.DEAD_LETTER
        if self._t.subscription:
            kw["topic_name"], kw["subscription_name"] = self._t.entity, self._t.subscription
        else:
            kw["queue_name"] = self._t.entity
        return kw

    def _get_receiver(self, client: Any, session_id: Any = None, wait: float | None = None) -> Any:
        kw = self._receiver_kwargs(wait)
        if session_id is not None:
            kw["session_id"] = session_id
        if self._t.subscription:
            return client.get_subscription_receiver(**kw)
        return client.get_queue_receiver(**kw)

    def _wait(self, timeout: float) -> float:
        return max(0.05, min(timeout, self._t.max_wait_time))

    def error_code(self, exc: BaseException) -> ErrorCode:
        return error_code(exc)

    def _error(self, exc: BaseException) -> BatchBridgeError:
        return _typed(exc, self._t.where)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._t.where!r})"

    @staticmethod
    def _handles(messages: Sequence[ReceivedMessage]) -> list[_Handle]:
        return [m.ack_id for m in messages if isinstance(m.ack_id, _Handle) and not m.ack_id.settled]


class ServiceBusSubscriber(_SubscriberBase):
    """Sync peek-lock driver; implements DeadLetterCapable."""

    def __init__(self, uri: BackendURI) -> None:
        super().__init__(uri)
        self._lock = threading.RLock()
        self._client = _client(self._t)
        self._closers: list[threading.Thread] = []
        if not self._t.sessions:
            self._receiver = self._get_receiver(self._client)
            try:  # fail fast on a missing entity or a wrong key
                self._receiver.__enter__()
            except Exception as exc:
                err = self._error(exc)
                if not err.retryable:
                    self.close()
                    raise err from None
                log.debug("Service Bus receiver not open yet (%s); it opens on the first receive", err)

    def receive_batch(self, max_messages: int, timeout: float) -> list[ReceivedMessage]:
        with self._lock:
            self._check()
            try:
                if not self._t.sessions:
                    msgs = self._receiver.receive_messages(max_message_count=max_messages,
                                                           max_wait_time=self._wait(timeout))
                    return self._locked(msgs, count=False)
                return self._receive_sessions(max_messages, timeout)
            except BatchBridgeError:
                raise
            except Exception as exc:
                raise self._error(exc) from None

    def _receive_sessions(self, max_messages: int, timeout: float) -> list[ReceivedMessage]:
        exc_mod = _exceptions()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if self._receiver is None:
                receiver = self._get_receiver(self._client, self._next_session(), self._wait(remaining))
                try:
                    receiver.__enter__()
                except (exc_mod.OperationTimeoutError, exc_mod.SessionCannotBeLockedError):
                    self._close_later(receiver)
                    return []  # no session with messages within the wait
                self._receiver = receiver
            msgs = self._receiver.receive_messages(max_message_count=max_messages,
                                                   max_wait_time=self._session_wait(remaining))
            if msgs:
                return self._locked(msgs, count=True)
            self._session_was_idle()
            if time.monotonic() >= deadline:
                return []

    def _close_later(self, receiver: Any) -> None:
        """Close a session receiver without waiting (each close costs the SDK about half a second)."""
        self._closers = [t for t in self._closers if t.is_alive()]
        closer = threading.Thread(target=_quiet_close, args=(receiver,), name="batchbridge-sb-close", daemon=True)
        closer.start()
        self._closers.append(closer)

    def _settle(self, messages: Sequence[ReceivedMessage], op: str, *args: Any) -> None:
        with self._lock:
            self._check()
            for h in self._handles(messages):
                try:
                    self._settle_call(h, op, args)
                except Exception as exc:
                    raise self._error(exc) from None
                self._settled(h)

    def ack(self, messages: Sequence[ReceivedMessage]) -> None:
        self._settle(messages, "complete_message")

    def nack(self, messages: Sequence[ReceivedMessage]) -> None:
        self._settle(messages, "abandon_message")

    def dead_letter(self, messages: Sequence[ReceivedMessage], reason: str, description: str) -> None:
        self._settle(messages, "dead_letter", reason, description)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lock:
            for receiver in self._open_receivers():
                _quiet_close(receiver)
            for closer in self._closers:
                closer.join(timeout=self._t.operation_timeout)
            _quiet_close(self._client)


class AsyncServiceBusSubscriber(_SubscriberBase):
    """Native asyncio peek-lock driver on ``azure.servicebus.aio``; implements DeadLetterCapable."""

    def __init__(self, uri: BackendURI) -> None:
        super().__init__(uri)
        self._client: Any = None
        self._lock: asyncio.Lock | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def receive_batch(self, max_messages: int, timeout: float) -> list[ReceivedMessage]:
        async with self._get_lock():
            self._check()
            try:
                if self._client is None:
                    self._client = _aio_client(self._t)
                if not self._t.sessions:
                    if self._receiver is None:
                        self._receiver = self._get_receiver(self._client)
                    msgs = await self._receiver.receive_messages(max_message_count=max_messages,
                                                                 max_wait_time=self._wait(timeout))
                    return self._locked(msgs, count=False)
                return await self._receive_sessions(max_messages, timeout)
            except BatchBridgeError:
                raise
            except Exception as exc:
                raise self._error(exc) from None

    async def _receive_sessions(self, max_messages: int, timeout: float) -> list[ReceivedMessage]:
        exc_mod = _exceptions()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if self._receiver is None:
                receiver = self._get_receiver(self._client, self._next_session(), self._wait(remaining))
                try:
                    await receiver.__aenter__()
                except (exc_mod.OperationTimeoutError, exc_mod.SessionCannotBeLockedError):
                    self._close_later(receiver)
                    return []
                self._receiver = receiver
            msgs = await self._receiver.receive_messages(max_message_count=max_messages,
                                                         max_wait_time=self._session_wait(remaining))
            if msgs:
                return self._locked(msgs, count=True)
            self._session_was_idle()
            if time.monotonic() >= deadline:
                return []

    def _close_later(self, receiver: Any) -> None:
        task = asyncio.ensure_future(_aquiet_close(receiver))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _settle(self, messages: Sequence[ReceivedMessage], op: str, *args: Any) -> None:
        async with self._get_lock():
            self._check()
            for h in self._handles(messages):
                try:
                    await self._settle_call(h, op, args)
                except Exception as exc:
                    raise self._error(exc) from None
                self._settled(h)

    async def ack(self, messages: Sequence[ReceivedMessage]) -> None:
        await self._settle(messages, "complete_message")

    async def nack(self, messages: Sequence[ReceivedMessage]) -> None:
        await self._settle(messages, "abandon_message")

    async def dead_letter(self, messages: Sequence[ReceivedMessage], reason: str, description: str) -> None:
        await self._settle(messages, "dead_letter", reason, description)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._get_lock():
            for receiver in self._open_receivers():
                await _aquiet_close(receiver)
            if self._closing:
                await asyncio.gather(*self._closing, return_exceptions=True)
            if self._client is not None:
                await _aquiet_close(self._client)


# ---------------------------------------------------------------------------------------- backend


class _ServiceBusBackend:
    schemes = ("servicebus",)
    extra = "azure"
    forms = (
        "servicebus://NAMESPACE.servicebus.windows.net/QUEUE-OR-TOPIC",
        "servicebus:///QUEUE-OR-TOPIC (namespace from the connection string)",
        "servicebus:///QUEUE (subscriber)",
        "servicebus:///TOPIC/subscriptions/SUBSCRIPTION (subscriber)",
        "servicebus:///QUEUE/$deadletterqueue, .../subscriptions/SUBSCRIPTION/$deadletterqueue (subscriber)",
    )
    options = (
        Option("connection_string_env", str, DEFAULT_ENV,
               "environment variable holding the connection string; unset: DefaultAzureCredential "
               "(azure-identity) on the URI's namespace host"),
        Option("sessions", bool, False,
               "the entity requires sessions: session_id = job or environment id; the subscriber takes the "
               "next available session"),
        Option("session", str, None, "subscriber: receive only this session id (implies sessions=true)"),
        Option("max_wait_time", float, 60.0,
               "subscriber: longest one receive waits for a message or a free session, seconds"),
        Option("prefetch", int, 0, "subscriber: messages locked ahead of receive calls; 0 = only what a "
               "receive asks for"),
        Option("operation_timeout", float, 30.0, "bound on one send, settlement or link open, seconds"),
        Option("amqp_prefix", str, "underscore",
               "publisher: application property prefix, underscore = cloudEvents_* (what Service Bus SQL "
               "filters name without quoting), colon = cloudEvents:* (the AMQP binding's own; for readers "
               "that know only it, e.g. the Go SDK). Subscribers read both", choices=tuple(AMQP_PREFIXES)),
    )

    def check_publisher(self, uri: BackendURI) -> None:
        _target(uri, subscriber=False)

    def check_subscriber(self, uri: BackendURI) -> None:
        _target(uri, subscriber=True)

    def open_publisher(self, uri: BackendURI) -> ServiceBusPublisher:
        return ServiceBusPublisher(uri)

    def open_subscriber(self, uri: BackendURI) -> ServiceBusSubscriber:
        return ServiceBusSubscriber(uri)

    def open_async_publisher(self, uri: BackendURI) -> AsyncServiceBusPublisher:
        _sdk()
        return AsyncServiceBusPublisher(uri)

    def open_async_subscriber(self, uri: BackendURI) -> AsyncServiceBusSubscriber:
        _sdk()
        return AsyncServiceBusSubscriber(uri)


BACKEND = _ServiceBusBackend()

__all__ = [
    "BACKEND",
    "AsyncServiceBusPublisher",
    "AsyncServiceBusSubscriber",
    "ServiceBusPublisher",
    "ServiceBusSubscriber",
    "is_retryable",
]
