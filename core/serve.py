"""``serve``: the HTTP receiver, an ASGI app (Starlette) in front of a :class:`~batchbridge.core.bridge.Bridge`.

Endpoints:

``POST /events`` (and ``/events/{provider}`` to skip detection)
    every envelope the core decodes. 204 once the events are durably in the outbox; 400 with
    ``{"error", "reason", "where"}`` for input that cannot be decoded (the body is dead-lettered);
    413 over ``serve.max_body_bytes``; 401 without the shared token; 403 for an MNS push whose
    signature fails; 503 when the outbox cannot be written (nothing was kept: the sender retries).
``GET /healthz``
    liveness and the outbox depth.
``GET /readyz``
    200 while events can be taken and delivered; 503 with the reasons while the outbox cannot be
    written (disk full; the file deleted, replaced or truncated: intake is then refused too) or a
    destination has failed for longer than ``serve.ready_max_failing``.
``GET /metrics``
    Prometheus text format, from a registry owned by this app.
``GET /state?subject=GLOB`` and ``GET /status``
    the latest event per subject as JSON, and the operators' status page (``core/status_page.py``);
    both need the shared token when one is set.

Authentication: every request needs the shared token when one is configured, as ``Authorization:
Bearer <t>``, ``X-Batchbridge-Token: <t>`` or ``?token=<t>`` (compared in constant time) -- MNS pushes
too, which carry it in their subscription endpoint's query string (unless ``serve.mns.require_token``
is off). A request carrying ``x-mns-signing-cert-url`` is an MNS push and must also pass MNS signature
verification. The token never reaches a log line, a metric or an error body.

Starlette, uvicorn, prometheus_client and cryptography are imported here only, and only when an app
is built: the rest of batchbridge runs without the ``serve`` extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import hmac
import logging
import signal
import socket
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl

import orjson

from . import status_page
from .bridge import Bridge, TooManyEventsError
from .config import BridgeConfig, ServeSettings, load_config
from .errors import BatchBridgeError, MissingDependencyError
from .intake_process import DecodingProcess
from .mns_signature import MnsVerifier, SignatureError, is_mns_request
from .secrets import redact
from .vendors import providers

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import Receive, Scope, Send

log = logging.getLogger("batchbridge.serve")

T = TypeVar("T")

#: what reading the outbox for a ``/metrics`` scrape may raise when the file is gone or damaged
_UNREADABLE = (BatchBridgeError, sqlite3.Error, OSError)


def _or_empty(read: Callable[[], T], empty: Callable[[], T]) -> Callable[[], T]:
    """``read``, or ``empty()`` when the outbox cannot be read (logged at debug: ``/readyz`` says why)."""
    def reader() -> T:
        try:
            return read()
        except _UNREADABLE as exc:
            log.debug("a /metrics figure could not be read from the outbox: %s", redact(str(exc)))
            return empty()
    return reader


class _TooLarge(Exception):
    pass


def require_serve_extra() -> None:
    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(f"batchbridge serve needs the 'serve' extra: pip install "
                                     f"'batchbridge[serve]' ({exc.name} is missing)") from None


Headers = list[tuple[str, str]]


def _token_ok(headers: Mapping[str, str], query: bytes, token: str | None) -> bool:
    if token is None:
        return True
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        presented: str | None = auth[7:].strip()
    else:
        presented = headers.get("x-batchbridge-token") or (
            dict(parse_qsl(query.decode("latin-1"))).get("token") if query else None)
    return presented is not None and hmac.compare_digest(presented.encode(), token.encode())


class _TooSlow(Exception):
    pass


async def _read_body(receive: Receive, declared: str | None, limit: int, timeout: float = 30.0) -> bytes | None:
    """The body within ``timeout`` seconds, refusing early from Content-Length and again while streaming
    (a sender may lie or use chunked encoding); None when the client went away."""
    try:
        return await asyncio.wait_for(_receive_body(receive, declared, limit), timeout)
    except asyncio.TimeoutError:
        raise _TooSlow from None


async def _receive_body(receive: Receive, declared: str | None, limit: int) -> bytes | None:
    if declared is not None:
        try:
            if int(declared) > limit:
                raise _TooLarge
        except ValueError:
            pass  # the server rejects a malformed length itself; the stream check below still holds
    message = await receive()
    if message["type"] != "http.request":
        return None
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):  # the common case: one chunk, no copy
        if len(body) > limit:
            raise _TooLarge
        return body
    chunks = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _target(scope: Scope) -> str:
    """The request target as the client sent it (path and query), which MNS signs."""
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if isinstance(raw_path, bytes) else scope["path"]
    query = scope.get("query_string", b"")
    return f"{path}?{query.decode('latin-1')}" if query else path


def _route_path(scope: Scope) -> str:
    """The path below the mount point (what Starlette's router matches on)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] == "/":
        return path[len(root):]
    return path


_NO_CONTENT = {"type": "http.response.start", "status": 204, "headers": []}
_EMPTY = {"type": "http.response.body", "body": b""}


#: the 401 every endpoint answers without the shared token: (code, reason, headers)
_UNAUTHORIZED = ("unauthorized", "a valid shared token is required", {"WWW-Authenticate": "Bearer"})


def _error_json(code: str, reason: str, where: str | None = None) -> bytes:
    """The body of every error answer: ``{"error", "reason", "where"}``, secrets scrubbed."""
    return orjson.dumps({"error": code, "reason": redact(reason), "where": redact(where) if where else None})


async def _send_error(send: Send, status: int, code: str, reason: str, where: str | None = None,
                      headers: Mapping[str, str] | None = None) -> None:
    body = _error_json(code, reason, where)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class _Intake:
    """``POST /events[/{provider}]`` as a plain ASGI app: every event a sender pushes goes through here,
    so it skips the Request/Response objects and middleware that the other endpoints use."""

    def __init__(self, bridge: Bridge, conf: ServeSettings, verifier: MnsVerifier) -> None:
        self.bridge = bridge
        self.conf = conf
        self.verifier = verifier

    def ensure_started(self) -> None:
        if not self.bridge.running:
            self.bridge.start()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._handle(scope, receive, send)
        except Exception:
            # what Starlette's ServerErrorMiddleware would do, without echoing anything of the request
            log.exception("the intake endpoint failed")
            await _send_error(send, 500, "internal_error", "the request could not be handled; it was not accepted")

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        conf, bridge = self.conf, self.bridge
        path = _route_path(scope)
        provider = path[8:] or None if len(path) > 7 else None
        if provider is not None and provider not in providers():
            return await _send_error(send, 404, "unknown_provider",
                                     f"no provider {provider!r}; use one of {', '.join(providers())}")
        raw_headers = scope["headers"]
        headers: Headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw_headers]
        lower = {k.lower(): v for k, v in headers}
        mns = is_mns_request(lower)
        verify = mns and conf.mns.verify
        # the token first (cheap, and a push without it costs no certificate fetch); a signed MNS push
        # skips it only when serve.mns.require_token is off
        if (not verify or conf.mns.require_token) and not _token_ok(lower, scope.get("query_string", b""),
                                                                     conf.token):
            code, reason, challenge = _UNAUTHORIZED
            return await _send_error(send, 401, code, reason, None, challenge)
        if verify:
            try:
                # headers first: an unsigned request never gets its body read
                await self.verifier.averify(scope["method"], _target(scope), headers)
            except SignatureError as exc:
                log.warning("refused an MNS push: %s", redact(str(exc)))
                return await _send_error(send, 403, exc.code, exc.reason, exc.where)
        try:
            body = await _read_body(receive, lower.get("content-length"), conf.max_body_bytes, conf.body_timeout)
        except _TooLarge:
            return await _send_error(send, 413, "payload_too_large",
                                     f"the body exceeds {conf.max_body_bytes} bytes", "body")
        except _TooSlow:
            return await _send_error(send, 408, "request_timeout",
                                     f"the body did not arrive within {conf.body_timeout:g}s (serve.body_timeout)",
                                     "body", {"Connection": "close"})
        if body is None:
            return None  # the client disconnected: nothing was accepted, nothing to answer
        if verify:
            try:
                self.verifier.verify_body(headers, body)
            except SignatureError as exc:
                return await _send_error(send, 403, exc.code, exc.reason, exc.where)
        self.ensure_started()
        meta: dict[str, object] = {"content_type": lower.get("content-type")}
        if mns:
            meta["mns"] = True
        try:
            result = await bridge.ahandle(body, source="http", provider=provider, meta=meta,
                                          max_events=conf.max_events)
        except BatchBridgeError as exc:
            log.error("cannot accept events: %s", redact(str(exc)))
            return await _send_error(send, 503, exc.code, "the outbox cannot be written; retry later", None,
                                     {"Retry-After": "5"})
        if result.error is not None:
            e = result.error
            return await _send_error(send, 413 if isinstance(e, TooManyEventsError) else 400, e.code, e.reason,
                                     e.where)
        await send(_NO_CONTENT)
        await send(_EMPTY)
        return None


