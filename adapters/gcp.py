"""``pubsub://PROJECT/TOPIC`` (publish) and ``pubsub://PROJECT/subscriptions/SUB`` (consume): Google Cloud Pub/Sub.

A thin driver over the generated (GAPIC) clients of ``google-cloud-pubsub`` (extra ``[gcp]``):

* **publish**: one raw ``Publish`` RPC per batch the portable layer hands over (<= 1,000 messages,
  <= 10,000,000 bytes of request, split exactly by protobuf size). The portable layer already
  batches, runs lanes per ordering key and retries; putting the high-level
  ``PublisherClient.publish()`` under it would batch a second time (100 messages / 10 ms by
  default), create a future and take locks per message and run a commit thread per batch. Measured
  against the official emulator 0.8.20 (``benchmarks/bench_pubsub.py``, 10,000 events, 8
  attributes, ~730 B bodies): the raw client's own batching ~10-12k msg/s; batchbridge over
  ``publish()`` futures ~9k msg/s (~80 %); batchbridge over the raw RPC 15-19k msg/s (130-160 %,
  CloudEvents binding included). With ``ordering=true`` the driver declares ``one_key_per_batch``,
  as the service requires ("all messages in a PublishRequest must specify the same ordering_key"):
  the portable layer (``core/keyfanout.py``) splits each batch per ordering key and sends the keys'
  batches side by side (up to 8), each key's own in order; within one key's batch, after a request
  failed nothing later of that key is sent. There is
  no client-side paused key to ``resume_publish``: the portable layer's lane for a key is sequential
  and resends the failed messages before anything newer of that key, which is what pausing and
  resuming achieves in the high-level client. Unlike a paused key, once the retries are spent the
  failed events get their error results and later calls publish that key again (no manual resume).
  Ordered publishing stays faster than that client's: 14k vs 1.3k msg/s over 200 keys on the
  emulator.
* **consume**: synchronous ``Pull`` (``return_immediately=false``, a deadline no longer than the
  caller's ``timeout``), so prefetch is exactly what the caller asked for; ack = ``Acknowledge``,
  nack = ``ModifyAckDeadline`` to 0 (immediate redelivery). A deadline that runs out while the
  server holds no message is an empty result; messages a server hands out just as a deadline
  expires stay leased until the subscription's ack deadline, then come again (Pull's known race).
* **attributes**: what the binding made (``core/binding.py``: the ``ce-*`` attributes of the
  CloudEvents Pub/Sub binding and ``content-type``, ``application/cloudevents+json`` in structured
  mode, the event's ``datacontenttype`` in binary mode, within the 100 ``max_attributes``), sent as
  they are; names and values are checked against Pub/Sub's byte limits per message.
* **no hangs**: every call carries ``retry=None`` (the one retry policy, core/retry.py, decides) and an
  explicit deadline (``timeout``, default 10 s), so a missing server fails in seconds instead of the
  client's default 600 s retry budget.
* **emulator**: ``emulator_host=HOST:PORT`` or ``$PUBSUB_EMULATOR_HOST`` (read when the publisher or
  subscriber is opened): a plain-text gRPC channel and no credentials at all.
* **secrets**: ``credentials_file`` is a path and is shown in errors; its contents never are (the key
  material is registered with :func:`batchbridge.core.secrets.remember`, and load errors are reported
  by type only).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

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

if TYPE_CHECKING:
    import grpc

#: the service refuses a PublishRequest over 10,000,000 bytes (the client library's own constant)
SERVER_MAX_REQUEST_BYTES = 10 * 1000 * 1000
SERVER_MAX_MESSAGES = 1000
#: room left in a request for the topic name and protobuf framing
_MESSAGE_MARGIN = 16 * 1024
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_KEY_BYTES = 256
MAX_ATTRIBUTE_VALUE_BYTES = 1024
MAX_ORDERING_KEY_BYTES = 1024
#: ack ids per Acknowledge / ModifyAckDeadline request (the streaming client uses 2,500; ids are ~200 B)
_ACK_CHUNK = 1000
PUBSUB_SCOPE = "https://www.googleapis.com/auth/pubsub"
_INSTALL = "pip install 'batchbridge[gcp]'"
#: UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL (gRPC code names)
#: gRPC status names that are not also portable code names (ABORTED: a conflict worth trying again)
_GRPC_CODES = {"CANCELLED": ErrorCode.CANCELED, "ABORTED": ErrorCode.UNAVAILABLE, "UNAUTHENTICATED":
               ErrorCode.PERMISSION_DENIED, "OUT_OF_RANGE": ErrorCode.INVALID_ARGUMENT,
               "UNIMPLEMENTED": ErrorCode.FAILED_PRECONDITION, "DATA_LOSS": ErrorCode.INTERNAL}
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.keepalive_time_ms", 30000),
]


def _sdk() -> Any:
    """The generated Pub/Sub client package, imported only when a ``pubsub://`` URI is opened."""
    try:
        from google import pubsub_v1
    except ImportError as exc:
        raise MissingDependencyError(
            f"pubsub:// needs google-cloud-pubsub ({exc.name or exc} is missing): {_INSTALL}"
        ) from None
    return pubsub_v1


