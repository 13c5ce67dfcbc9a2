"""Process faults: ``serve`` and ``relay`` SIGKILLed at random points, a full disk under the outbox, and a
damaged outbox file at start.

* SIGKILL: each run kills the real CLI process at a random moment while events flow, starts it
  again on the same outbox, and checks that everything acknowledged (an HTTP 204; a source message
  deleted) reaches the destination -- duplicates allowed only as the same event with the same id.
  3 runs each by default; ``BATCHBRIDGE_FAULTS_RUNS=N`` (or ``-m faults``: 25) for more.
  ``BATCHBRIDGE_FAULTS_SEED`` replays a sequence of kill points.
* Disk full: the outbox on a small tmpfs (``mount -t tmpfs -o size=...``; where mounting is not
  allowed, SQLite's ``max_page_count`` makes the file "full" instead) with the backend down: intake
  answers 503 with ``outbox_error`` and a reason that names the full disk, never 204 for what it
  cannot keep; once the backend is back the outbox drains and intake accepts again.
* Damage: a corrupted outbox stops ``serve``, ``relay`` and ``dlq`` at start with a one-line typed
  error (exit 2), no traceback.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest
from batchbridge.core.bridge import Bridge
from batchbridge.core.config import config_from_dict
from batchbridge.core.errors import BatchBridgeError
from batchbridge.core.outbox import Outbox, OutboxError, OutboxRow
from batchbridge.core.serve import create_app
from fault_tools import (
    Arrivals,
    CliProcess,
    Figures,
    ServeProcess,
    canonical_events,
    full_run,
    processes,
    record,
    tencent_payloads,
    wait_until,
)
from uvicorn_thread import run_uvicorn

if TYPE_CHECKING:
    from aws_servers import AwsServer, RestartableMoto

# bounded by default; `pytest -m faults` (or BATCHBRIDGE_FAULTS_FULL=1) runs the full-size experiments
pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]


def runs(config: pytest.Config) -> int:
    explicit = os.environ.get("BATCHBRIDGE_FAULTS_RUNS")
    if explicit:
        return max(1, int(explicit))
    return 25 if full_run(config) else 3


def rng_for(name: str) -> tuple[random.Random, int]:
    seed = int(os.environ.get("BATCHBRIDGE_FAULTS_SEED") or random.SystemRandom().randrange(1 << 30))
    return random.Random(f"{name}-{seed}"), seed


def read_events(path: Path) -> list[dict[str, Any]]:
    """The file:// destination's events; a line that is not one whole event fails the test."""
    if not path.exists():
        return []
    out = []
    for n, line in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            pytest.fail(f"line {n} of {path.name} is not one event (a torn write): {line[:100]!r}")
    return out


def file_arrivals(path: Path) -> Arrivals:
    arrivals = Arrivals()
    for e in read_events(path):
        arrivals.add(orjson.dumps(e))
    return arrivals


def serve_config(tmp: Path, to: str, **outbox: Any) -> Path:
    cfg = tmp / "bridge.toml"
    extra = "".join(f"{k} = {v!r}\n" for k, v in outbox.items())
    cfg.write_text(f'[[routes]]\nto = "{to}"\n\n[outbox]\npath = "{tmp / "outbox.db"}"\nbackoff_initial = 0.05\n'
                   f"backoff_max = 0.5\n{extra}")
    return cfg


# --- SIGKILL of serve ----------------------------------------------------------------------------------


def post_until_killed(url: str, items: list[tuple[bytes, str]], kill: threading.Event) -> tuple[list[str], int]:
    """Post from 8 threads until the server goes away; (ids answered 204, requests answered otherwise)."""
    acked: list[str] = []
    other = 0
    lock = threading.Lock()
    local = threading.local()
    gone = threading.Event()

    def one(item: tuple[bytes, str]) -> None:
        nonlocal other
        if gone.is_set():
            return
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(base_url=url, timeout=10)
        try:
            status = client.post("/events", content=item[0]).status_code
        except httpx.TransportError:
            gone.set()  # the process is dead: a sender would retry these later
            return
        with lock:
            if status == 204:
                acked.append(item[1])
            else:
                other += 1

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, items))
    return acked, other


