"""``relay``: from SQS on moto and from ``memory://`` to ``file://``; vendor payloads and canonical
CloudEvents; undecodable messages dead-lettered then acked; graceful drain on SIGTERM."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from batchbridge.adapters import memory
from batchbridge.core.backends import open_publisher
from batchbridge.core.bridge import Bridge
from batchbridge.core.config import config_from_dict
from batchbridge.core.driver import Message
from batchbridge.core.normalizing import normalize
from batchbridge.core.relay import Relay, relay
from vendor_payloads import (
    alibaba_job,
    aws_event,
    compact,
    gcp_message,
    sample_bytes,
    tencent_element,
    tencent_message,
)

if TYPE_CHECKING:
    from aws_servers import AwsServer


@pytest.fixture(autouse=True)
def _fresh_memory() -> Iterator[None]:
    memory.reset()
    yield
    memory.reset()


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def wait_for(cond: Any, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def bridge_to(tmp_path: Path, out: Path) -> Bridge:
    return Bridge(config_from_dict({
        "routes": [{"to": out.as_uri(), "vars": {"via": "relay"}}],
        "outbox": {"path": str(tmp_path / "outbox.db"), "backoff_initial": 0.05, "backoff_max": 0.5},
    }))


def run_in_thread(r: Relay) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    t = threading.Thread(target=r.run, args=(stop,), daemon=True)
    t.start()
    return stop, t


def canonical(name: str = "JOB_SUCCEED", job: str = "job-c") -> dict[str, Any]:
    (event,) = normalize(compact(tencent_message(tencent_element(name, JobId=job))))
    return event


def test_relay_from_sqs_on_moto_to_file(tmp_path: Path, moto_server: AwsServer) -> None:
    queue = moto_server.queue()
    sqs = moto_server.client("sqs")
    eventbridge = compact(aws_event("FAILED"))  # what an EventBridge rule with an SQS target delivers
    cmq = sample_bytes("tencent-cmq-http-push-job-failed.json")
    sqs.send_message(QueueUrl=queue.url, MessageBody=eventbridge.decode())
    sqs.send_message(QueueUrl=queue.url, MessageBody=cmq.decode())
    sqs.send_message(QueueUrl=queue.url, MessageBody="this is not an event")
    with open_publisher(moto_server.uri("sqs", queue.name)) as pub:  # already canonical, structured mode
        assert all(r.ok for r in pub.publish([canonical()]))
    want = normalize(eventbridge) + normalize(cmq) + [canonical()]

    out = tmp_path / "events.jsonl"
    with bridge_to(tmp_path, out) as bridge:
        r = Relay(bridge, moto_server.uri("sqs", queue.name, wait_time_seconds=1), batch=10, wait=0.5)
        stop, t = run_in_thread(r)
        wait_for(lambda: len(lines(out)) >= len(want) and bridge.outbox.dead_letter_count() == 1)
        stop.set()
        t.join(10)
        got = lines(out)
        assert sorted(e["id"] for e in got) == sorted(e["id"] for e in want)
        assert all(e["data"]["vars"]["via"] == "relay" for e in got)
        (dead,) = bridge.outbox.dead_letters()
        assert dead.payload == b"this is not an event" and dead.stage == "intake"
        assert dead.source.startswith("relay sqs://") and dead.code == "unrecognized_format"
        assert r.report.messages == 4 and r.report.dead_lettered == 1 and r.report.events == len(want)
    # everything was acknowledged, the undecodable message too
    attrs = sqs.get_queue_attributes(QueueUrl=queue.url, AttributeNames=["All"])["Attributes"]
    assert attrs["ApproximateNumberOfMessages"] == "0" and attrs["ApproximateNumberOfMessagesNotVisible"] == "0"


def test_relay_from_memory_both_bindings_and_vendor_attributes(tmp_path: Path) -> None:
    structured = canonical("JOB_RUNNING", "job-s")
    binary = canonical("JOB_FAILED", "job-b")
    with open_publisher("memory://src") as pub:
        assert pub.publish([structured])[0].ok
    with open_publisher("memory://src?mode=binary") as pub:
        assert pub.publish([binary])[0].ok
    # a pulled Pub/Sub message from GCP Batch: the notification lives in the attributes
    gcp = gcp_message("task", "FAILED")
    memory.queue("src", create=False).put(Message(base64.b64decode(gcp["data"]), dict(gcp["attributes"]),
                                                  "text/plain"), 0)
    memory.queue("src", create=False).put(Message(compact(alibaba_job("OnJobFailed")), {}, "application/json"), 0)
    memory.queue("src", create=False).put(Message(b"\x00\x01", {"k": "v"}, "application/octet-stream"), 0)

    out = tmp_path / "events.jsonl"
    with bridge_to(tmp_path, out) as bridge:
        r = Relay(bridge, "memory://src", wait=0.2)
        stop, t = run_in_thread(r)
        wait_for(lambda: len(lines(out)) >= 4 and bridge.outbox.dead_letter_count() == 1)
        stop.set()
        t.join(10)
        got = {e["id"]: e for e in lines(out)}
        pulled = {"data": gcp["data"], "attributes": gcp["attributes"]}
        want = [structured["id"], binary["id"], normalize(pulled)[0]["id"],
                normalize(compact(alibaba_job("OnJobFailed")))[0]["id"]]
        assert sorted(got) == sorted(want)
        assert got[binary["id"]]["data"]["job"]["id"] == "job-b"
        (dead,) = bridge.outbox.dead_letters()
        assert dead.payload == b"\x00\x01" and dead.meta.get("attributes") == {"k": "v"}
    assert memory.depth("src") == 0


def test_relay_nacks_when_the_outbox_cannot_be_written(tmp_path: Path) -> None:
    with open_publisher("memory://src") as pub:
        pub.publish([canonical()])
    bridge = bridge_to(tmp_path, tmp_path / "out.jsonl")
    bridge.outbox.close()  # nothing can be made durable
    r = Relay(bridge, "memory://src?visibility_timeout=60", wait=0.2)
    stop = threading.Event()
    t = threading.Thread(target=r.run, args=(stop,), daemon=True)
    t.start()
    source = memory.queue("src", create=False)

    def taken_and_returned() -> bool:
        with source.cond:
            return len(source.ready) == 1 and source.ready[0].deliveries >= 1

    wait_for(taken_and_returned)  # the relay received it, could not commit it, and nacked it
    stop.set()
    t.join(10)
    assert r.report.messages == 0
    assert memory.depth("src") == 1  # returned to the source, not lost (visibility would hide it for 60 s)
    with memory.queue("src", create=False).cond:
        assert len(memory.queue("src", create=False).ready) == 1


def test_relay_function_drains_after_stop(tmp_path: Path) -> None:
    with open_publisher("memory://src") as pub:
        pub.publish([canonical(job=f"job-{i}") for i in range(30)])
    out = tmp_path / "events.jsonl"
    bridge = bridge_to(tmp_path, out)
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    report, drained = relay(bridge, "memory://src", stop, wait=0.1)
    bridge.stop()
    assert drained and report.messages == 30 and len(lines(out)) == 30


def test_sigterm_drains_and_exits_zero(tmp_path: Path, moto_server: AwsServer) -> None:
    queue = moto_server.queue()
    sqs = moto_server.client("sqs")
    payloads = [compact(tencent_message(tencent_element("JOB_SUCCEED", JobId=f"job-{i}"))) for i in range(60)]
    ids = {normalize(p)[0]["id"] for p in payloads}
    for i in range(0, len(payloads), 10):
        sqs.send_message_batch(QueueUrl=queue.url, Entries=[
            {"Id": str(j), "MessageBody": p.decode()} for j, p in enumerate(payloads[i:i + 10])])
    out = tmp_path / "events.jsonl"
    # the file backend is slowed by fsync per batch; the relay is stopped while it is busy
    cmd = [sys.executable, "-m", "batchbridge.core.cli", "relay", "--from",
           moto_server.uri("sqs", queue.name, wait_time_seconds=1), "--to", out.as_uri(),
           "--outbox", str(tmp_path / "outbox.db"), "--batch", "5"]
    env = dict(os.environ)

    def run_once(stop_when: Any) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: stop_when() or proc.poll() is not None, 60)
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            proc.send_signal(signal.SIGTERM)
            out_, err_ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        return subprocess.CompletedProcess(cmd, proc.returncode, out_, err_)

    first = run_once(lambda: len(lines(out)) >= 5)
    assert first.returncode == 0, first.stderr.decode()
    assert b"SIGTERM" in first.stderr and b"Traceback" not in first.stderr
    delivered = {e["id"] for e in lines(out)}
    # what was taken from the queue is in the file (the outbox was flushed); the rest is still queued
    attrs = sqs.get_queue_attributes(QueueUrl=queue.url, AttributeNames=["All"])["Attributes"]
    assert attrs["ApproximateNumberOfMessagesNotVisible"] == "0"
    assert len(delivered) + int(attrs["ApproximateNumberOfMessages"]) == len(ids)
    assert delivered <= ids
    second = run_once(lambda: {e["id"] for e in lines(out)} >= ids)
    assert second.returncode == 0, second.stderr.decode()
    assert {e["id"] for e in lines(out)} == ids
