"""``serve`` under connection exhaustion and heavy bodies, as a real process (``batchbridge serve`` with a
1,024 file-descriptor limit set in its preexec) reached over raw sockets and httpx: idle and slow-header
connections do not starve genuine pushes or ``/healthz``; bodies over the events cap get 413; big bodies
are decoded off the event loop (small pushes keep a p99 under 200 ms) and RSS comes back afterwards."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from fault_tools import free_port, rss_kib
from vendor_payloads import compact, tencent_element, tencent_message

FD_LIMIT = 1024


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


class Served:
    def __init__(self, tmp_path: Path, outbox: str = "", routes: str = "", **serve: object) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        conf = "\n".join(f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in serve.items())
        cfg = tmp_path / "bridge.toml"
        # no routes unless given: events are decoded and dropped; the subject is intake, not publishing
        cfg.write_text(f'[outbox]\npath = "{tmp_path / "outbox.db"}"\nsynchronous = "normal"\n{outbox}\n'
                       f'[serve]\n{conf}\n{routes}\n')
        self.log_path = tmp_path / "serve.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "batchbridge.core.cli", "serve", "--config", str(cfg),
                                      "--port", str(self.port)], stdout=self._log, stderr=self._log,
                                     preexec_fn=_limit_fds)
        end = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None, self.log()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < end, self.log()
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(tmp_path)
    yield s
    s.stop()


def payload(n: int, tag: str = "p") -> bytes:
    return compact(tencent_message(*(tencent_element("JOB_RUNNING", JobId=f"job-{tag}-{i}") for i in range(n))))


@pytest.mark.solo  # times pushes and RSS: run alone (tests/conftest.py)
def test_idle_and_slow_header_connections_do_not_starve_genuine_pushes(served: Served) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 4096:
        pytest.skip(f"this test needs ~2,000 descriptors of its own (hard limit {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held: list[socket.socket] = []
    try:
        for _ in range(1000):  # idle: connect, send nothing
            held.append(socket.create_connection(("127.0.0.1", served.port)))
        for _ in range(500):  # slow headers: half a request head, then silence
            s = socket.create_connection(("127.0.0.1", served.port))
            s.sendall(b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
            held.append(s)
        body = payload(1, "genuine")
        slowest = 0.0
        with httpx.Client(base_url=served.url, timeout=5) as client:
            timings = []
            for _ in range(20):
                started = time.monotonic()
                assert client.get("/healthz").status_code == 200
                mid = time.monotonic()
                r = client.post("/events", content=body, headers={"Connection": "close"})
                assert r.status_code == 204, r.text
                timings.append((mid - started, time.monotonic() - mid))
            slowest = max(max(t) for t in timings)
        assert slowest < 1.0, timings
        assert served.proc.poll() is None
    finally:
        for s in held:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    log = served.log()
    assert "Too many open files" not in log and len(log) < 64 * 1024, log[-2000:]
    print(f"\n[limits] 1000 idle + 500 slow-header connections, fd limit {FD_LIMIT}: slowest genuine "
          f"healthz+push {slowest * 1000:.0f} ms")


def _answer_to(tmp_path: Path, request: bytes, **serve: object) -> tuple[bytes, float]:
    """What a fresh ``serve`` answers to a request that stops part-way, and after how long."""
    s = Served(tmp_path, **serve)
    try:
        with socket.create_connection(("127.0.0.1", s.port)) as sock:
            sock.sendall(request)
            sock.settimeout(5)
            started = time.monotonic()
            first = sock.recv(4096)
            took = time.monotonic() - started
            answer = first
            while first:  # the rest, until the server closes
                first = sock.recv(4096)
                answer += first
            return answer, took
    finally:
        s.stop()


def test_a_head_that_never_completes_is_closed_after_header_timeout(tmp_path: Path) -> None:
    answer, took = _answer_to(tmp_path, b"POST /events HTTP/1.1\r\nHost: x\r\n", header_timeout=0.5)
    assert answer == b"" and 0.3 < took < 3  # closed by the server


def test_a_body_that_trickles_gets_408_after_body_timeout(tmp_path: Path) -> None:
    answer, took = _answer_to(tmp_path, b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
                              body_timeout=0.5)
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer, answer
    assert 0.3 < took < 3


def test_events_cap_413_names_count_and_cap(tmp_path: Path) -> None:
    s = Served(tmp_path, max_events=100)
    try:
        r = httpx.post(s.url + "/events", content=payload(101), timeout=10)
        assert r.status_code == 413
        assert r.json()["error"] == "too_many_events" and "101 events" in r.json()["reason"] \
            and "at most 100" in r.json()["reason"]
        assert httpx.post(s.url + "/events", content=payload(100), timeout=10).status_code == 204
    finally:
        s.stop()


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (from any of its threads)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _decoder(served: Served) -> int:
    """The pid of serve's decoding process (started before serve answers)."""
    children = _children(served.proc.pid)
    assert len(children) == 1 and b"intake_process" in Path(f"/proc/{children[0]}/cmdline").read_bytes(), children
    return children[0]