def _is_intake(scope: Scope) -> bool:
    if scope["type"] != "http" or scope["method"] != "POST":
        return False
    path = _route_path(scope)
    return path == "/events" or (path.startswith("/events/") and len(path) > 8 and "/" not in path[8:])


@functools.cache
def _app_type() -> Callable[..., Starlette]:
    """Starlette with the intake path taken before routing and middleware (Starlette is imported
    only when an app is built, hence the class made on first use)."""
    from starlette.applications import Starlette

    class BridgeApp(Starlette):
        def __init__(self, intake: _Intake, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.intake = intake

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if _is_intake(scope):
                return await self.intake(scope, receive, send)
            return await super().__call__(scope, receive, send)

    return BridgeApp


def create_app(target: Bridge | BridgeConfig | str | Path, *, settings: ServeSettings | None = None,
               mns_verifier: MnsVerifier | None = None) -> Starlette:
    """The ASGI app for a bridge, a config, or a config file path.

    Given a config (or path), the app owns its bridge: started on the first request or at startup,
    drained and stopped at shutdown (the lifespan). Given a :class:`Bridge`, the app only starts it
    when needed and leaves stopping it to the caller -- the shape for mounting the app inside an
    existing Starlette/FastAPI app, whose lifespan then calls ``bridge.stop()``::

        bridge = Bridge(load_config("bridge.toml"))
        app.mount("/batchbridge", create_app(bridge))
    """
    require_serve_extra()
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from .metrics import prometheus_registry
    from .stores import destination_heads

    _redact_access_log()
    owned = not isinstance(target, Bridge)
    if isinstance(target, Bridge):
        bridge = target
    else:
        config = target if isinstance(target, BridgeConfig) else load_config(target)
        bridge = Bridge(config)
    conf = settings or bridge.config.serve
    verifier = mns_verifier or MnsVerifier(conf.mns)
    def health() -> tuple[bool, dict[str, float]]:
        failing = {dest: seconds for dest, (seconds, _) in bridge.failing().items()}
        return bridge.unwritable() is None, failing

    # figures read from the outbox are left out when it cannot be read (its WAL deleted under a running
    # serve, a damaged file): a scrape answers with what is known rather than 500
    registry = prometheus_registry(bridge.stats, _or_empty(bridge.outbox.depths, dict),
                                   backlog=_or_empty(lambda: destination_heads(bridge.outbox), list),
                                   health=_or_empty(health, lambda: (False, {})))  # flagged: writable 0

    def error(status: int, code: str, reason: str, headers: Mapping[str, str] | None = None) -> Response:
        return Response(_error_json(code, reason), status_code=status, media_type="application/json",
                        headers=dict(headers or {}))

    def authorized(request: Request) -> bool:
        return _token_ok(request.headers, request.scope.get("query_string", b""), conf.token)

    def unauthorized() -> Response:
        code, reason, challenge = _UNAUTHORIZED
        return error(401, code, reason, challenge)

    intake = _Intake(bridge, conf, verifier)

    async def healthz(request: Request) -> Response:
        if not conf.public_healthz and not authorized(request):
            return unauthorized()
        try:
            depth = await asyncio.to_thread(bridge.outbox.depth)
        except BatchBridgeError as exc:
            return error(503, exc.code, "the outbox cannot be read")
        return JSONResponse({"status": "ok", "outbox_depth": depth, "publishing": bridge.running})

    def not_ready() -> list[str]:
        reasons = []
        unwritable = bridge.unwritable()
        if unwritable is not None:
            reasons.append(f"outbox: {unwritable}")
        for dest, (seconds, why) in sorted(bridge.failing().items()):
            if seconds > conf.ready_max_failing:
                reasons.append(f"{dest}: failing for {seconds:.0f}s (serve.ready_max_failing = "
                               f"{conf.ready_max_failing:g}s): {why}")
        return reasons

    async def readyz(request: Request) -> Response:
        if not conf.public_healthz and not authorized(request):
            return unauthorized()
        try:
            reasons = await asyncio.to_thread(not_ready)
        except BatchBridgeError as exc:
            reasons = [f"outbox: {redact(str(exc))}"]
        if not bridge.running:
            reasons.append("the publishers are not running")
        return JSONResponse({"ready": not reasons, "reasons": [redact(r) for r in reasons]},
                            status_code=503 if reasons else 200)

    async def metrics(request: Request) -> Response:
        if not authorized(request):
            return unauthorized()
        data = await asyncio.to_thread(generate_latest, registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        intake.ensure_started()
        try:
            yield
        finally:
            if mns_verifier is None:
                verifier.close()
            if owned:
                drained = await asyncio.to_thread(bridge.drain, conf.drain_timeout)
                await asyncio.to_thread(bridge.stop)
                if not drained:
                    log.warning("stopped with events still in the outbox; they go out on the next start")

    app = _app_type()(
        intake,
        routes=[
            Route("/events", intake, methods=["POST"]),
            Route("/events/{provider}", intake, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            *status_page.routes(bridge, authorized, unauthorized, error),
        ],
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # a redirect would be built from the request's Host header
    app.state.bridge = bridge
    return app


class _RedactAccessLog(logging.Filter):
    """uvicorn's access log prints the request line, query string included (``?token=``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def _redact_access_log() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _RedactAccessLog) for f in access.filters):
        access.addFilter(_RedactAccessLog())


def serve(config: BridgeConfig, *, host: str | None = None, port: int | None = None,
          log_level: str = "info", on_bound: Callable[[], None] | None = None,
          worker_socket: int | None = None) -> None:
    """Run the app under uvicorn until SIGTERM/SIGINT, then drain and stop the bridge; ``on_bound`` is
    called once the port is bound (the CLI prints its banner then, not before a bind that may fail).
    ``worker_socket``: accept on this inherited listening descriptor instead of binding (a worker of
    ``serve --workers N``, ``core/serve_workers.py``)."""
    require_serve_extra()
    import uvicorn

    class _Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started and on_bound is not None:
                on_bound()

    # a big body's plan is unpickled and committed on threads, which hold the GIL while they work: a
    # shorter switch interval (5 ms by default) lets the event loop in between, so small requests stay
    # fast (and a body decoded on a thread, when the decoding process is down, holds it far longer)
    sys.setswitchinterval(0.001)
    _fixed_mmap_threshold()
    app = create_app(config)
    # claim the outbox before binding: a second bridge on it is a clean error, not a failed lifespan
    app.state.bridge.start()
    # big bodies are decoded in a process of their own (see intake_process), up before the port is
    # bound; if it cannot start, they are decoded on a thread
    decoder = DecodingProcess(config)
    decoder.start()
    app.state.bridge.decoder = decoder
    # what is built by now lives as long as the process: frozen out of the collector's generations, a
    # full collection during a burst scans only what the burst made (it stops every thread, the event
    # loop's too)
    gc.collect()
    gc.freeze()
    server = _Server(uvicorn_config(app, config.serve, host=host, port=port, log_level=log_level))
    # uvicorn re-raises the signal that stopped it once it has shut down; a graceful stop on SIGTERM
    # or SIGINT is a normal exit for us, so the re-raised signal lands in a handler that ignores it
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        if worker_socket is None:
            server.run()
        else:
            server.run(sockets=[socket.socket(fileno=worker_socket)])
    finally:
        app.state.bridge.decoder = None
        decoder.close()
        for s, handler in previous.items():
            signal.signal(s, handler)


#: allocations from this size up get their own mapping, returned to the OS when freed (glibc's default)
MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def _fixed_mmap_threshold() -> None:
    """Keep glibc's mmap threshold where it starts. glibc raises it to the size of any mapped block
    freed (up to 32 MiB), so after the first big body every later one -- and the plan it comes back
    as -- is carved out of the heap, which a burst leaves fragmented and resident for good (measured:
    +6 MiB that ``malloc_trim`` cannot return). Setting it once turns that adjustment off."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass  # not glibc


#: connections asyncio accepts in one burst (uvicorn's default of 2,048 can exhaust 1,024 descriptors)
ACCEPT_BACKLOG = 128
#: descriptors kept for the outbox, logs, certificate fetches and the publishers
FD_HEADROOM = 128


def uvicorn_config(app: Any, conf: ServeSettings, *, host: str | None = None, port: int | None = None,
                   log_level: str = "info") -> Any:
    """uvicorn's settings for ``serve``: its own limits (keep-alive, head size, concurrency) plus the
    connection guard below for what it lacks (a head timeout, a bound on connections)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host or conf.host,
        port=conf.port if port is None else port,
        log_level=log_level,
        lifespan="on",
        timeout_graceful_shutdown=max(5, int(conf.drain_timeout) + 5),
        server_header=False,
        http=_guarded_protocol(conf),
        timeout_keep_alive=max(1, round(conf.keep_alive_timeout)),
        h11_max_incomplete_event_size=conf.max_header_bytes,
        # our guard keeps connections at max_connections; uvicorn's own limit (which answers 503 to a
        # request once that many connections or tasks exist) sits just above it, as a backstop
        limit_concurrency=conf.max_connections + 1,
        # asyncio accepts up to ``backlog`` connections in one go before any of them is looked at: a
        # small value keeps a burst from taking the descriptors the guard is about to free
        backlog=ACCEPT_BACKLOG,
    )


def _guarded_protocol(conf: ServeSettings) -> type:
    """uvicorn's h11 protocol with a head timeout and a connection bound.

    uvicorn accepts every connection and waits forever for its first request, so idle and slow-header
    connections pile up until the process runs out of file descriptors. Here a connection gets
    ``header_timeout`` seconds to deliver each request head; and when ``max_connections`` are open, a
    new one makes room by closing the oldest connection still waiting for a head (an idle or slowloris
    one: a genuine sender delivers its head at once), or is itself closed at once if none is waiting.
    """
    import resource

    from uvicorn.protocols.http.h11_impl import H11Protocol

    # never more connections than the descriptors left after one accept burst and the process's own
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    limit = conf.max_connections
    if soft != resource.RLIM_INFINITY and soft - ACCEPT_BACKLOG - FD_HEADROOM < limit:
        limit = max(8, soft - ACCEPT_BACKLOG - FD_HEADROOM)
        log.warning("serve.max_connections lowered to %d for the file descriptor limit of %d", limit, soft)

    waiting: dict[Any, None] = {}  # the connections waiting for a head, insertion-ordered: the oldest first

    class Guarded(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _seen: object = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limit:
                victim = next((p for p in waiting if p is not self), None)
                if victim is None:
                    transport.abort()  # refused fast: its descriptor is free again at once
                    return
                victim._expire()
            self._wait_for_head()

        def _wait_for_head(self) -> None:
            waiting[self] = None
            self._head_timer = self.loop.call_later(conf.header_timeout, self._expire)

        def _got_head(self) -> None:
            waiting.pop(self, None)
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _expire(self) -> None:
            self._got_head()
            self.transport.abort()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and self.cycle is not self._seen:
                self._seen = self.cycle
                self._got_head()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self not in waiting:
                self._wait_for_head()  # idle between requests: evictable, and timed like a new connection

        def connection_lost(self, exc: Exception | None) -> None:
            self._got_head()
            super().connection_lost(exc)

    return Guarded
