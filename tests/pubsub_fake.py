"""A small in-process Pub/Sub server speaking the real gRPC protocol, for machines without the emulator.

It serves the unmodified ``google-cloud-pubsub`` clients (generated and high-level): topics and
subscriptions (create/get/delete), ``Publish``, ``Pull`` (long-poll), ``StreamingPull``,
``Acknowledge``, ``ModifyAckDeadline``, ack deadlines and redelivery, ordering keys
(``enable_message_ordering``: a key's next message is held back while an earlier one is
outstanding), attribute passing, the simple subscription filters (``attributes.k = "v"``, ``!=``,
``attributes:k``, ``hasPrefix``, joined by one of AND / OR) and the service's request limits and
NOT_FOUND / ALREADY_EXISTS / INVALID_ARGUMENT answers (including the rule the emulator does not
enforce: all messages of one ``PublishRequest`` carry the same ordering key). The protobuf classes come from the client
itself (``.pb()``), plugged into ``grpc.method_handlers_generic_handler``.

Not a replacement for the official emulator (``tests/pubsub_servers.py`` prefers that), only what
the adapter and its tests need.

Fault injection (``fake.faults``, a :class:`FaultSwitch`): answer chosen RPCs with a gRPC status
(UNAVAILABLE, RESOURCE_EXHAUSTED, ...) for a number of calls or a stretch of time; and
``serve(fake=...)`` binds an existing servicer (its topics, subscriptions and messages) to a new
server, so a test can stop the server and start it again on the same port.
"""

from __future__ import annotations

import bisect
import itertools
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import empty_pb2
from google.pubsub_v1 import types

MAX_REQUEST_BYTES = 10 * 1000 * 1000
MAX_MESSAGES = 1000
_NAME = re.compile(r"^projects/[^/]+/(topics|subscriptions)/([A-Za-z][\w.~+%-]{2,254})$")

_pb = {name: getattr(types, name).pb() for name in (
    "Topic", "GetTopicRequest", "DeleteTopicRequest", "PublishRequest", "PublishResponse", "Subscription",
    "GetSubscriptionRequest", "DeleteSubscriptionRequest", "PullRequest", "PullResponse", "AcknowledgeRequest",
    "ModifyAckDeadlineRequest", "StreamingPullRequest", "StreamingPullResponse", "PubsubMessage",
    "ReceivedMessage",
)}


# --- filters --------------------------------------------------------------------------------------

_ATTR = r'attributes(?:\.(?P<{0}>[A-Za-z_][\w-]*)|\."(?P<{0}q>[^"]+)")'
_ATOMS = [
    ("eq", re.compile(rf'^{_ATTR.format("k")}\s*(?P<op>=|!=)\s*"(?P<v>[^"]*)"$')),
    ("has", re.compile(r'^(?P<neg>NOT\s+|-)?attributes:(?:(?P<k>[A-Za-z_][\w-]*)|"(?P<kq>[^"]+)")$')),
    ("prefix", re.compile(rf'^hasPrefix\(\s*{_ATTR.format("k")}\s*,\s*"(?P<v>[^"]*)"\s*\)$')),
]

Predicate = Callable[[Mapping[str, str]], bool]


def compile_filter(expression: str) -> Predicate:
    """The subset of the Pub/Sub filter language above; ValueError for anything else."""
    expression = expression.strip()
    if not expression:
        return lambda attrs: True
    joiners = set(re.findall(r"\s(AND|OR)\s", expression))
    if len(joiners) > 1 or "(" in expression.replace("hasPrefix(", ""):
        raise ValueError("this fake supports one kind of joiner (AND or OR) and no parentheses")
    parts = re.split(r"\s(?:AND|OR)\s", expression)
    atoms = [_atom(p.strip()) for p in parts]
    if joiners == {"OR"}:
        return lambda attrs: any(a(attrs) for a in atoms)
    return lambda attrs: all(a(attrs) for a in atoms)


def _atom(text: str) -> Predicate:
    for kind, pattern in _ATOMS:
        m = pattern.match(text)
        if not m:
            continue
        key = m.group("k") or m.group("kq")
        if kind == "eq":
            value, negate = m.group("v"), m.group("op") == "!="
            return lambda a: (a.get(key) == value) != negate
        if kind == "has":
            negate = bool(m.group("neg"))
            return lambda a: (key in a) != negate
        prefix = m.group("v")
        return lambda a: key in a and a[key].startswith(prefix)
    raise ValueError(f"unsupported filter expression: {text!r}")


