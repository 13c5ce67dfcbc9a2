"""``serve --workers N``: N processes on one host, one port, one outbox.

A **supervisor** process (this module's :func:`supervise`) does three things and nothing else:

* it binds the listening socket once and hands it to every worker (inherited descriptor): all of them
  accept on the one port, the kernel spreads the connections -- what uvicorn's own ``--workers``
  does, with our workers instead of uvicorn's;
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


def bind(host: str, port: int) -> socket.socket:
    """The listening socket every worker accepts on (inheritable)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", where="serve.port") from None
    sock.set_inheritable(True)
    return sock


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
    sock = bind(host, port)
    child_env = {**os.environ, **(env or {})}
    if lock_fd is not None:
        child_env[LOCK_FD_ENV] = str(lock_fd)
    fds = (sock.fileno(),) if lock_fd is None else (sock.fileno(), lock_fd)
    argv = [sys.executable, "-m", "batchbridge.core.cli", *worker_argv, "--worker-socket", str(sock.fileno())]
    stop = threading.Event()
    children = [_Child(i) for i in range(workers)]

    def spawn(c: _Child) -> None:
        c.proc = subprocess.Popen(argv, pass_fds=fds, env=child_env)
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
