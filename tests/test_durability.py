"""Nothing acknowledged is lost: a real backend outage, and a ``batchbridge serve`` process SIGKILLed
mid-stream. Both run the real CLI in a subprocess and post over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest
from aws_servers import free_port
from batchbridge.core.normalizing import normalize
from vendor_payloads import compact, tencent_element, tencent_message

if TYPE_CHECKING:
    from aws_servers import RestartableMoto


#: one queue per event type: moto's SQS slows down with queue depth, so 1,000 events are spread thin
NAMES = ("JOB_RUNNING", "JOB_SUCCEED", "JOB_FAILED", "TASK_RUNNING", "TASK_SUCCEED", "TASK_FAILED",
         "TASK_INSTANCE_SUCCEED", "TASK_INSTANCE_FAILED")


def payload(i: int) -> tuple[bytes, str]:
    body = compact(tencent_message(tencent_element(NAMES[i % len(NAMES)], JobId=f"job-{i:05d}",
                                                   TaskInstanceIndex=i)))
    return body, normalize(body)[0]["id"]


class ServeProcess:
    def __init__(self, config: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "batchbridge.core.cli", "serve", "--config", str(config), "--port",
             str(self.port)], stdout=self._log, stderr=self._log, env=dict(os.environ))
        end = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < end, "serve did not come up"
            time.sleep(0.05)

    def depth(self) -> int:
        return int(httpx.get(f"{self.url}/healthz", timeout=5).json()["outbox_depth"])

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._log.close()


@pytest.fixture
def procs() -> Iterator[list[ServeProcess]]:
    started: list[ServeProcess] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(10)


def write_config(tmp_path: Path, routes: list[tuple[str, str]]) -> Path:
    cfg = tmp_path / "bridge.toml"
    text = "".join(f'[[routes]]\nmatch = "{match}"\nto = "{to}"\n\n' for match, to in routes)
    cfg.write_text(text + f"""
[outbox]
path = "{tmp_path / 'outbox.db'}"
backoff_initial = 0.1
backoff_max = 1.0
""")
    return cfg


def post_all(url: str, items: list[tuple[bytes, str]], workers: int = 8) -> list[tuple[str, int]]:
    """Post every payload from ``workers`` threads; (event id, status) per request that got an answer."""
    local = threading.local()

    def one(item: tuple[bytes, str]) -> tuple[str, int]:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(base_url=url, timeout=30)
        try:
            return item[1], client.post("/events", content=item[0]).status_code
        except httpx.TransportError:
            return item[1], 0

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, items))


def test_backend_outage_1000_events_all_arrive(tmp_path: Path, moto_restartable: RestartableMoto,
                                               procs: list[ServeProcess]) -> None:
    aws = moto_restartable.server
    queues = [aws.queue() for _ in NAMES]
    # few client-side retries, so the outbox's own backoff is what rides out the outage
    routes = [(name, aws.uri("sqs", q.name, retries=1, max_attempts=1, connect_timeout=1))
              for name, q in zip(NAMES, queues, strict=True)]
    serve = ServeProcess(write_config(tmp_path, routes), tmp_path / "serve.log")
    procs.append(serve)
    moto_restartable.stop()  # the backend goes down: connections are refused

    items = [payload(i) for i in range(1000)]
    statuses = post_all(serve.url, items)
    assert [s for _, s in statuses] == [204] * 1000
    assert serve.depth() == 1000
    metrics = httpx.get(f"{serve.url}/metrics").text
    assert "batchbridge_publish_failures_total" in metrics

    moto_restartable.start()  # it comes back: everything arrives
    want = {eid for _, eid in items}
    got: dict[str, int] = {}
    end = time.monotonic() + 90
    with ThreadPoolExecutor(len(queues)) as pool:
        while set(got) != want:
            assert time.monotonic() < end, f"{len(want - set(got))} of 1000 events never arrived"
            for msgs in pool.map(lambda q: aws.receive_all(q, 1000, deadline=0.5), queues):
                for m in msgs:
                    eid = orjson.loads(m["Body"])["id"]
                    got[eid] = got.get(eid, 0) + 1
    assert set(got) == want
    end = time.monotonic() + 10
    while serve.depth() != 0:
        assert time.monotonic() < end
        time.sleep(0.1)
    assert serve.stop() == 0
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


def test_sigkill_mid_stream_loses_nothing_acknowledged(tmp_path: Path, procs: list[ServeProcess]) -> None:
    out = tmp_path / "events.jsonl"
    config = write_config(tmp_path, [("batch.*", out.as_uri())])
    serve = ServeProcess(config, tmp_path / "serve.log")
    procs.append(serve)
    items = [payload(i) for i in range(3000)]
    acked: list[str] = []
    lock = threading.Lock()

    def killer() -> None:
        while True:
            with lock:
                if len(acked) >= 400:
                    break
            time.sleep(0.001)
        serve.proc.send_signal(signal.SIGKILL)

    k = threading.Thread(target=killer)
    k.start()
    stop_posting = threading.Event()
    local = threading.local()

    def one(item: tuple[bytes, str]) -> None:
        if stop_posting.is_set():
            return
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(base_url=serve.url, timeout=10)
        try:
            status = client.post("/events", content=item[0]).status_code
        except httpx.TransportError:
            stop_posting.set()
            return
        if status == 204:
            with lock:
                acked.append(item[1])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, items))
    k.join(30)
    assert serve.proc.wait(10) == -signal.SIGKILL
    assert 400 <= len(acked) < len(items), "the kill did not land mid-stream"

    again = ServeProcess(config, tmp_path / "serve2.log")
    procs.append(again)
    want = set(acked)
    end = time.monotonic() + 60

    def delivered() -> list[dict[str, Any]]:
        events = []
        for n, line in enumerate(out.read_bytes().splitlines() if out.exists() else [], start=1):
            try:
                events.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                pytest.fail(f"line {n} of the file:// output is not one event (a write torn by the kill, then "
                            f"appended to): {line[:120]!r}...")
        return events

    while not want <= {e["id"] for e in delivered()}:
        assert time.monotonic() < end, f"{len(want - {e['id'] for e in delivered()})} acknowledged events lost"
        time.sleep(0.1)
    events = delivered()
    posted = {eid for _, eid in items}
    bodies: dict[str, dict[str, Any]] = {}
    for e in events:
        assert e["id"] in posted
        # a duplicate (published, then killed before the row was deleted) is the same event, same id
        assert bodies.setdefault(e["id"], e) == e
    assert again.stop() == 0