@pytest.mark.solo  # its kills and refusals are timed against a serve under load: run alone
def test_sigkill_serve_at_random_points(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    rng, seed = rng_for("serve")
    total = Figures("SIGKILL of serve at random points", "file://", "", 0, 0, 0, 0, extra={"seed": seed})
    recoveries: list[float] = []
    n_runs = runs(request.config)
    for run in range(n_runs):
        tmp = tmp_path / f"run{run}"
        tmp.mkdir()
        out = tmp / "events.jsonl"
        cfg = serve_config(tmp, out.as_uri())
        items = tencent_payloads(1500, tag=f"s{run}-")
        delay = rng.uniform(0.05, 1.5)
        with processes() as procs:
            serve = ServeProcess(cfg, tmp / "serve.log")
            procs.append(serve)
            kill = threading.Event()
            killer = threading.Timer(delay, lambda s=serve: s.signal(signal.SIGKILL))
            killer.start()
            acked, _ = post_until_killed(serve.url, items, kill)
            killer.join()
            assert serve.wait(10) == -signal.SIGKILL
            restarted = time.monotonic()
            again = ServeProcess(cfg, tmp / "serve2.log")
            procs.append(again)
            arrivals = Arrivals()
            wait_until(lambda o=out, a=acked: set(a) <= {e["id"] for e in read_events(o)}, 60,
                       what=f"run {run}: every acknowledged event delivered after the restart")
            recoveries.append(time.monotonic() - restarted)
            again.signal(signal.SIGTERM)
            assert again.wait(30) == 0
            arrivals = file_arrivals(out)
            delivered, lost, dups = arrivals.figures(acked)
            assert lost == 0 and arrivals.inconsistent_duplicates() == []
            posted = {eid for _, eid in items}
            assert arrivals.ids() <= posted
            for log in ("serve.log", "serve2.log"):
                assert "Traceback" not in (tmp / log).read_text()
        total.sent += len(acked)
        total.delivered += delivered
        total.lost += lost
        total.duplicates += dups
    total.fault = f"{n_runs} runs, SIGKILL 0.05-1.5s into a stream of 8 concurrent posters"
    total.recovery_s = max(recoveries)
    total.extra["recovery_note"] = "max over runs, from the restart (startup included)"
    record(total, request.config)
    assert total.lost == 0 and total.sent > 0


def test_sigterm_serve_drains_what_it_acknowledged(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    cfg = serve_config(tmp_path, out.as_uri())
    items = tencent_payloads(1500, tag="term-")
    with processes() as procs:
        serve = ServeProcess(cfg, tmp_path / "serve.log")
        procs.append(serve)
        stopper = threading.Timer(0.8, lambda: serve.signal(signal.SIGTERM))
        stopper.start()
        acked, other = post_until_killed(serve.url, items, threading.Event())
        stopper.join()
        assert serve.wait(30) == 0, serve.log()
        # drained before exiting: nothing acknowledged waits for a restart
        arrivals = file_arrivals(out)
        delivered, lost, dups = arrivals.figures(acked)
        with Outbox(tmp_path / "outbox.db") as ob:
            left = ob.depth()
    record(Figures("SIGTERM of serve mid-stream", "file://", "SIGTERM 0.8s into a stream of 8 posters",
                   len(acked), delivered, lost, dups, extra={"outbox_left": left, "not_acknowledged": other}),
           request.config)
    assert lost == 0 and left == 0 and acked
    assert "Traceback" not in serve.log()


# --- SIGKILL of relay -----------------------------------------------------------------------------------


def load_queue(aws: AwsServer, url: str, bodies: list[bytes]) -> None:
    sqs = aws.client("sqs")
    for i in range(0, len(bodies), 10):
        sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(j), "MessageBody": b.decode()} for j, b in enumerate(bodies[i:i + 10])])


