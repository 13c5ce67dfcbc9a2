"""A process of its own that decodes and routes the big bodies ``serve`` receives.

Decoding a body of thousands of events takes a CPU for a tenth of a second or more. On a thread of the
server it holds the GIL against the event loop (small requests wait behind it), and it leaves the
server's heap fragmented: pymalloc frees an arena only when every object in it is gone, and a burst of
big decodes scatters a few long-lived objects over the arenas it added, so RSS stays near its peak. In
a process of its own, the decode's garbage never enters the server's heap and the server's GIL is
free; the server only unpickles the plan -- the rows as the bytes the outbox stores, and what the
state store observes of each event, never the events themselves -- a fraction of the decode's cost.

The process is ``python -m batchbridge.core.intake_process`` on pipes (not multiprocessing, whose
children re-import the parent's ``__main__``: a script calling ``serve()`` unguarded would recurse). It
builds the router from the same config and plans one body at a time. If it cannot be started or dies,
bodies are decoded on a thread as before (:meth:`Bridge.ahandle`) and it is started again for the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import IO, Any

from .bridge import Planned, _Intake, plan_intake
from .config import BridgeConfig
from .errors import InputError
from .outbox_rows import OutboxRow, row_key
from .routing import Router
from .state import Observation
from .supersede import Candidate

log = logging.getLogger("batchbridge.serve")

#: what a decoder answers: the plan, the typed error for bad input, or None (decode it here instead)
#: events per piece of a plan sent back (see ``_send``)
PIECE = 200
#: how much lower the decoding process's CPU priority is than the server's
NICE = 10
#: how long the process may take to start (import, router) before bodies go to a thread
START_TIMEOUT = 60.0


def _plan(router: Router, request: tuple[bytes, str, str | None, Mapping[str, str] | None, int | None]) -> Planned:
    raw, source, provider, attributes, max_events = request
    try:
        return plan_intake(router, raw, source=source, provider=provider, attributes=attributes,
                           max_events=max_events)
    except InputError as exc:
        return exc
    except Exception:
        return None  # a decoder bug: the server decodes it again, and logs and keeps it as a DecoderFailure


def _child(inp: IO[bytes], out: IO[bytes]) -> None:
    """The loop of the decoding process: a config, then requests, each answered by its plan."""
    router = Router.from_config(pickle.load(inp))
    pickle.dump(True, out)
    out.flush()
    while True:
        try:
            request = pickle.load(inp)
        except EOFError:
            return  # the server closed the pipe: it is stopping
        _send(_plan(router, request), out)
        out.flush()


def _send(planned: Planned, out: IO[bytes]) -> None:
    """The plan, its events in pieces of PIECE: one ``pickle.load`` holds the GIL from start to end, so
    the server unpickles a body of thousands of events piece by piece, letting its event loop in
    between (measured: one load of 2,800 events, 10-30 ms; a piece, well under 1 ms).

    Each event goes as plain tuples: its observation and its rows as bytes ready for the outbox, each
    with its ordering key -- never the parsed event. The server then holds no event objects for a big
    body (their unpickling was most of its cost, and a burst of them left its heap fragmented: measured
    at 2,800 events, 5.8 MB pickled and ~100 ms to load with the events, see ``docs/reliability.md``),
    and delivery reads the events from the stored bytes as it does after a restart."""
    gated = planned.gated if isinstance(planned, _Intake) else None
    if not gated:
        pickle.dump((planned, 0), out, protocol=pickle.HIGHEST_PROTOCOL)
        return
    assert isinstance(planned, _Intake)
    planned.gated = None
    pieces = range(0, len(gated), PIECE)
    pickle.dump((planned, len(pieces)), out, protocol=pickle.HIGHEST_PROTOCOL)
    for start in pieces:
        pickle.dump([_flat(o, c) for o, c in gated[start:start + PIECE]], out, protocol=pickle.HIGHEST_PROTOCOL)


_OBSERVED = tuple(f.name for f in dataclasses.fields(Observation))
#: one event of a plan on the wire: its observation's fields (or None), and per row: destination,
#: event id, event type, body, ordering key, and the supersede policy (label, stale_to, retention)
FlatRow = tuple[str, str | None, str | None, bytes, str, str | None, str | None, float]
Flat = tuple[tuple[Any, ...] | None, list[FlatRow]]


def _flat(observation: Observation | None, candidates: list[Candidate]) -> Flat:
    o = None if observation is None else tuple(getattr(observation, n) for n in _OBSERVED)
    return o, [(c.row.destination, c.row.event_id, c.row.event_type, c.row.body, row_key(c.row), c.supersede,
                c.stale_to, c.retention) for c in candidates]


def _unflat(flat: Flat) -> tuple[Observation | None, list[Candidate]]:
    o, rows = flat
    return (None if o is None else Observation(*o),
            [Candidate(OutboxRow(d, i, t, body, None, key), label, stale_to, retention)
             for d, i, t, body, key, label, stale_to, retention in rows])


def _receive(inp: IO[bytes]) -> Planned:
    planned, pieces = pickle.load(inp)
    if pieces:
        gated: list[tuple[Observation | None, list[Candidate]]] = []
        for _ in range(pieces):
            gated += [_unflat(f) for f in pickle.load(inp)]
        planned.gated = gated
    return planned  # type: ignore[no-any-return]


class DecodingProcess:
    """The decoding process for :meth:`Bridge.ahandle` (set it as ``bridge.decoder``); one body at a time."""

    def __init__(self, config: BridgeConfig) -> None:
        self._config = config
        self._proc: subprocess.Popen[bytes] | None = None
        #: held while a request is in the pipes (and while starting)
        self._lock = threading.Lock()
        self._closed = False
        self._starting = False

    def start(self) -> bool:
        """Start the process and wait until it can plan; False (logged) when it cannot."""
        with self._lock:
            return self._start_locked()

    def _start_locked(self) -> bool:
        if self._closed:
            return False
        if self._proc is not None:
            return True
        proc = None
        try:
            proc = subprocess.Popen([sys.executable, "-m", "batchbridge.core.intake_process"],
                                    # serve's session (not a new one), so the kernel's autogroup
                                    # scheduling shares serve's CPU with it, where NICE applies
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
            assert proc.stdin is not None and proc.stdout is not None
            pickle.dump(self._config, proc.stdin)
            proc.stdin.flush()
            timer = threading.Timer(START_TIMEOUT, proc.kill)
            timer.start()
            try:
                ready = pickle.load(proc.stdout)
            finally:
                timer.cancel()
            if ready is not True:
                raise RuntimeError(f"unexpected answer {ready!r}")
        except Exception as exc:
            log.warning("big bodies are decoded on a thread of the server: the decoding process did not start "
                        "(%s: %s)", type(exc).__name__, exc)
            if proc is not None:
                _end(proc)
            return False
        self._proc = proc
        return True

    async def plan(self, raw: bytes, *, source: str, provider: str | None, attributes: Mapping[str, str] | None,
                   max_events: int | None) -> Planned:
        if self._proc is None:
            if not self._closed and not self._starting:
                # started again off the loop (after a crash); this body goes to a thread meanwhile
                self._starting = True
                threading.Thread(target=self._restart, name="batchbridge-decoder-start", daemon=True).start()
            return None
        request = (raw, source, provider, dict(attributes) if attributes else None, max_events)
        return await asyncio.to_thread(self._roundtrip, request)

    def _restart(self) -> None:
        try:
            self.start()
        finally:
            self._starting = False

    def _roundtrip(self, request: tuple[Any, ...]) -> Planned:
        with self._lock:
            proc = self._proc
            if proc is None:
                return None
            assert proc.stdin is not None and proc.stdout is not None
            try:
                pickle.dump(request, proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                proc.stdin.flush()
                return _receive(proc.stdout)
            except (OSError, EOFError, pickle.UnpicklingError) as exc:
                log.warning("the decoding process is gone (%s); this body is decoded on a thread", type(exc).__name__)
                self._proc = None
                _end(proc)
                return None

    def pid(self) -> int | None:
        """The decoding process's id while it runs (for its RSS)."""
        proc = self._proc
        return proc.pid if proc is not None else None

    def close(self) -> None:
        self._closed = True
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None:
            _end(proc)


def _end(proc: subprocess.Popen[bytes]) -> None:
    for pipe in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError):
            if pipe is not None:
                pipe.close()
    try:
        proc.wait(5)  # it ends at EOF on its input
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


if __name__ == "__main__":
    # it ends when serve closes the pipe (or dies): Ctrl-C on serve's terminal, or a SIGTERM to serve's
    # whole group or cgroup, must not take it away while serve still drains
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    # a big body may wait; the small requests the server answers meanwhile should not (when CPUs are short)
    with contextlib.suppress(OSError):
        os.nice(NICE)
    # the pipes are the protocol: nothing else may write to stdout
    _out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    _child(sys.stdin.buffer, _out)