def _new_decoder(served: Served, old: int) -> int:
    end = time.monotonic() + 30
    while _children(served.proc.pid) in ([], [old]):
        assert time.monotonic() < end, "no new decoding process"
        time.sleep(0.05)
    return _decoder(served)


@pytest.mark.solo  # times pushes and RSS: run alone (tests/conftest.py)
@pytest.mark.parametrize("route", [False, True], ids=["no-route", "file-route"])
def test_big_bodies_do_not_stall_small_pushes_and_memory_comes_back(tmp_path: Path, route: bool) -> None:
    """Without a route (intake alone) and with a ``file://`` route, as every deployment has one: then
    the rows are also committed and published while the burst goes on, and what the file receives is
    the events' canonical bytes, once each."""
    events = tmp_path / "events.jsonl"
    served = Served(tmp_path, routes=f'[[routes]]\nto = ["file://{events}"]\n' if route else "")
    try:
        warm = _big_bodies_while_small_pushes(served, warm_bodies=4 if route else 1)
        if route:
            _published_once_each_as_stored(served, events, bodies=warm + 12)
    finally:
        served.stop()


def _published_once_each_as_stored(served: Served, events: Path, bodies: int) -> None:
    """Every body's events in the file, byte for byte their canonical serialisation: the decoding
    process's bytes went through the outbox and out as they were."""
    from batchbridge.core.bridge import decode_payload

    big = [orjson.dumps(e) for e in decode_payload(payload(2800, "big"))]
    small = orjson.dumps(decode_payload(payload(1, "small"))[0])
    end = time.monotonic() + 30
    while len(lines := events.read_bytes().splitlines()) < bodies * 2800 and time.monotonic() < end:
        time.sleep(0.1)
    # the same big body ``bodies`` times (warm-up and burst), each of its events once per body; small pushes
    assert Counter(lines) == Counter({**{b: bodies for b in big}, small: len(lines) - bodies * 2800}), len(lines)
    assert httpx.get(served.url + "/healthz").json()["outbox_depth"] == 0


def _rss_at_rest(served: Served) -> int:
    """serve's RSS once it is at rest: its outbox delivered (with a route, the rows of a burst take
    seconds to publish, and memory in use for them is not memory that did not come back) and its
    quiet-time heap trim done (it runs once a second while a burst drains: RSS stops falling). Sampled
    right after a burst instead, both figures raced the delivery and the trim: the warmed-up baseline
    came out 47-55 MiB, and "after" was read with 7,000-12,000 rows still to publish."""
    end = time.monotonic() + 60
    while httpx.get(served.url + "/healthz", timeout=5).json()["outbox_depth"] != 0:
        assert time.monotonic() < end, "the outbox did not drain"
        time.sleep(0.1)
    rss, steady = rss_kib(served.proc.pid), 0
    while steady < 3:  # the same to within 1 % for three looks, 0.5 s apart (the trim is once a second)
        assert time.monotonic() < end, "RSS did not settle"
        time.sleep(0.5)
        now = rss_kib(served.proc.pid)
        steady = steady + 1 if abs(now - rss) <= rss // 100 else 0
        rss = now
    return rss


def _big_bodies_while_small_pushes(served: Served, warm_bodies: int) -> int:
    """The burst; ``warm_bodies`` big bodies at once warm the process up first. Returns that number.

    Without a route one warm-up body is enough. With one, the rows of big bodies sent at once are also
    read back and published by the delivery threads, and glibc keeps the heap those threads grew to
    (measured at rest, one warm-up body: 46 MiB, after the burst 57-60 MiB, 1.24-1.29x, in three
    per-thread arenas): the baseline is then a process that has handled one burst of that shape,
    and the bound asserts that three more do not leave it bigger."""
    big = payload(2800, "big")  # ~0.95 MB: just under the default body limit of 1 MiB
    assert len(big) < 1024 * 1024
    small = payload(1, "small")
    decoder = _decoder(served)

    def warm_sender() -> None:
        with httpx.Client(base_url=served.url, timeout=60) as c:
            assert c.post("/events", content=big).status_code == 204

    # warm up: the baseline is a process that has served both kinds (its threads, its caches, the code
    # it runs and its connection to the decoding process are then in memory)
    warmers = [threading.Thread(target=warm_sender) for _ in range(warm_bodies)]
    for t in warmers:
        t.start()
    for t in warmers:
        t.join()
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for _ in range(20):
            assert client.post("/events", content=small).status_code == 204
    baseline = _rss_at_rest(served)
    latencies: list[float] = []
    big_statuses: list[int] = []

    def big_sender() -> None:
        with httpx.Client(base_url=served.url, timeout=60) as c:
            for _ in range(3):
                big_statuses.append(c.post("/events", content=big).status_code)

    senders = [threading.Thread(target=big_sender) for _ in range(4)]
    for t in senders:
        t.start()
    with httpx.Client(base_url=served.url, timeout=30) as client:
        while any(t.is_alive() for t in senders):
            started = time.monotonic()
            assert client.post("/events", content=small).status_code == 204
            latencies.append(time.monotonic() - started)
            time.sleep(0.01)
    for t in senders:
        t.join()
    assert big_statuses == [204] * 12
    assert _children(served.proc.pid) == [decoder]  # the same process decoded them all
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 2 else latencies[0]
    bound = baseline * 1.2
    after = _rss_at_rest(served)
    print(f"\n[limits] 4 x 3 bodies of 2,800 events ({len(big) // 1024} KiB): {len(latencies)} small pushes, "
          f"p99 {p99 * 1000:.0f} ms; RSS baseline {baseline // 1024} MiB, after {after // 1024} MiB "
          f"({after / baseline:.2f}x); decoding process {rss_kib(decoder) // 1024} MiB")
    # a stall guard, not the latency target: before big bodies went off the loop one stalled every
    # request for 0.6-0.8 s and four stalled /healthz for 12 s. The 200 ms p99 target is judged by
    # benchmarks/bench_serve_limits.py on a quiet machine, not by a timed unit test after the rest of the suite
    assert p99 < 1.0, p99
    assert after <= bound, (baseline, after)
    return warm_bodies