def queue_depth(aws: AwsServer, url: str) -> int:
    a = aws.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])


def relay_args(tmp: Path, source: str, out: Path) -> list[str]:
    return ["relay", "--from", source, "--to", out.as_uri(), "--outbox", str(tmp / "outbox.db"),
            "--drain-timeout", "10"]


def test_sigkill_relay_at_random_points(request: pytest.FixtureRequest, tmp_path: Path,
                                        moto_server: AwsServer) -> None:
    rng, seed = rng_for("relay")
    n_runs = runs(request.config)
    per_run = 120
    total = Figures("SIGKILL of relay at random points", "sqs (moto) -> file://", "", 0, 0, 0, 0,
                    extra={"seed": seed})
    recoveries = []
    for run in range(n_runs):
        tmp = tmp_path / f"run{run}"
        tmp.mkdir()
        out = tmp / "events.jsonl"
        queue = moto_server.queue()
        # half vendor payloads, half canonical events (a queue the bridge itself feeds)
        payloads = tencent_payloads(per_run // 2, tag=f"r{run}-")
        canon = canonical_events(per_run // 2, tag=f"rc{run}-")
        bodies = [b for b, _ in payloads] + [orjson.dumps(e) for e in canon]
        rng.shuffle(bodies)
        sent = [eid for _, eid in payloads] + [e["id"] for e in canon]
        load_queue(moto_server, queue.url, bodies)
        source = moto_server.uri("sqs", queue.name, visibility_timeout=2, wait_time_seconds=1)
        kills = rng.randint(1, 2)
        with processes() as procs:
            for k in range(kills):
                relay = CliProcess([*relay_args(tmp, source, out), "--batch", str(rng.choice([1, 5, 10]))],
                                   tmp / f"relay{k}.log")
                procs.append(relay)
                time.sleep(rng.uniform(0.3, 1.8))
                assert relay.kill() == -signal.SIGKILL, relay.log()
            restarted = time.monotonic()
            final = CliProcess(relay_args(tmp, source, out), tmp / "relay-final.log")
            procs.append(final)
            wait_until(lambda o=out, s=sent: set(s) <= {e["id"] for e in read_events(o)}, 90,
                       what=f"run {run}: every source message delivered after {kills} kills")
            recoveries.append(time.monotonic() - restarted)
            # a message a killed relay had committed but not acknowledged comes back once its visibility
            # timeout ends; the final relay takes it too (a duplicate with the same id) before it stops
            wait_until(lambda q=queue.url: queue_depth(moto_server, q) == 0, 30, what="an empty source queue")
            # a SIGTERM before the relay installed its handler would just end it (nothing was taken yet)
            wait_until(lambda f=final: "SIGTERM to stop" in f.log(), 30, what="the relay to run")
            final.signal(signal.SIGTERM)
            assert final.wait(60) == 0, final.log()
            assert "Traceback" not in final.log()
        arrivals = file_arrivals(out)
        delivered, lost, dups = arrivals.figures(sent)
        assert lost == 0 and arrivals.inconsistent_duplicates() == []
        with Outbox(tmp / "outbox.db") as ob:
            assert ob.dead_letter_count() == 0 and ob.depth() == 0
        total.sent += len(sent)
        total.delivered += delivered
        total.duplicates += dups
    total.fault = f"{n_runs} runs, 1-2 SIGKILLs each 0.3-1.8s after start (visibility timeout 2s)"
    total.recovery_s = max(recoveries)
    total.extra["recovery_note"] = "max over runs, from the last restart until all delivered"
    record(total, request.config)


# --- disk full ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(base: Path, size: str) -> Iterator[Path | None]:
    """A tmpfs of ``size`` mounted at ``base/disk``; None where mounting is not allowed."""
    mnt = base / "disk"
    mnt.mkdir()
    if shutil.which("mount") is None or os.environ.get("BATCHBRIDGE_FAULTS_NO_MOUNT") == "1":
        yield None
        return
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mnt)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        yield None
        return
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


class CappedOutbox(Outbox):
    """Where no small filesystem can be mounted: SQLite's own ``max_page_count`` makes the file full
    (SQLITE_FULL, the same error a full disk gives)."""

    pages = 250

    def _connect(self, synchronous: str) -> Any:
        conn = super()._connect(synchronous)
        conn.execute(f"PRAGMA max_page_count = {self.pages}")
        return conn


@pytest.mark.solo  # its kills and refusals are timed against a serve under load: run alone
def test_disk_full_refuses_with_503_and_recovers(request: pytest.FixtureRequest, tmp_path: Path,
                                                  moto_restartable: RestartableMoto,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    aws = moto_restartable.server
    queue = aws.queue()
    uri = aws.uri("sqs", queue.name, max_attempts=1, connect_timeout=0.5, retries=1)
    with small_disk(tmp_path, "4m") as disk:
        if disk is not None:
            outbox = Outbox(disk / "outbox.db", reserve_bytes=1024 * 1024)
            how = "tmpfs of 4 MiB, reserve 1 MiB"
        else:
            outbox = CappedOutbox(tmp_path / "outbox.db")
            how = f"max_page_count={CappedOutbox.pages} (no mount permission)"
        config = config_from_dict({"routes": [{"to": uri}],
                                   "outbox": {"path": str(outbox.path), "backoff_initial": 0.05,
                                              "backoff_max": 0.5}})
        bridge = Bridge(config, outbox=outbox)
        moto_restartable.stop()  # the backend is down: the outbox only grows
        url, stop = run_uvicorn(create_app(bridge))
        try:
            # the disk fills after a few hundred events; made up front, so that they are posted back to back
            items = tencent_payloads(2000, tag="full-")
            acked: list[str] = []
            refused: list[dict[str, Any]] = []
            with httpx.Client(base_url=url, timeout=30) as client:
                for body, eid in items:
                    r = client.post("/events", content=body)
                    if r.status_code == 204:
                        acked.append(eid)
                        continue
                    assert r.status_code == 503, r.text
                    assert r.headers["retry-after"] == "5"
                    refused.append(r.json())
                    if len(refused) >= 20:
                        break
                assert len(refused) == 20, "the disk never filled"
                # bad input on a full disk: 503 (nothing can be written), or 400 and then either kept
                # (max_page_count: a small row still fits a page the file has; tmpfs: the once-a-second
                # WAL truncation just gave room back) or refused unkept *and counted* -- the dead-letter
                # bound never eats the intake's reserve (issue 13 point 4); never a 400 silently dropped
                dead_before = bridge.outbox.dead_letter_count()
                unkept_before = sum(bridge.stats.rejected_unkept.values())
                bad = client.post("/events", content=b"{not json")
                if bad.status_code != 400:
                    assert bad.status_code == 503, bad.text
                else:
                    kept = bridge.outbox.dead_letter_count() - dead_before
                    unkept = sum(bridge.stats.rejected_unkept.values()) - unkept_before
                    assert (kept, unkept) in {(1, 0), (0, 1)}, (kept, unkept, bad.text)
            assert {e["error"] for e in refused} == {"outbox_error"}
            reasons = [r.getMessage() for r in caplog.records if r.name == "batchbridge.serve"]
            assert any("full" in m for m in reasons), reasons[-3:]
            assert bridge.outbox.depth() == len(acked)

            moto_restartable.start()  # the backend is back: the outbox drains, intake works again
            back = time.monotonic()
            # recovery = until the backend has taken everything (moto's own SQS slows down with queue
            # depth, so reading 700 messages back takes longer than the bridge needs to send them)
            wait_until(lambda: bridge.outbox.depth() == 0, 60, what="an empty outbox")
            recovery = time.monotonic() - back
            arrivals = Arrivals()

            def drain(_: int = 0) -> None:
                while not set(acked) <= arrivals.ids():
                    for m in aws.receive_all(queue, 100, deadline=2):
                        arrivals.add(m["Body"].encode())

            with ThreadPoolExecutor(3) as pool:  # moto answers slowly at depth; read in parallel
                list(pool.map(drain, range(3)))
            with httpx.Client(base_url=url, timeout=30) as client:
                body, eid = tencent_payloads(1, tag="after-full-")[0]
                wait_until(lambda: client.post("/events", content=body).status_code == 204, 30,
                           what="intake accepting again")
            delivered, lost, dups = arrivals.figures(acked)
            record(Figures("outbox disk full", "sqs (moto)", f"{how}; backend down until the disk was full",
                           len(acked), delivered, lost, dups, recovery,
                           extra={"refused_503": len(refused) + 1, "dead_lettered": bridge.outbox.dead_letter_count()}),
                   request.config)
            assert lost == 0 and arrivals.inconsistent_duplicates() == []
            assert "Traceback" not in caplog.text
        finally:
            stop()
            bridge.stop()


def test_full_disk_does_not_republish_what_was_delivered(tmp_path: Path) -> None:
    """Regression: when the outbox could not record a delivery (disk full), the publisher sent the
    same rows again on every turn; now it keeps the outcome and writes it first, publishing nothing
    twice while the disk stays full."""
    delivered_to: list[str] = []

    class Flaky(Outbox):
        fail_settles = 3

        def settle(self, *args: Any, **kwargs: Any) -> None:
            if self.fail_settles > 0:
                self.fail_settles -= 1
                raise OutboxError("outbox write failed: the disk holding the outbox is full", where="test")
            super().settle(*args, **kwargs)

    out = tmp_path / "out.jsonl"
    outbox = Flaky(tmp_path / "o.db")
    bridge = Bridge(config_from_dict({"routes": [{"to": out.as_uri()}],
                                      "outbox": {"path": str(tmp_path / "o.db"), "backoff_initial": 0.02,
                                                 "backoff_max": 0.05}}), outbox=outbox)
    items = tencent_payloads(30, tag="flaky-")
    for body, _ in items:
        bridge.handle(body)
    with bridge:
        assert bridge.drain(10)
    delivered_to = [e["id"] for e in read_events(out)]
    assert sorted(delivered_to) == sorted(eid for _, eid in items)  # each once


# --- a damaged outbox ----------------------------------------------------------------------------------


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "header":
        data[0:16] = b"not an sqlite db"
    elif how == "page":
        rng = random.Random(7)
        for off in range(4096 * 3, 4096 * 4):
            data[off] = rng.randrange(256)
    elif how == "truncated":
        data = data[: len(data) // 2]
    elif how == "text":
        data = bytearray(b"hello, I am not an outbox\n")
    path.write_bytes(bytes(data))


@pytest.fixture
def damaged_outbox(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    path = tmp_path / "outbox.db"
    with Outbox(path) as ob:
        for i in range(200):
            ob.put([OutboxRow("file:///x.jsonl", f"e{i}", "batch.job.failed", b"{}" + b"x" * 2000)])
        ob._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    damage(path, request.param)
    return path


@pytest.mark.parametrize("damaged_outbox", ["header", "page", "truncated", "text"], indirect=True)
def test_damaged_outbox_is_refused_at_start_with_a_clear_message(damaged_outbox: Path, tmp_path: Path) -> None:
    with pytest.raises(OutboxError, match="damaged") as info:
        Outbox(damaged_outbox)
    assert isinstance(info.value, BatchBridgeError) and str(damaged_outbox) in str(info.value)
    out = (tmp_path / "o.jsonl").as_uri()
    cfg = serve_config(tmp_path, out)
    commands = [
        ["serve", "--config", str(cfg), "--port", "0"],
        ["relay", "--from", "memory://nothing", "--to", out, "--outbox", str(damaged_outbox)],
        ["dlq", "list", "--outbox", str(damaged_outbox)],
    ]
    for args in commands:
        p = CliProcess(args, tmp_path / f"{args[0]}.log")
        assert p.wait(30) == 2, p.log()
        text = p.log()
        assert "Traceback" not in text
        assert "batchbridge: error:" in text and "outbox file is damaged" in text, text