# --- state ------------------------------------------------------------------------------------------


@dataclass(order=True)
class _Entry:
    seq: int
    message: Any = field(compare=False)  # a PubsubMessage protobuf
    deliveries: int = field(default=0, compare=False)


@dataclass
class _Subscription:
    name: str
    topic: str
    ack_deadline: int
    ordering: bool
    accepts: Predicate
    proto: Any
    ready: list[_Entry] = field(default_factory=list)
    outstanding: dict[str, tuple[_Entry, float]] = field(default_factory=dict)

    def expire(self, now: float) -> None:
        for ack_id, (entry, deadline) in list(self.outstanding.items()):
            if deadline <= now:
                del self.outstanding[ack_id]
                bisect.insort(self.ready, entry)

    def take(self, n: int, now: float, deadline: float) -> list[Any]:
        self.expire(now)
        blocked = {e.message.ordering_key for e, _ in self.outstanding.values()} if self.ordering else set()
        out: list[Any] = []
        keep: list[_Entry] = []
        for entry in self.ready:
            key = entry.message.ordering_key
            if len(out) >= n or (self.ordering and key and key in blocked):
                keep.append(entry)
                continue
            entry.deliveries += 1
            ack_id = f"{entry.seq}-{entry.deliveries}-{uuid.uuid4().hex[:12]}"
            self.outstanding[ack_id] = (entry, now + deadline)
            out.append(_pb["ReceivedMessage"](ack_id=ack_id, message=entry.message))
        # keys with a message delivered in this batch stay in order: later ones wait for this batch
        self.ready = keep
        return out

    def settle(self, ack_ids: Any, seconds: int | None, now: float) -> None:
        for ack_id in ack_ids:
            item = self.outstanding.get(ack_id)
            if item is None:
                continue
            if seconds is None:
                del self.outstanding[ack_id]
            elif seconds <= 0:
                del self.outstanding[ack_id]
                bisect.insort(self.ready, item[0])
            else:
                self.outstanding[ack_id] = (item[0], now + seconds)