# --- error classification -------------------------------------------------------------------------


def _status_name(exc: BaseException) -> str | None:
    """The gRPC status name of an api_core or grpc exception (``"NOT_FOUND"``), else None."""
    code: Any = None
    cause = getattr(exc, "cause", None)
    if type(exc).__name__ == "RetryError" and isinstance(cause, BaseException):
        return _status_name(cause)
    if hasattr(exc, "grpc_status_code"):  # google.api_core.exceptions.GoogleAPICallError
        code = exc.grpc_status_code
    elif callable(getattr(exc, "code", None)):  # grpc.RpcError
        try:
            code = exc.code()  # type: ignore[attr-defined]
        except Exception:
            code = None
    name = getattr(code, "name", None)
    return str(name) if name else None


def error_code(exc: BaseException) -> ErrorCode:
    """The portable code of an SDK exception: gRPC's status codes are Go CDK's, nearly one for one."""
    if isinstance(exc, BatchBridgeError):
        return exc.error_code
    name = _status_name(exc)
    if name is not None:
        return _GRPC_CODES.get(name) or ErrorCode.__members__.get(name, ErrorCode.UNKNOWN)
    # google.auth failing to reach the token endpoint is transient; a refused refresh is not
    if type(exc).__name__ == "TransportError" or isinstance(exc, ConnectionError):
        return ErrorCode.UNAVAILABLE
    return ErrorCode.DEADLINE_EXCEEDED if isinstance(exc, TimeoutError) else ErrorCode.UNKNOWN


def is_retryable(exc: BaseException) -> bool:
    return is_transient(error_code(exc))


