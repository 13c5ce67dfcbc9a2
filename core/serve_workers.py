"""``serve --workers N``: N processes on one host, one port, one outbox.

A **supervisor** process (this module's :func:`supervise`) does three things and nothing else:

* it binds the port and hands each worker a listening socket on it (inherited descriptor). On Linux
  each worker slot has a socket of its own, all bound to the one port with ``SO_REUSEPORT``, and the
  kernel spreads new connections over them: with one socket shared by all (what uvicorn's own
  ``--workers`` does) the first worker to wake accepted a whole burst -- a load generator's 32
  connections all went to one worker in about every other run, the other idling. The supervisor
  keeps every socket open, so connections that arrive for a worker being restarted wait in its
  socket's queue for the replacement. The port is first bound plainly, once, so a port already in
  use is refused as before. Elsewhere all workers share one socket;
* for a SQLite outbox, it takes the outbox's exclusive ``flock`` (``Outbox.lock``) and hands the
  locked descriptor down too (``BATCHBRIDGE_OUTBOX_LOCK_FD``). A ``flock`` belongs to the open file
  description, which the workers share: each worker's ``Outbox.lock`` checks that the inherited
  descriptor is the lock on *its* outbox file (same device and inode), and so the N workers of one
  serve deliver from the file together (the leases in the file keep them apart,
  ``core/store.py``), while an unrelated second ``serve`` or ``relay`` -- through the same path, a
  hard link or a symlink -- is still refused, as with one process. The lock stays held while any
  worker or the supervisor lives, so a worker replaced after a crash finds it held for it;
* it restarts a worker that dies (a crash, an OOM kill, SIGKILL), at once the first time and with a
  growing pause while one keeps dying within :data:`CRASH_WINDOW` seconds of its start. Rows the
  dead worker had claimed go to the others when its lease runs out (``[outbox] lease``), so nothing
  is lost; some may be delivered twice, with equal event ids.

SIGTERM/SIGINT to the supervisor are passed to every worker, which drain and stop as a single
``serve`` does; the supervisor exits once they have. A worker whose supervisor is gone (killed
outright) stops by itself within a second, so no orphan keeps the port and the lock. For a
PostgreSQL outbox there is no file lock: any number of workers and replicas share the database.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .config import BridgeConfig
from .errors import ConfigError
from .outbox_disk import LOCK_FD_ENV, lock_file

log = logging.getLogger("batchbridge.serve.workers")

#: a worker that dies sooner than this after its start counts as crash-looping: restarts slow down
CRASH_WINDOW = 5.0
#: the longest pause between restarts of a crash-looping worker, seconds
MAX_RESTART_DELAY = 10.0
#: most workers one serve runs
MAX_WORKERS = 64
#: connections the kernel queues on the shared socket before the workers accept them
LISTEN_BACKLOG = 1024


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening socket on ``host:port`` for the workers (inheritable); ``reuse_port``: one of a group
    on the same port (``SO_REUSEPORT``)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", where="serve.port") from None
    sock.set_inheritable(True)
    return sock


def spreads() -> bool:
    """Whether the kernel spreads a port's connections over ``SO_REUSEPORT`` sockets (Linux)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def bind_all(host: str, port: int, workers: int) -> list[socket.socket]:
    """The listening socket of each worker slot (see the module docstring): ``workers`` sockets in one
    ``SO_REUSEPORT`` group where the kernel spreads connections over them, else one shared by all."""
    if workers == 1 or not spreads():
        return [bind(host, port)]
    # a plain bind first: it fails on a port anything holds, whereas a SO_REUSEPORT bind would join
    # another same-user server's group on it and take half its connections
    probe = bind(host, port)
    port = probe.getsockname()[1]  # port 0: the group takes the port the probe was given
    probe.close()
    socks: list[socket.socket] = []
    try:
        for _ in range(workers):
            socks.append(bind(host, port, reuse_port=True))
    except ConfigError:
        for s in socks:
            s.close()
        raise
    return socks


def lock_outbox(path: Path) -> int:
    """The SQLite outbox's exclusive lock, held for the workers (see the module docstring)."""
    from .outbox import Outbox
    Outbox(path).close()  # created (or migrated) once, before N workers open it at once
    fd = lock_file(path)
    os.set_inheritable(fd, True)
    return fd


class _Child:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.quick_deaths = 0
        self.restart_at = 0.0


def supervise(config: BridgeConfig, worker_argv: Sequence[str], *, workers: int, host: str, port: int,
              on_bound: Callable[[], None] | None = None, env: dict[str, str] | None = None) -> int:
    """Bind, lock, run ``workers`` worker processes (``python -m batchbridge.core.cli`` + ``worker_argv``,
    to which ``--worker-socket FD`` is added) and keep them running until SIGTERM/SIGINT; the exit
    status: 0 after a clean stop."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"must be between 1 and {MAX_WORKERS}, got {workers}", where="--workers")
    lock_fd = None if config.outbox.url else lock_outbox(config.outbox.path)
    socks = bind_all(host, port, workers)
    child_env = {**os.environ, **(env or {})}
    if lock_fd is not None:
        child_env[LOCK_FD_ENV] = str(lock_fd)
    argv = [sys.executable, "-m", "batchbridge.core.cli", *worker_argv, "--worker-socket"]
    stop = threading.Event()
    children = [_Child(i) for i in range(workers)]

    def spawn(c: _Child) -> None:
        sock = socks[c.index % len(socks)]  # a restarted worker takes over its slot's socket and queue
        fds = (sock.fileno(),) if lock_fd is None else (sock.fileno(), lock_fd)
        c.proc = subprocess.Popen([*argv, str(sock.fileno())], pass_fds=fds, env=child_env)
        c.started = time.monotonic()
        log.info("worker %d started (pid %d)", c.index, c.proc.pid)

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for c in children:
            spawn(c)
        if on_bound is not None:
            on_bound()
        while not stop.wait(0.1):
            now = time.monotonic()
            for c in children:
                if c.proc is not None and c.proc.poll() is not None:
                    lived = now - c.started
                    c.quick_deaths = c.quick_deaths + 1 if lived < CRASH_WINDOW else 0
                    delay = 0.0 if c.quick_deaths <= 1 else min(MAX_RESTART_DELAY, 0.5 * 2 ** (c.quick_deaths - 2))
                    log.error("worker %d (pid %d) exited with %s after %.1fs; restarting it%s", c.index,
                              c.proc.pid, c.proc.returncode, lived, f" in {delay:.1f}s" if delay else "")
                    c.proc = None
                    c.restart_at = now + delay
                if c.proc is None and now >= c.restart_at:
                    spawn(c)
        for c in children:
            if c.proc is not None and c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + config.serve.drain_timeout + 15
        for c in children:
            if c.proc is not None:
                try:
                    c.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.error("worker %d did not stop in time; killing it (its rows stay in the outbox)", c.index)
                    c.proc.kill()
                    c.proc.wait()
        return 0
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        for sock in socks:
            sock.close()
        if lock_fd is not None:
            os.close(lock_fd)


def stop_with_supervisor(poll: float = 1.0) -> None:
    """In a worker: once the supervisor is gone (SIGKILLed, say), stop as on SIGTERM -- drain and exit --
    rather than keep its port and outbox lock as an orphan that a new ``serve`` could not replace."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        log.error("the serve supervisor (pid %d) is gone; this worker stops", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="batchbridge-supervisor-watch", daemon=True).start()