class FaultSwitch:
    """Makes the fake answer RPCs with an error status: ``fail(code, calls=N)`` for the next N matching
    calls, or ``fail(code, seconds=S)`` for a stretch of time; ``methods`` limits it to some RPCs
    (names as on the wire: ``Publish``, ``Pull``, ``Acknowledge``...). ``hits`` counts refused calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._code: grpc.StatusCode | None = None
        self._calls: int | None = None
        self._until: float | None = None
        self._methods: frozenset[str] | None = None
        self.hits = 0

    def fail(self, code: grpc.StatusCode, *, calls: int | None = None, seconds: float | None = None,
             methods: tuple[str, ...] | None = None) -> None:
        with self._lock:
            self._code = code
            self._calls = calls
            self._until = None if seconds is None else time.monotonic() + seconds
            self._methods = frozenset(methods) if methods else None

    def clear(self) -> None:
        with self._lock:
            self._code = None

    @property
    def active(self) -> bool:
        with self._lock:
            return self._code is not None and (self._until is None or time.monotonic() < self._until)

    def check(self, method: str) -> grpc.StatusCode | None:
        """The status to answer ``method`` with now, if any (and count it)."""
        with self._lock:
            code = self._code
            if code is None or (self._methods is not None and method not in self._methods):
                return None
            if self._until is not None and time.monotonic() >= self._until:
                self._code = None
                return None
            if self._calls is not None:
                if self._calls <= 0:
                    self._code = None
                    return None
                self._calls -= 1
            self.hits += 1
            return code


class FakePubSub:
    """The servicer: every RPC the adapter, its tests and the high-level clients use."""

    def __init__(self) -> None:
        self.faults = FaultSwitch()
        self._cond = threading.Condition()
        self._topics: dict[str, Any] = {}
        self._subs: dict[str, _Subscription] = {}
        self._seq = itertools.count(1)
        self._stopping = False

    # helpers
    @staticmethod
    def _check_name(name: str, kind: str, context: grpc.ServicerContext) -> None:
        m = _NAME.match(name)
        if not m or m.group(1) != kind or m.group(2).startswith("goog"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid [{kind}] name: (name={name})")

    def _sub(self, name: str, context: grpc.ServicerContext) -> _Subscription:
        sub = self._subs.get(name)
        if sub is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "Subscription does not exist")
        return sub  # type: ignore[return-value]

    # Publisher
    def create_topic(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._check_name(request.name, "topics", context)
        with self._cond:
            if request.name in self._topics:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "Topic already exists")
            self._topics[request.name] = _pb["Topic"](name=request.name, labels=request.labels)
            return self._topics[request.name]

    def get_topic(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._cond:
            topic = self._topics.get(request.topic)
        if topic is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "Topic not found")
        return topic

    def delete_topic(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._cond:
            if self._topics.pop(request.topic, None) is None:
                context.abort(grpc.StatusCode.NOT_FOUND, "Topic not found")
            for sub in self._subs.values():
                if sub.topic == request.topic:
                    sub.topic = "_deleted-topic_"
        return empty_pb2.Empty()

    def publish(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._check_name(request.topic, "topics", context)
        if len(request.messages) > MAX_MESSAGES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Too many messages to publish")
        if request.ByteSize() > MAX_REQUEST_BYTES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"Request payload size exceeds the limit: {MAX_REQUEST_BYTES} bytes.")
        if len({m.ordering_key for m in request.messages}) > 1:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "All messages in a PublishRequest must specify the same ordering_key")
        for m in request.messages:
            if not m.data and not m.attributes:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Some messages are empty")
            if len(m.attributes) > 100 or any(len(k.encode()) > 256 or len(v.encode()) > 1024
                                               for k, v in m.attributes.items()):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Invalid attributes")
        with self._cond:
            if request.topic not in self._topics:
                context.abort(grpc.StatusCode.NOT_FOUND, "Topic not found")
            subs = [s for s in self._subs.values() if s.topic == request.topic]
            ids = []
            for m in request.messages:
                seq = next(self._seq)
                stored = _pb["PubsubMessage"]()
                stored.CopyFrom(m)
                stored.message_id = str(seq)
                stored.publish_time.GetCurrentTime()
                ids.append(stored.message_id)
                for sub in subs:
                    if sub.accepts(stored.attributes):
                        sub.ready.append(_Entry(seq, stored))
            self._cond.notify_all()
        return _pb["PublishResponse"](message_ids=ids)

    # Subscriber
    def create_subscription(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._check_name(request.name, "subscriptions", context)
        try:
            accepts = compile_filter(request.filter)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid filter: {exc}")
        with self._cond:
            if request.name in self._subs:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "Subscription already exists")
            if request.topic not in self._topics:
                context.abort(grpc.StatusCode.NOT_FOUND, "Topic not found")
            proto = _pb["Subscription"]()
            proto.CopyFrom(request)
            proto.ack_deadline_seconds = request.ack_deadline_seconds or 10
            self._subs[request.name] = _Subscription(request.name, request.topic, proto.ack_deadline_seconds,
                                                     request.enable_message_ordering, accepts, proto)
            return proto

    def get_subscription(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._cond:
            return self._sub(request.subscription, context).proto

    def delete_subscription(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._cond:
            self._sub(request.subscription, context)
            del self._subs[request.subscription]
        return empty_pb2.Empty()

    def pull(self, request: Any, context: grpc.ServicerContext) -> Any:
        # like the service: hold the call until a message arrives, answering empty before the deadline
        remaining = context.time_remaining()
        wait = 2.0 if remaining is None else max(0.0, min(2.0, remaining - 0.05))
        end = time.monotonic() + wait
        with self._cond:
            while True:
                sub = self._sub(request.subscription, context)
                now = time.monotonic()
                got = sub.take(max(1, request.max_messages), now, sub.ack_deadline)
                if got or request.return_immediately or now >= end or self._stopping:
                    return _pb["PullResponse"](received_messages=got)
                self._cond.wait(min(end - now, 0.1))

    def acknowledge(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._cond:
            self._sub(request.subscription, context).settle(request.ack_ids, None, time.monotonic())
            self._cond.notify_all()
        return empty_pb2.Empty()

    def modify_ack_deadline(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._cond:
            sub = self._sub(request.subscription, context)
            sub.settle(request.ack_ids, request.ack_deadline_seconds, time.monotonic())
            self._cond.notify_all()
        return empty_pb2.Empty()

    def streaming_pull(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        first = next(requests)
        with self._cond:
            sub = self._sub(first.subscription, context)
        deadline = first.stream_ack_deadline_seconds or sub.ack_deadline
        limit = first.max_outstanding_messages or 1000
        self._stream_settle(sub, first)

        def consume() -> None:
            try:
                for req in requests:
                    self._stream_settle(sub, req)
            except grpc.RpcError:
                pass  # the client closed the stream

        threading.Thread(target=consume, name="fake-pubsub-stream", daemon=True).start()
        while context.is_active() and not self._stopping:
            with self._cond:
                now = time.monotonic()
                room = limit - len(sub.outstanding)
                got = sub.take(min(room, 100), now, deadline) if room > 0 else []
                if not got:
                    self._cond.wait(0.1)
                    continue
            yield _pb["StreamingPullResponse"](received_messages=got)

    def _stream_settle(self, sub: _Subscription, req: Any) -> None:
        with self._cond:
            now = time.monotonic()
            sub.settle(req.ack_ids, None, now)
            for ack_id, seconds in zip(req.modify_deadline_ack_ids, req.modify_deadline_seconds, strict=False):
                sub.settle([ack_id], seconds, now)
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    # wiring
    def _faulty(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            code = self.faults.check(name)
            if code is not None:
                context.abort(code, f"injected fault: {code.name}")
            return fn(request, context)

        return call

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        def unary(fn: Callable[..., Any], req: str, resp: Any) -> grpc.RpcMethodHandler:
            name = "".join(part.capitalize() for part in fn.__name__.split("_"))
            return grpc.unary_unary_rpc_method_handler(
                self._faulty(name, fn), request_deserializer=_pb[req].FromString,
                response_serializer=resp.SerializeToString)

        empty = empty_pb2.Empty
        publisher = {
            "CreateTopic": unary(self.create_topic, "Topic", _pb["Topic"]),
            "GetTopic": unary(self.get_topic, "GetTopicRequest", _pb["Topic"]),
            "DeleteTopic": unary(self.delete_topic, "DeleteTopicRequest", empty),
            "Publish": unary(self.publish, "PublishRequest", _pb["PublishResponse"]),
        }
        subscriber = {
            "CreateSubscription": unary(self.create_subscription, "Subscription", _pb["Subscription"]),
            "GetSubscription": unary(self.get_subscription, "GetSubscriptionRequest", _pb["Subscription"]),
            "DeleteSubscription": unary(self.delete_subscription, "DeleteSubscriptionRequest", empty),
            "Pull": unary(self.pull, "PullRequest", _pb["PullResponse"]),
            "Acknowledge": unary(self.acknowledge, "AcknowledgeRequest", empty),
            "ModifyAckDeadline": unary(self.modify_ack_deadline, "ModifyAckDeadlineRequest", empty),
            "StreamingPull": grpc.stream_stream_rpc_method_handler(
                self._faulty("StreamingPull", self.streaming_pull),
                request_deserializer=_pb["StreamingPullRequest"].FromString,
                response_serializer=_pb["StreamingPullResponse"].SerializeToString),
        }
        return [grpc.method_handlers_generic_handler("google.pubsub.v1.Publisher", publisher),
                grpc.method_handlers_generic_handler("google.pubsub.v1.Subscriber", subscriber)]


def serve(host: str = "127.0.0.1", port: int = 0, *, fake: FakePubSub | None = None
          ) -> tuple[grpc.Server, FakePubSub, str]:
    """Start the fake on ``host:port`` (0 = a free port); returns the server, the servicer and HOST:PORT.
    Stop with ``fake.stop(); server.stop(None)``. Pass ``fake`` to serve an existing servicer's state
    again (a restart: stop only the server, ``server.stop(None)``, then call this on the same port)."""
    fake = fake or FakePubSub()
    server = grpc.server(
        ThreadPoolExecutor(max_workers=32, thread_name_prefix="fake-pubsub"),
        handlers=fake.handlers(),
        options=[("grpc.max_receive_message_length", 32 * 1024 * 1024), ("grpc.max_send_message_length", -1)],
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server, fake, f"{host}:{bound}"