def _detail(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    if not isinstance(message, str):
        details = getattr(exc, "details", None)
        message = details() if callable(details) else str(exc)
    return str(redact(str(message).strip()))


def typed(exc: BaseException, where: str, what: str) -> BackendError:
    """A typed error for an SDK exception; NOT_FOUND -> :class:`EntityNotFoundError` (not retryable)."""
    if isinstance(exc, BackendError):
        return exc
    name = _status_name(exc)
    if name == "NOT_FOUND":
        return EntityNotFoundError(f"{what} does not exist (NOT_FOUND: {_detail(exc)})", where=where, cause=exc)
    label = name or type(exc).__name__
    return BackendError(f"{label}: {_detail(exc)}", where=where, error_code=error_code(exc), cause=exc)


# --- URIs, clients, credentials ---------------------------------------------------------------------


def _parts(uri: BackendURI) -> tuple[str, list[str]]:
    project = unquote(uri.host)
    if not project:
        raise ConfigError("pubsub:// needs a project: pubsub://PROJECT/TOPIC or "
                          "pubsub://PROJECT/subscriptions/SUB", where=uri.redacted)
    return project, [unquote(p) for p in uri.path.split("/") if p]


def topic_path(uri: BackendURI) -> str:
    project, parts = _parts(uri)
    if len(parts) == 2 and parts[0] == "topics":
        parts = parts[1:]
    if len(parts) != 1 or parts[0] == "subscriptions":
        raise ConfigError("a publisher URI names a topic: pubsub://PROJECT/TOPIC", where=uri.redacted)
    return f"projects/{project}/topics/{parts[0]}"


def subscription_path(uri: BackendURI) -> str:
    project, parts = _parts(uri)
    if len(parts) != 2 or parts[0] != "subscriptions":
        raise ConfigError("a subscriber URI names a subscription: pubsub://PROJECT/subscriptions/SUB",
                          where=uri.redacted)
    return f"projects/{project}/subscriptions/{parts[1]}"


def _topic_option(uri: BackendURI) -> str | None:
    topic = uri.options.get("topic")
    if not topic:
        return None
    topic = str(topic)
    if topic.startswith("projects/"):
        return topic
    return f"projects/{_parts(uri)[0]}/topics/{topic}"


def emulator_host(uri: BackendURI) -> str | None:
    host = uri.options.get("emulator_host") or os.environ.get("PUBSUB_EMULATOR_HOST")
    return str(host) if host else None


def _credentials(path: str, where: str) -> Any:
    """Load a credentials file; its key material is remembered as secret and never put in an error."""
    try:
        import google.auth
    except ImportError:
        raise MissingDependencyError(f"pubsub:// needs google-auth: {_INSTALL}") from None
    try:
        with open(os.path.expanduser(path), "rb") as f:
            info = json.load(f)
    except OSError as exc:
        raise ConfigError(f"credentials_file {path!r} cannot be read: {exc.strerror}", where=where) from None
    except ValueError:
        raise ConfigError(f"credentials_file {path!r} is not a JSON credentials file", where=where) from None
    if not isinstance(info, dict):
        raise ConfigError(f"credentials_file {path!r} is not a JSON credentials object", where=where)
    for key in ("private_key", "private_key_id", "client_secret", "refresh_token"):
        value = info.get(key)
        if isinstance(value, str):
            # the whole value and each line of a PEM body, so even a fragment in an SDK message is scrubbed
            remember(value, *(line.strip() for line in value.splitlines() if "-----" not in line))
    auth: Any = google.auth
    try:
        if hasattr(auth, "load_credentials_from_dict"):
            creds, _ = auth.load_credentials_from_dict(info, scopes=[PUBSUB_SCOPE])
        else:  # google-auth < 2.22
            creds, _ = auth.load_credentials_from_file(os.path.expanduser(path), scopes=[PUBSUB_SCOPE])
    except Exception as exc:  # its text may quote the file
        raise ConfigError(
            f"credentials_file {path!r} holds no usable Google credentials ({type(exc).__name__})", where=where
        ) from None
    return creds


def _client(kind: str, uri: BackendURI) -> Any:
    """A generated PublisherClient / SubscriberClient: plain gRPC to an emulator, else TLS + credentials."""
    pubsub_v1 = _sdk()
    transports: Any
    if kind == "publisher":
        from google.pubsub_v1.services.publisher import transports
        cls, Transport = pubsub_v1.PublisherClient, transports.PublisherGrpcTransport
    else:
        from google.pubsub_v1.services.subscriber import transports
        cls, Transport = pubsub_v1.SubscriberClient, transports.SubscriberGrpcTransport
    host = emulator_host(uri)
    if host:
        import grpc

        channel: grpc.Channel = grpc.insecure_channel(host, options=_CHANNEL_OPTIONS)
        return cls(transport=Transport(channel=channel))
    kwargs: dict[str, Any] = {}
    if uri.options.get("endpoint"):
        kwargs["client_options"] = {"api_endpoint": str(uri.options["endpoint"])}
    if uri.options.get("credentials_file"):
        kwargs["credentials"] = _credentials(str(uri.options["credentials_file"]), uri.redacted)
    try:
        return cls(**kwargs)
    except Exception as exc:
        if type(exc).__name__ == "DefaultCredentialsError":
            raise ConfigError(
                "no Google credentials found: pass credentials_file=PATH, set GOOGLE_APPLICATION_CREDENTIALS, "
                "or emulator_host=HOST:PORT for the emulator", where=uri.redacted
            ) from None
        raise ConfigError(f"cannot create the Pub/Sub {kind} client ({type(exc).__name__})",
                          where=uri.redacted) from None


def _close_client(client: Any) -> None:
    # closing a channel that failed to connect must not mask the caller's error
    with contextlib.suppress(Exception):
        client.transport.close()


# --- publisher ----------------------------------------------------------------------------------------


class PubSubPublisher:
    """Publishes each batch with raw ``Publish`` RPCs (see the module docstring for why)."""

    attribute_prefix = "ce-"
    max_attributes = MAX_ATTRIBUTES
    #: a PubsubMessage has no content-type field: the binding sends it as an attribute
    content_type_attribute = True

    def __init__(self, uri: BackendURI) -> None:
        self._where = uri.redacted
        self._topic = topic_path(uri)
        self._timeout = float(uri.options["timeout"])
        self._ordering = bool(uri.options["ordering"])
        #: the service takes one ordering key per request; the portable layer fans out over keys
        self.one_key_per_batch = self._ordering
        cap = int(uri.options["batch_bytes"] or SERVER_MAX_REQUEST_BYTES)
        self._request_bytes = max(1, min(cap, SERVER_MAX_REQUEST_BYTES))
        self.max_batch_count = SERVER_MAX_MESSAGES
        self.max_batch_bytes = max(1, self._request_bytes - _MESSAGE_MARGIN)
        self.max_message_bytes = self.max_batch_bytes
        pubsub_v1 = _sdk()
        self._pb_message = pubsub_v1.PubsubMessage.pb()
        self._pb_request = pubsub_v1.PublishRequest.pb()
        self._wrap_request = pubsub_v1.PublishRequest.wrap
        self._client = _client("publisher", uri)
        self._closed = False
        try:
            if uri.options["create"]:
                ensure_topic(self._client, self._topic, self._timeout, self._where)
        except BaseException:
            _close_client(self._client)
            raise

    def __repr__(self) -> str:
        return f"PubSubPublisher({self._where!r})"

    def probe(self) -> None:
        """``batchbridge check``: the topic exists and this client may see it (opening does not ask)."""
        try:
            self._client.get_topic(topic=self._topic, retry=None, timeout=self._timeout)
        except Exception as exc:
            raise typed(exc, self._where, f"topic {self._topic}") from None

    def _check_message(self, m: Message) -> BackendError | None:
        """Pub/Sub refuses a whole request over one bad attribute; refuse just that message instead."""
        where = f"{self._where} event {m.dedup_id}"
        if len(m.attributes) > MAX_ATTRIBUTES:
            return MessageTooLargeError(f"{len(m.attributes)} attributes; Pub/Sub allows {MAX_ATTRIBUTES}",
                                        where=where)
        for k, v in m.attributes.items():
            if k.startswith("goog"):
                return BackendError(f"attribute {k!r}: names starting with 'goog' are reserved by Pub/Sub",
                                    where=where)
            if len(k) > MAX_ATTRIBUTE_KEY_BYTES // 4 and len(k.encode()) > MAX_ATTRIBUTE_KEY_BYTES:
                return MessageTooLargeError(
                    f"attribute name {k[:40]!r}... is {len(k.encode())} bytes; Pub/Sub allows "
                    f"{MAX_ATTRIBUTE_KEY_BYTES}", where=where)
            if len(v) > MAX_ATTRIBUTE_VALUE_BYTES // 4 and len(v.encode()) > MAX_ATTRIBUTE_VALUE_BYTES:
                return MessageTooLargeError(
                    f"attribute {k!r} is {len(v.encode())} bytes; Pub/Sub allows {MAX_ATTRIBUTE_VALUE_BYTES} "
                    "per value (use structured mode, which keeps the full event in the body)", where=where)
        key = m.ordering_key
        if self._ordering and key and len(key.encode()) > MAX_ORDERING_KEY_BYTES:
            return MessageTooLargeError(f"ordering key is {len(key.encode())} bytes; Pub/Sub allows "
                                        f"{MAX_ORDERING_KEY_BYTES}", where=where)
        return None

    def send_batch(self, messages: Sequence[Message]) -> list[BaseException | None]:
        """Publish ``messages`` in order, in as few requests as the limits allow. With ordering, one
        ordering key per call (``one_key_per_batch``: the portable layer splits per key); a mixed batch
        handed over directly goes one key after the other."""
        if self._closed:
            raise ClosedError("pubsub publisher is closed", where=self._where)
        results: list[BaseException | None] = [None] * len(messages)
        groups: dict[str | None, list[int]] = {}
        pbs: list[Any] = [None] * len(messages)
        refused = sent = 0
        for i, m in enumerate(messages):
            bad = self._check_message(m)
            if bad is not None:
                results[i] = bad
                refused += 1
                continue
            key = m.ordering_key if self._ordering else None
            pbs[i] = self._pb_message(data=m.body, attributes=m.attributes, ordering_key=key or "")
            groups.setdefault(key, []).append(i)
        for indices in groups.values():
            for chunk in self._chunks(indices, pbs):
                try:
                    self._publish([pbs[i] for i in chunk])
                    sent += len(chunk)
                except Exception as exc:
                    err = typed(exc, self._where, f"topic {self._topic}")
                    if sent == 0 and refused == 0 and len(groups) == 1:
                        raise err from None  # the whole batch failed with one error: retried as a whole
                    for i in indices[indices.index(chunk[0]):]:  # nothing later of this key overtakes
                        results[i] = err
                    break
        return results

    def _chunks(self, indices: list[int], pbs: list[Any]) -> list[list[int]]:
        """Split by the service's exact limits (protobuf size, 1,000 messages)."""
        budget = self._request_bytes - len(self._topic) - 16
        chunks: list[list[int]] = []
        current: list[int] = []
        size = 0
        for i in indices:
            n = pbs[i].ByteSize() + 6  # field tag and length prefix of the repeated message
            if current and (len(current) >= SERVER_MAX_MESSAGES or size + n > budget):
                chunks.append(current)
                current, size = [], 0
            current.append(i)
            size += n
        if current:
            chunks.append(current)
        return chunks

    def _publish(self, pbs: list[Any]) -> None:
        request = self._wrap_request(self._pb_request(topic=self._topic, messages=pbs))
        self._client.publish(request=request, retry=None, timeout=self._timeout)

    def error_code(self, exc: BaseException) -> ErrorCode:
        return error_code(exc)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _close_client(self._client)


def ensure_topic(client: Any, topic: str, timeout: float, where: str) -> None:
    """Create ``topic`` unless it exists (``create=true`` only)."""
    try:
        client.get_topic(topic=topic, retry=None, timeout=timeout)
        return
    except Exception as exc:
        if _status_name(exc) != "NOT_FOUND":
            raise typed(exc, where, f"topic {topic}") from None
    try:
        client.create_topic(name=topic, retry=None, timeout=timeout)
    except Exception as exc:
        if _status_name(exc) != "ALREADY_EXISTS":
            raise typed(exc, where, f"topic {topic}") from None


# --- subscriber ---------------------------------------------------------------------------------------


class PubSubSubscriber:
    max_receive_count = 1000

    def __init__(self, uri: BackendURI) -> None:
        self._where = uri.redacted
        self._subscription = subscription_path(uri)
        self._timeout = float(uri.options["timeout"])
        self._client = _client("subscriber", uri)
        self._closed = False
        try:
            if uri.options["create"]:
                self._create(uri)
        except BaseException:
            _close_client(self._client)
            raise

    def __repr__(self) -> str:
        return f"PubSubSubscriber({self._where!r})"

    def probe(self) -> None:
        """``batchbridge check``: the subscription exists and this client may see it."""
        try:
            self._client.get_subscription(subscription=self._subscription, retry=None, timeout=self._timeout)
        except Exception as exc:
            raise typed(exc, self._where, f"subscription {self._subscription}") from None

    def _create(self, uri: BackendURI) -> None:
        try:
            self._client.get_subscription(subscription=self._subscription, retry=None, timeout=self._timeout)
            return
        except Exception as exc:
            if _status_name(exc) != "NOT_FOUND":
                raise typed(exc, self._where, f"subscription {self._subscription}") from None
        topic = _topic_option(uri)
        if topic is None:
            raise ConfigError("create=true on a subscription needs topic=TOPIC (the topic to subscribe to)",
                              where=self._where)
        publisher = _client("publisher", uri)
        try:
            ensure_topic(publisher, topic, self._timeout, self._where)
        finally:
            _close_client(publisher)
        request: dict[str, Any] = {
            "name": self._subscription,
            "topic": topic,
            "ack_deadline_seconds": int(uri.options["ack_deadline"]),
            "enable_message_ordering": bool(uri.options["ordering"]),
        }
        if uri.options.get("filter"):
            request["filter"] = str(uri.options["filter"])
        try:
            self._client.create_subscription(request=request, retry=None, timeout=self._timeout)
        except Exception as exc:
            if _status_name(exc) != "ALREADY_EXISTS":
                raise typed(exc, self._where, f"topic {topic}") from None

    def _check(self) -> None:
        if self._closed:
            raise ClosedError("pubsub subscriber is closed", where=self._where)

    def receive_batch(self, max_messages: int, timeout: float) -> list[ReceivedMessage]:
        """Long-poll ``Pull`` until a message arrives or ``timeout`` passes (the server may answer
        empty early; then pull again). A deadline that expires while the server holds no message is
        an empty result, not an error."""
        self._check()
        end = time.monotonic() + max(0.0, timeout)
        request = {"subscription": self._subscription, "max_messages": max(1, min(max_messages, 1000))}
        while True:
            started = time.monotonic()
            remaining = end - started
            try:
                response = self._client.pull(request=request, retry=None, timeout=max(remaining, 0.05))
            except Exception as exc:
                if _status_name(exc) == "DEADLINE_EXCEEDED":
                    return []
                raise typed(exc, self._where, f"subscription {self._subscription}") from None
            received = type(response).pb(response).received_messages
            if received:
                return [self._received(r) for r in received]
            now = time.monotonic()
            if now >= end - 0.01:
                return []
            if now - started < 0.05:  # a server that answers empty at once: do not spin
                time.sleep(min(0.05, end - now))

    @staticmethod
    def _received(r: Any) -> ReceivedMessage:
        m = r.message
        attributes = dict(m.attributes)
        return ReceivedMessage(
            body=m.data,
            attributes=attributes,
            ack_id=r.ack_id,
            delivery_count=r.delivery_attempt or None,  # set only on subscriptions with a dead-letter policy
            ordering_key=m.ordering_key or None,
            message_id=m.message_id or None,
        )

    def _settle(self, method: str, messages: Sequence[ReceivedMessage], **extra: Any) -> None:
        self._check()
        ack_ids = [m.ack_id for m in messages]
        for start in range(0, len(ack_ids), _ACK_CHUNK):
            request = {"subscription": self._subscription, "ack_ids": ack_ids[start:start + _ACK_CHUNK], **extra}
            try:
                getattr(self._client, method)(request=request, retry=None, timeout=self._timeout)
            except Exception as exc:
                raise typed(exc, self._where, f"subscription {self._subscription}") from None

    def ack(self, messages: Sequence[ReceivedMessage]) -> None:
        self._settle("acknowledge", messages)

    def nack(self, messages: Sequence[ReceivedMessage]) -> None:
        self._settle("modify_ack_deadline", messages, ack_deadline_seconds=0)

    def defer(self, messages: Sequence[ReceivedMessage], delay: float) -> None:
        # Pub/Sub takes whole seconds, at most 600
        self._settle("modify_ack_deadline", messages, ack_deadline_seconds=max(1, min(600, math.ceil(delay))))

    def error_code(self, exc: BaseException) -> ErrorCode:
        return error_code(exc)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _close_client(self._client)


# --- backend declaration ------------------------------------------------------------------------------


class _PubSubBackend:
    schemes = ("pubsub",)
    extra = "gcp"
    #: publishers name a topic, subscribers a subscription
    forms = ("pubsub://PROJECT/TOPIC", "pubsub://PROJECT/topics/TOPIC", "pubsub://PROJECT/subscriptions/SUBSCRIPTION")
    options = (
        Option("emulator_host", str, None,
               "HOST:PORT of the Pub/Sub emulator: plain gRPC, no credentials (default $PUBSUB_EMULATOR_HOST)"),
        Option("endpoint", str, None, "API endpoint, e.g. a regional one: europe-west1-pubsub.googleapis.com:443"),
        Option("credentials_file", str, None,
               "service-account or ADC JSON file (default: Application Default Credentials); "
               "the path may be shown, its contents never"),
        Option("timeout", float, 10.0, "deadline of each API call, seconds (a missing server fails in seconds)"),
        Option("batch_bytes", int, SERVER_MAX_REQUEST_BYTES,
               "cap on bytes per Publish request (Pub/Sub's limits: 10 MB and 1,000 messages; "
               "batch_size caps the count)"),
        Option("ordering", bool, False,
               "publish with ordering_key = the job or environment id; create=true subscriptions get "
               "enable_message_ordering"),
        Option("create", bool, False,
               "create the topic (publisher) or the subscription and its topic (subscriber) if missing"),
        Option("topic", str, None, "subscriber with create=true: the topic the subscription is created on "
               "(publishers name their topic in the URI, subscribers their subscription)"),
        Option("ack_deadline", int, 60, "subscriber with create=true: the subscription's ack deadline, 10-600 s"),
        Option("filter", str, None,
               "subscriber with create=true: subscription filter, URL-encoded, "
               'e.g. attributes."ce-type" = "batch.job.failed"'),
    )

    def check_publisher(self, uri: BackendURI) -> None:
        topic_path(uri)

    def check_subscriber(self, uri: BackendURI) -> None:
        subscription_path(uri)

    def open_publisher(self, uri: BackendURI) -> PubSubPublisher:
        return PubSubPublisher(uri)

    def open_subscriber(self, uri: BackendURI) -> PubSubSubscriber:
        return PubSubSubscriber(uri)


BACKEND = _PubSubBackend()
