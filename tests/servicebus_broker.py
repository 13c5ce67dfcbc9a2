"""A stand-in Azure Service Bus broker on python-qpid-proton, for tests and benchmarks.

Test infrastructure, not product. It speaks just enough AMQP 1.0, the way Service Bus does, for the
unmodified ``azure-servicebus`` 7.15 SDK (sync and ``aio``, pure-Python transport) to work against it:

* SASL ANONYMOUS, then ``$cbs`` ``put-token`` (any token is accepted);
* queues, topics with subscriptions (``topic/Subscriptions/sub``, every subscription gets a copy;
  SQL/correlation filters are *not* evaluated), the ``$deadletterqueue`` sub-queue of each;
* single transfers and batch transfers (message-format ``0x80013700``: the body is one data section
  per encoded message; proton's Python API hides the format, so batches are recognised by content);
* peek-lock: the 16-byte delivery tag is the lock token; complete / abandon / dead-letter arrive as
  dispositions and are echoed settled with the same outcome, as the SDK waits for that; abandon
  redelivers and increments ``delivery_count``; ``max_delivery_count`` dead-letters; locks expire;
* sessions: ``com.microsoft:session-filter`` (an id, or null for the next available session, held
  until one is free or ``com.microsoft:timeout`` passes) and ``com.microsoft:locked-until-utc``;
* duplicate detection by ``message_id`` on entities created with it;
* ``amqp:not-found`` on attach to a missing entity; ``amqp:link:message-size-exceeded`` above
  256 KiB (the standard tier), which the SDK also reads as its batch limit;
* ``$management``: ``update-disposition`` and ``renew-lock`` only (the SDK's settlement fallback);
* fault hooks: :meth:`ServiceBusBroker.drop_connections` and :meth:`ServiceBusBroker.server_busy`.

Differences from the real service worth knowing: no filters, no TTL/scheduling/deferral, messages
locked by a receiver that detaches are released at once, everything is in memory.

Run it alone (the benchmark does): ``python tests/servicebus_broker.py --port 0 --queue q`` prints
``READY <connection string>`` and serves until stdin closes or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import heapq
import itertools
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from proton import Condition, Data, Delivery, Endpoint, Handler, Link, Message, Terminus, symbol, timestamp
from proton.reactor import Container

MAX_MESSAGE_BYTES = 256 * 1024
SESSION_FILTER = symbol("com.microsoft:session-filter")
LOCKED_UNTIL_UTC = symbol("com.microsoft:locked-until-utc")
OPERATION_TIMEOUT = symbol("com.microsoft:timeout")
_TICKS_EPOCH = 621355968000000000  # .NET ticks at 1970-01-01
_TICK = 0.02
_SECTION_CODES = range(0x70, 0x79)


def _ms(t: float) -> timestamp:
    return timestamp(int(t * 1000))


def _header(delivery_count: int) -> bytes:
    """An AMQP header section with every field written (proton drops the defaults, and the SDK
    then reports ``delivery_count`` as None): durable=false, priority=4, ttl=null, first-acquirer."""
    first = b"\x41" if delivery_count == 0 else b"\x42"
    body = b"\x05\x42\x50\x04\x40" + first + b"\x70" + delivery_count.to_bytes(4, "big")
    return b"\x00\x53\x70\xc0" + bytes([len(body)]) + body


def _strip_header(raw: bytes) -> bytes:
    if raw[:3] != b"\x00\x53\x70":
        return raw
    code = raw[3]
    if code == 0x45:
        return raw[4:]
    if code == 0xC0:
        return raw[5 + raw[4]:]
    return raw[8 + int.from_bytes(raw[4:8], "big"):]


def _sections(raw: bytes) -> Iterator[Any]:
    """Decode the top-level described values (the sections) of an encoded message."""
    view = memoryview(raw)
    offset = 0
    while offset < len(raw):
        data = Data()
        offset += data.decode(bytes(view[offset:]))
        data.rewind()
        data.next()
        yield data.get_object()


def split_transfer(raw: bytes) -> list[bytes]:
    """The encoded messages a transfer carries: several for a batch, else the transfer itself."""
    inner = []
    for section in _sections(raw):
        code = int(section.descriptor)
        if code == 0x75 and bytes(section.value[:2]) == b"\x00\x53" and section.value[2] in _SECTION_CODES:
            inner.append(bytes(section.value))
        elif code in (0x75, 0x76, 0x77):  # a body section that is not an encoded message
            return [raw]
    return inner or [raw]


@dataclass(order=True)
class _Stored:
    seq: int
    message: Message = field(compare=False)
    enqueued: float = field(compare=False)
    deliveries: int = field(default=0, compare=False)

    @property
    def session_id(self) -> str | None:
        return self.message.group_id or None


@dataclass
class _Lock:
    entity: Entity
    stored: _Stored
    link: Link
    expires: float


class Entity:
    """A queue, a topic subscription, or the dead-letter sub-queue of either."""

    def __init__(self, path: str, *, requires_session: bool = False, duplicate_detection: bool = False,
                 lock_duration: float = 30.0, max_delivery_count: int = 10, dead_letter: bool = True) -> None:
        self.path = path
        self.requires_session = requires_session
        self.duplicate_detection = duplicate_detection
        self.lock_duration = lock_duration
        self.max_delivery_count = max_delivery_count
        self.ready: dict[str | None, list[_Stored]] = {}
        self.locked: dict[bytes, _Lock] = {}
        self.receivers: list[Link] = []
        self.session_owner: dict[str, Link] = {}
        self.seen: dict[str, float] = {}
        self.seq = itertools.count(1)
        self.dlq = Entity(f"{path}/$deadletterqueue", dead_letter=False) if dead_letter else None

    def add(self, message: Message, seq: int | None = None, deliveries: int = 0) -> None:
        stored = _Stored(seq or next(self.seq), message, time.time(), deliveries)
        key = stored.session_id if self.requires_session else None
        heapq.heappush(self.ready.setdefault(key, []), stored)

    def requeue(self, stored: _Stored) -> None:
        key = stored.session_id if self.requires_session else None
        heapq.heappush(self.ready.setdefault(key, []), stored)

    def depth(self) -> int:
        return sum(len(h) for h in self.ready.values()) + len(self.locked)

    def free_session(self) -> str | None:
        candidates = [(h[0].seq, k) for k, h in self.ready.items() if h and k is not None
                      and k not in self.session_owner]
        return min(candidates)[1] if candidates else None


class Topic:
    def __init__(self, path: str, *, duplicate_detection: bool = False) -> None:
        self.path = path
        self.duplicate_detection = duplicate_detection
        self.subscriptions: dict[str, Entity] = {}
        self.seen: dict[str, float] = {}


def _guarded(fn: Callable[..., None]) -> Callable[..., None]:
    """A bug in one callback must not stop the reactor thread (and hang every test after it)."""

    @functools.wraps(fn)
    def run(self: Any, event: Any) -> None:
        try:
            fn(self, event)
        except Exception:
            traceback.print_exc()

    return run


class ServiceBusBroker(Handler):
    """Start with :meth:`start` (a daemon thread) and stop with :meth:`stop`, or use ``with``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, dedup_window: float = 600.0) -> None:
        super().__init__()
        self.host = host
        self.dedup_window = dedup_window
        self._lock = threading.RLock()
        self._queues: dict[str, Entity] = {}
        self._topics: dict[str, Topic] = {}
        self._locks: dict[bytes, _Lock] = {}
        self._pending_sessions: list[tuple[Link, Entity, float]] = []
        self._connections: set[Any] = set()
        self._stopping = False
        self._drop = False
        self._busy = 0
        #: (payload bytes, messages) of every transfer received on an entity link, for tests
        self.transfers: list[tuple[int, int]] = []
        self._container = Container(self)
        self._container.container_id = "servicebus-stand-in"
        self._acceptor = self._container.listen(f"{host}:{port}")
        self.port: int = self._acceptor._selectable.getsockname()[1]
        self._thread = threading.Thread(target=self._run, name="servicebus-broker", daemon=True)

    # ---------------------------------------------------------------- public helpers (any thread)

    @property
    def connection_string(self) -> str:
        return (f"Endpoint=sb://{self.host}:{self.port};SharedAccessKeyName=RootManageSharedAccessKey;"
                "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true")

    def create_queue(self, name: str, *, requires_session: bool = False, duplicate_detection: bool = False,
                     lock_duration: float = 30.0, max_delivery_count: int = 10) -> str:
        with self._lock:
            self._queues[name.lower()] = Entity(name, requires_session=requires_session,
                                                duplicate_detection=duplicate_detection,
                                                lock_duration=lock_duration, max_delivery_count=max_delivery_count)
        return name

    def create_topic(self, name: str, *, duplicate_detection: bool = False) -> str:
        with self._lock:
            self._topics[name.lower()] = Topic(name, duplicate_detection=duplicate_detection)
        return name

    def create_subscription(self, topic: str, name: str, *, requires_session: bool = False,
                            lock_duration: float = 30.0, max_delivery_count: int = 10) -> str:
        with self._lock:
            self._topics[topic.lower()].subscriptions[name.lower()] = Entity(
                f"{topic}/Subscriptions/{name}", requires_session=requires_session,
                lock_duration=lock_duration, max_delivery_count=max_delivery_count)
        return name

    def depth(self, path: str) -> int:
        """Messages ready or locked in an entity (``q``, ``t/Subscriptions/s``, ``q/$deadletterqueue``)."""
        with self._lock:
            entity = self._entity(path)
            return entity.depth() if entity else 0

    def drop_connections(self) -> None:
        """Fault hook: close every client connection (the SDK reconnects)."""
        self._drop = True
        deadline = time.monotonic() + 5
        while self._drop and time.monotonic() < deadline:
            time.sleep(_TICK)

    def server_busy(self, transfers: int) -> None:
        """Fault hook: refuse the next ``transfers`` sends with ``com.microsoft:server-busy``."""
        with self._lock:
            self._busy = transfers

    def start(self) -> ServiceBusBroker:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        self._thread.join(timeout=10)

    def __enter__(self) -> ServiceBusBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        self._container.run()

    # ---------------------------------------------------------------- reactor events

    def on_reactor_init(self, event: Any) -> None:
        event.container.schedule(_TICK, self)

    @_guarded
    def on_timer_task(self, event: Any) -> None:
        if self._stopping:
            self._acceptor.close()
            for conn in list(self._connections):
                conn.close()
            event.container.stop()
            return
        with self._lock:
            if self._drop:
                for conn in list(self._connections):
                    # the SDK indexes the error's info field, so it must be present
                    conn.condition = Condition("amqp:connection:forced", "dropped by the test",
                                               {symbol("reason"): "test"})
                    conn.close()
                self._drop = False
            self._expire(time.time())
            self._offer_sessions(time.time())
        event.container.schedule(_TICK, self)

    @_guarded
    def on_connection_bound(self, event: Any) -> None:
        sasl = event.transport.sasl()
        sasl.allow_insecure_mechs = True
        sasl.allowed_mechs("ANONYMOUS")

    @_guarded
    def on_connection_remote_open(self, event: Any) -> None:
        self._connections.add(event.connection)
        event.connection.open()

    @_guarded
    def on_session_remote_open(self, event: Any) -> None:
        event.session.open()

    @_guarded
    def on_session_remote_close(self, event: Any) -> None:
        event.session.close()

    @_guarded
    def on_connection_remote_close(self, event: Any) -> None:
        event.connection.close()

    @_guarded
    def on_transport_error(self, event: Any) -> None:
        cond = event.transport.condition
        if cond and cond.name not in ("amqp:connection:framing-error", "proton:io"):
            print(f"servicebus stand-in: transport error {cond.name}: {cond.description}", file=sys.stderr)

    @_guarded
    def on_transport_closed(self, event: Any) -> None:
        conn = event.connection
        if conn is None:
            return
        self._connections.discard(conn)
        with self._lock:
            for link in self._links_of(conn):
                self._detached(link)

    @_guarded
    def on_link_remote_close(self, event: Any) -> None:
        with self._lock:
            self._detached(event.link)
        event.link.close()

    @_guarded
    def on_link_remote_open(self, event: Any) -> None:
        link = event.link
        with self._lock:
            try:
                self._attach(link)
            except _NotFound as exc:
                # a null source and target say "refused"; the detach carries the reason
                link.source.type = Terminus.UNSPECIFIED
                link.target.type = Terminus.UNSPECIFIED
                link.condition = Condition("amqp:not-found", str(exc))
                link.open()
                link.close()

    @_guarded
    def on_link_flow(self, event: Any) -> None:
        link = event.link
        if link.is_sender and getattr(link, "sb_entity", None) is not None:
            with self._lock:
                self._pump(link.sb_entity)
            if link.drain_mode:
                link.drained()

    @_guarded
    def on_delivery(self, event: Any) -> None:
        dlv = event.delivery
        link = dlv.link
        with self._lock:
            if link.is_receiver:
                if dlv.readable and not dlv.partial:
                    self._incoming(link, dlv)
            elif dlv.updated:
                self._disposition(dlv)

    # ---------------------------------------------------------------- addressing and attach

    def _entity(self, path: str) -> Entity | None:
        path = path.strip("/")
        low = path.lower()
        if low.endswith("/$deadletterqueue"):
            base = self._entity(path[: -len("/$deadletterqueue")])
            return base.dlq if base else None
        if "/subscriptions/" in low:
            topic, _, sub = low.partition("/subscriptions/")
            t = self._topics.get(topic)
            return t.subscriptions.get(sub) if t else None
        return self._queues.get(low)

    @staticmethod
    def _path(address: str | None) -> str:
        if not address:
            return ""
        parts = urlsplit(address)
        return unquote(parts.path if parts.scheme else address).strip("/")

    def _attach(self, link: Link) -> None:
        remote = link.remote_source if link.is_sender else link.remote_target
        path = self._path(remote.address)
        link.sb_entity = None
        link.sb_kind = "entity"
        if path == "$cbs" or path.lower().endswith("/$management"):
            if path != "$cbs" and self._node(path[: -len("/$management")]) is None:
                raise _NotFound(f"The messaging entity '{path}' could not be found.")
            link.source.copy(link.remote_source)
            link.target.copy(link.remote_target)
            link.sb_kind = "cbs" if path == "$cbs" else "management"
            link.sb_node = path
            link.open()
            if link.is_receiver:
                link.flow(100)
            return
        node = self._node(path)
        if node is None or (link.is_sender and isinstance(node, Topic)) or (
                link.is_receiver and isinstance(node, Entity) and node.dlq is None):
            raise _NotFound(f"The messaging entity '{path}' could not be found.")
        # an attach reply without source or target means "refused": echo both only once found
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        if link.is_receiver:  # the client sends
            link.sb_node_obj = node
            link.max_message_size = MAX_MESSAGE_BYTES
            link.open()
            link.flow(1000)
            return
        assert isinstance(node, Entity)
        link.sb_entity = node
        link.sb_session = None
        if not node.requires_session:
            node.receivers.append(link)
            link.open()
            return
        wanted = _filter(link)
        if wanted is None:  # the next available session: held until one frees up or time runs out
            props = _properties(link)
            wait = float(props.get(OPERATION_TIMEOUT, 60000)) / 1000
            self._pending_sessions.append((link, node, time.monotonic() + wait))
            self._offer_sessions(time.time())
            return
        if wanted in node.session_owner:
            link.condition = Condition("com.microsoft:session-cannot-be-locked",
                                       f"The session {wanted} is locked by another receiver.")
            link.open()
            link.close()
            return
        self._grant_session(link, node, wanted)

    def _node(self, path: str) -> Entity | Topic | None:
        low = path.strip("/").lower()
        if "/" not in low and low in self._topics:
            return self._topics[low]
        return self._entity(path)

    def _grant_session(self, link: Link, entity: Entity, session_id: str) -> None:
        entity.session_owner[session_id] = link
        link.sb_session = session_id
        link.source.filter.clear()
        link.source.filter.put_dict({SESSION_FILTER: session_id})
        until = time.time() + entity.lock_duration
        link.properties = {LOCKED_UNTIL_UTC: _TICKS_EPOCH + int(until * 10_000_000)}
        entity.receivers.append(link)
        link.open()
        self._pump(entity)

    def _offer_sessions(self, now: float) -> None:
        still = []
        for link, entity, deadline in self._pending_sessions:
            if link.state & Endpoint.REMOTE_CLOSED:
                continue
            free = entity.free_session()
            if free is not None:
                self._grant_session(link, entity, free)
            elif time.monotonic() >= deadline:
                # as the service does: a refusing attach (null source), then the detach with the reason
                link.source.type = Terminus.UNSPECIFIED
                link.target.type = Terminus.UNSPECIFIED
                link.condition = Condition("com.microsoft:timeout", "No session available to complete the request.")
                link.open()
                link.close()
            else:
                still.append((link, entity, deadline))
        self._pending_sessions = still

    def _links_of(self, conn: Any) -> list[Link]:
        links = []
        link = conn.link_head(0)
        while link:
            links.append(link)
            link = link.next(0)
        return links

    def _detached(self, link: Link) -> None:
        entity = getattr(link, "sb_entity", None)
        if entity is None:
            return
        link.sb_entity = None
        if link in entity.receivers:
            entity.receivers.remove(link)
        session = getattr(link, "sb_session", None)
        if session is not None and entity.session_owner.get(session) == link:
            del entity.session_owner[session]
        for token, lock in list(self._locks.items()):
            if lock.link == link:
                self._unlock(token)
                lock.stored.deliveries -= 1
                lock.entity.requeue(lock.stored)
        self._pump(entity)

    # ---------------------------------------------------------------- send path

    def _incoming(self, link: Link, dlv: Delivery) -> None:
        raw = link.recv(dlv.pending) or b""
        link.advance()
        if link.credit < 500:
            link.flow(1000 - link.credit)
        kind = getattr(link, "sb_kind", "entity")
        if kind in ("cbs", "management"):
            self._request(link, raw)
            dlv.update(Delivery.ACCEPTED)
            dlv.settle()
            return
        if self._busy > 0:
            self._busy -= 1
            self._refuse(dlv, "com.microsoft:server-busy", "The server is busy (injected by the test).")
            return
        inner = split_transfer(raw)
        # the limit applies to the messages; the SDK leaves a batch envelope's own bytes out of its count
        size = sum(len(e) for e in inner) if len(inner) > 1 or inner[0] is not raw else len(raw)
        if size > MAX_MESSAGE_BYTES:
            self._refuse(dlv, "amqp:link:message-size-exceeded",
                         f"The message of {size} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes.")
            return
        messages = []
        for encoded in inner:
            msg = Message()
            msg.decode(encoded)
            messages.append(msg)
        self.transfers.append((len(raw), len(messages)))
        node = getattr(link, "sb_node_obj", None)
        if node is None:
            self._refuse(dlv, "amqp:not-found", "The link is not attached to an entity.")
            return
        now = time.monotonic()
        for msg in messages:
            if self._duplicate(node, msg, now):
                continue
            if isinstance(node, Topic):
                for sub in node.subscriptions.values():
                    copy = Message()
                    copy.decode(msg.encode())
                    sub.add(copy)
                    self._pump(sub)
            else:
                node.add(msg)
        if isinstance(node, Entity):
            self._pump(node)
        dlv.update(Delivery.ACCEPTED)
        dlv.settle()

    @staticmethod
    def _refuse(dlv: Delivery, condition: str, description: str) -> None:
        # the SDK indexes the error's info field, so it must be present
        dlv.local.condition = Condition(condition, description, {symbol("com.microsoft:tracking-id"): uuid.uuid4().hex})
        dlv.update(Delivery.REJECTED)
        dlv.settle()

    def _duplicate(self, node: Entity | Topic, msg: Message, now: float) -> bool:
        if not node.duplicate_detection or msg.id is None:
            return False
        key = str(msg.id)
        for k in [k for k, t in node.seen.items() if t < now]:
            del node.seen[k]
        if key in node.seen:
            return True
        node.seen[key] = now + self.dedup_window
        return False

    # ---------------------------------------------------------------- receive path

    def _pump(self, entity: Entity) -> None:
        for link in list(entity.receivers):
            if not link.state & Endpoint.LOCAL_ACTIVE or link.state & Endpoint.REMOTE_CLOSED:
                continue
            key = link.sb_session if entity.requires_session else None
            heap = entity.ready.get(key)
            while heap and link.credit > 0:
                self._deliver(link, entity, heapq.heappop(heap))

    def _deliver(self, link: Link, entity: Entity, stored: _Stored) -> None:
        now = time.time()
        token = uuid.uuid4().bytes
        until = now + entity.lock_duration
        msg = stored.message
        annotations = dict(msg.annotations or {})
        annotations[symbol("x-opt-sequence-number")] = stored.seq
        annotations[symbol("x-opt-enqueued-time")] = _ms(stored.enqueued)
        annotations[symbol("x-opt-locked-until")] = _ms(until)
        msg.annotations = annotations
        payload = _header(stored.deliveries) + _strip_header(bytes(msg.encode()))
        stored.deliveries += 1
        dlv = link.delivery(token)  # type: ignore[arg-type]  # proton takes bytes tags too
        dlv.sb_token = token  # proton decodes a tag as UTF-8 when read back, so keep the bytes
        link.stream(payload)
        link.advance()
        lock = _Lock(entity, stored, link, until)
        self._locks[token] = lock
        entity.locked[token] = lock

    def _unlock(self, token: bytes) -> _Lock | None:
        lock = self._locks.pop(token, None)
        if lock:
            lock.entity.locked.pop(token, None)
        return lock

    def _disposition(self, dlv: Delivery) -> None:
        state = dlv.remote_state
        lock = self._unlock(getattr(dlv, "sb_token", b""))
        if lock is None:
            if state and not dlv.settled:
                self._refuse(dlv, "com.microsoft:message-lock-lost", "The lock supplied is invalid.")
            return
        entity, stored = lock.entity, lock.stored
        if state == Delivery.ACCEPTED:
            pass
        elif state == Delivery.RELEASED:
            stored.deliveries -= 1
            entity.requeue(stored)
        elif state == Delivery.MODIFIED:
            dlv.local.failed = dlv.remote.failed
            dlv.local.undeliverable = dlv.remote.undeliverable
            if stored.deliveries >= entity.max_delivery_count:
                self._dead_letter(entity, stored, "MaxDeliveryCountExceeded",
                                  f"Message could not be consumed after {entity.max_delivery_count} delivery attempts.")
            else:
                entity.requeue(stored)
        elif state == Delivery.REJECTED:
            cond = dlv.remote.condition
            info: dict[Any, Any] = dict(cond.info or {}) if cond else {}  # type: ignore[arg-type]
            self._dead_letter(entity, stored, _text(info.get(symbol("DeadLetterReason"))),
                              _text(info.get(symbol("DeadLetterErrorDescription"))))
        else:  # settled without an outcome: give the message back
            stored.deliveries -= 1
            entity.requeue(stored)
            state = 0
        if state and not dlv.settled:
            dlv.update(state)
            dlv.settle()
        self._pump(entity)

    def _dead_letter(self, entity: Entity, stored: _Stored, reason: str | None, description: str | None) -> None:
        if entity.dlq is None:
            return
        props: dict[Any, Any] = dict(stored.message.properties or {})
        if reason is not None:
            props["DeadLetterReason"] = reason
        if description is not None:
            props["DeadLetterErrorDescription"] = description
        stored.message.properties = props  # type: ignore[assignment]
        entity.dlq.add(stored.message, deliveries=stored.deliveries)
        self._pump(entity.dlq)

    def _expire(self, now: float) -> None:
        for token, lock in list(self._locks.items()):
            if lock.expires <= now:
                self._unlock(token)
                lock.entity.requeue(lock.stored)
                self._pump(lock.entity)

    # ---------------------------------------------------------------- $cbs and $management

    def _request(self, link: Link, raw: bytes) -> None:
        req = Message()
        req.decode(raw)
        raw_props: Any = req.properties or {}
        props = {str(k): v for k, v in raw_props.items()}
        op = str(props.get("operation", ""))
        request: Any = req.body or {}
        status, body = 200, None
        if link.sb_kind == "cbs":
            status = 202 if op == "put-token" else 400
        elif op == "com.microsoft:update-disposition":
            status = self._mgmt_disposition(request)
        elif op == "com.microsoft:renew-lock":
            tokens = request.get("lock-tokens") or []
            body = {"expirations": [_ms(time.time() + 30) for _ in tokens]}
        else:
            status = 501
        reply = Message(body=body, correlation_id=req.id,
                        properties={"status-code": status, "statusCode": status,
                                    "status-description": "OK" if status < 300 else "not supported"})
        node = link.sb_node
        for other in self._links_of(link.connection):
            if other.is_sender and getattr(other, "sb_node", None) == node and other.state & Endpoint.LOCAL_ACTIVE:
                other.send(reply)
                return

    def _mgmt_disposition(self, body: dict[Any, Any]) -> int:
        status = str(body.get("disposition-status", ""))
        tokens = body.get("lock-tokens") or []
        for token in tokens:
            lock = self._unlock(token.bytes_le if isinstance(token, uuid.UUID) else bytes(token))
            if lock is None:
                return 410
            if status == "abandoned":
                lock.entity.requeue(lock.stored)
            elif status == "suspended":
                self._dead_letter(lock.entity, lock.stored, _text(body.get("deadletter-reason")),
                                  _text(body.get("deadletter-description")))
            self._pump(lock.entity)
        return 200