def test_big_bodies_still_decode_when_the_decoding_process_dies(tmp_path: Path) -> None:
    s = Served(tmp_path, max_events=1000)
    try:
        first = _decoder(s)
        with httpx.Client(base_url=s.url, timeout=30) as client:
            assert client.post("/events", content=payload(1500, "over")).status_code == 413  # planned there
            os.kill(first, signal.SIGKILL)
            # the next big bodies are decoded on a thread of the server, and a new process is started
            r = client.post("/events", content=payload(1500, "over"))
            assert r.status_code == 413 and "1500 events" in r.json()["reason"], r.text
            assert client.post("/events", content=payload(900, "fits")).status_code == 204
            second = _new_decoder(s, first)
            assert second != first
            garbage = b'{"not": "an envelope", "pad": "' + b"x" * 200_000 + b'"}'
            r = client.post("/events", content=garbage)
            assert r.status_code == 400 and r.json()["error"] == "unrecognized_format", r.text
            assert client.post("/events", content=payload(900, "again")).status_code == 204
        assert _children(s.proc.pid) == [second]
    finally:
        s.stop()
    assert "the decoding process is gone" in s.log()
    assert not Path(f"/proc/{second}").exists()  # ended with serve (its pipe closed), not left behind


def test_a_full_dead_letter_store_refuses_bad_input_unkept_and_takes_good(tmp_path: Path) -> None:
    s = Served(tmp_path, outbox="dead_letter_max_rows = 3")
    cfg = tmp_path / "bridge.toml"
    try:
        with httpx.Client(base_url=s.url, timeout=10) as client:
            statuses = [client.post("/events", content=b"garbage %d" % i).status_code for i in range(8)]
            assert statuses == [400] * 8
            assert client.post("/events", content=payload(1, "good")).status_code == 204
            metrics = client.get("/metrics").text
        assert 'batchbridge_payloads_rejected_unkept_total{error="malformed_payload"} 5.0' in metrics \
            or 'batchbridge_payloads_rejected_unkept_total{error="unrecognized_format"} 5.0' in metrics, metrics
        assert 'batchbridge_dead_lettered_total{stage="intake"} 3.0' in metrics
    finally:
        s.stop()
    listed = subprocess.run([sys.executable, "-m", "batchbridge.core.cli", "dlq", "list", "--config", str(cfg),
                             "--json"], capture_output=True, text=True, timeout=60, check=False)
    assert listed.returncode == 0, listed.stderr
    assert len([line for line in listed.stdout.splitlines() if line.strip()]) == 3, listed.stdout


def test_no_redirect_for_any_path_or_host(served: Served) -> None:
    paths = ["/events/", "/healthz/", "/metrics/", "/", "//evil.example/", "/events/aws/", "/events//",
             "/EVENTS", "/healthz/?token=x", "/events/tencent/x", "/%2e%2e/healthz", "/events/.."]
    seen = set()
    with httpx.Client(base_url=served.url, timeout=10, follow_redirects=False) as client:
        for path in paths:
            for method in ("GET", "POST", "HEAD"):
                for host in ("evil.example", "127.0.0.1", ""):
                    r = client.request(method, path, headers={"Host": host} if host else {}, content=b"{}"
                                       if method == "POST" else None)
                    assert not 300 <= r.status_code < 400 and "location" not in r.headers, (method, path, host)
                    seen.add(r.status_code)
    assert seen <= {200, 204, 400, 401, 404, 405}, seen