class _NotFound(Exception):
    pass


def _filter(link: Link) -> str | None:
    data = link.remote_source.filter
    data.rewind()
    if not data.next():
        return None
    filters = data.get_object() or {}
    value = filters.get(SESSION_FILTER)
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _properties(link: Link) -> dict[Any, Any]:
    props = link.remote_properties
    return dict(props) if props else {}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


#: point the tests at a running official emulator (or namespace) instead of the stand-in
EXTERNAL_ENV = "BATCHBRIDGE_SERVICEBUS_CONNECTION_STRING"
#: the variable the tests' URIs name with ``?connection_string_env=``
TEST_ENV = "BATCHBRIDGE_TEST_SERVICEBUS"
#: entities an external emulator must declare (localstack/servicebus-config.json does)
EXTERNAL_ENTITIES = {"queue": "batch-events", "dedup": "batch-events-dedup", "sessions": "batch-events-sessions",
                     "topic": "batch-events-topic", "subscription": "all", "filtered": "failed"}


class ServiceBusEnv:
    """What the ``servicebus_broker`` fixture yields: a connection string and fresh entities.

    With ``BATCHBRIDGE_SERVICEBUS_CONNECTION_STRING`` set, entities cannot be created: the helpers
    return the pre-declared ones of :data:`EXTERNAL_ENTITIES` after draining them.
    """

    def __init__(self, connection_string: str, broker: ServiceBusBroker | None) -> None:
        self.connection_string = connection_string
        self.broker = broker
        self.env = TEST_ENV

    @property
    def external(self) -> bool:
        return self.broker is None

    def uri(self, path: str, **options: Any) -> str:
        query = "&".join([f"connection_string_env={self.env}", *(f"{k}={v}" for k, v in options.items())])
        return f"servicebus:///{path}?{query}"

    def queue(self, *, requires_session: bool = False, duplicate_detection: bool = False,
              lock_duration: float = 30.0, max_delivery_count: int = 10) -> str:
        if self.broker is None:
            kind = "sessions" if requires_session else "dedup" if duplicate_detection else "queue"
            return self._drained(EXTERNAL_ENTITIES[kind], sessions=requires_session)
        return self.broker.create_queue(f"q-{uuid.uuid4().hex[:10]}", requires_session=requires_session,
                                        duplicate_detection=duplicate_detection, lock_duration=lock_duration,
                                        max_delivery_count=max_delivery_count)

    def topic(self, *subscriptions: str) -> str:
        """A topic with these subscriptions (default: one named ``all``)."""
        if self.broker is None:
            topic = EXTERNAL_ENTITIES["topic"]
            for sub in (EXTERNAL_ENTITIES["subscription"], EXTERNAL_ENTITIES["filtered"]):
                self._drained(f"{topic}/Subscriptions/{sub}")
            return topic
        topic = self.broker.create_topic(f"t-{uuid.uuid4().hex[:10]}")
        for sub in subscriptions or ("all",):
            self.broker.create_subscription(topic, sub)
        return topic

    def _drained(self, path: str, *, sessions: bool = False) -> str:
        from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusClient, ServiceBusReceiveMode
        from azure.servicebus.exceptions import OperationTimeoutError

        entity, _, sub = path.partition("/Subscriptions/")
        with ServiceBusClient.from_connection_string(self.connection_string) as client:
            for dlq in (None, "deadletter"):
                while True:
                    kw: dict[str, Any] = {"receive_mode": ServiceBusReceiveMode.RECEIVE_AND_DELETE,
                                          "max_wait_time": 1, "sub_queue": dlq}
                    if sessions and dlq is None:
                        kw["session_id"] = NEXT_AVAILABLE_SESSION
                    try:
                        receiver = (client.get_subscription_receiver(entity, sub, **kw) if sub
                                    else client.get_queue_receiver(entity, **kw))
                        with receiver:
                            got = receiver.receive_messages(max_message_count=100, max_wait_time=1)
                    except OperationTimeoutError:
                        got = []
                    if not got:
                        break
        return path


def _fixture() -> Any:
    import pytest

    @pytest.fixture(scope="session")
    def servicebus_broker() -> Iterator[ServiceBusEnv]:
        """A Service Bus for the tests: the stand-in on a free port, or the external one named by
        ``BATCHBRIDGE_SERVICEBUS_CONNECTION_STRING``."""
        external = os.environ.get(EXTERNAL_ENV)
        previous = os.environ.get(TEST_ENV)
        broker = None if external else ServiceBusBroker().start()
        env = ServiceBusEnv(external or broker.connection_string, broker)  # type: ignore[union-attr]
        os.environ[TEST_ENV] = env.connection_string
        try:
            yield env
        finally:
            if previous is None:
                os.environ.pop(TEST_ENV, None)
            else:
                os.environ[TEST_ENV] = previous
            if broker is not None:
                broker.stop()

    return servicebus_broker


with contextlib.suppress(ImportError):  # run as a program (the benchmark) without pytest
    servicebus_broker = _fixture()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--queue", action="append", default=[], help="queue to create (repeatable)")
    parser.add_argument("--session-queue", action="append", default=[], help="session queue to create")
    parser.add_argument("--topic", action="append", default=[],
                        help="topic:sub1,sub2 to create with its subscriptions (repeatable)")
    args = parser.parse_args(argv)
    broker = ServiceBusBroker(args.host, args.port)
    for q in args.queue:
        broker.create_queue(q)
    for q in args.session_queue:
        broker.create_queue(q, requires_session=True)
    for spec in args.topic:
        topic, _, subs = spec.partition(":")
        broker.create_topic(topic)
        for sub in filter(None, subs.split(",")):
            broker.create_subscription(topic, sub)
    broker.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())

    def until_stdin_closes() -> None:
        sys.stdin.read()
        done.set()

    threading.Thread(target=until_stdin_closes, daemon=True).start()
    print(f"READY {broker.connection_string}", flush=True)
    done.wait()
    broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
