"""Publish N canonical events to SQS on a local server, three ways, and compare throughput.

(a) batchbridge's ``Publisher`` (``open_publisher("sqs://...")``, its defaults: batches of 10,
    4 lanes), (b) a naive boto3 ``send_message`` loop, (c) raw boto3 ``send_message_batch`` in
    batches of 10 from one thread -- all with the same bodies and attributes (the raw ones get them
    pre-encoded, outside the timed region; batchbridge encodes inside it).

The server is LocalStack in host mode when ``.venv-localstack`` exists (preferred: moto slows down
as a queue fills), or the one ``BATCHBRIDGE_LOCALSTACK_URL`` names, else moto's server with threads
draining the queue while it is filled. Each run gets a fresh queue; the figure per way is the median
of ``--repeat`` runs. The servers this script starts are stopped when it ends.

    .venv/bin/python benchmarks/bench_sqs.py                 # 5,000 events, 3 runs per way
    .venv/bin/python benchmarks/bench_sqs.py --quick         # a few events: proves it runs
    .venv/bin/python benchmarks/bench_sqs.py --events 20000 --server moto
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

REGION = "us-east-1"
# dummy credentials for the local servers; the machine's own AWS configuration is kept out of the way
os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret",
                   "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": os.devnull,
                   "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"})
for _name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS"):
    os.environ.pop(_name, None)

import boto3  # noqa: E402
from _common import bench_events, emit_result, timed_publish  # noqa: E402
from aws_servers import LOCALSTACK_PYTHON, MotoServer, start_localstack, stop_process_group  # noqa: E402
from batchbridge.core import binding  # noqa: E402
from batchbridge.core.backends import open_publisher  # noqa: E402
from botocore.config import Config  # noqa: E402


def wire(events: list[dict[str, Any]]) -> list[tuple[str, dict[str, dict[str, str]]]]:
    """The body and message attributes batchbridge sends for each event, for the raw boto3 ways."""
    out = []
    for event in events:
        msg = binding.to_message(event, max_attributes=10, content_type_attribute=True)
        attrs = {k: {"DataType": "String", "StringValue": v} for k, v in msg.attributes.items()}
        out.append((msg.body.decode(), attrs))
    return out


class Server:
    def __init__(self, kind: str, url: str, stop: Callable[[], None]) -> None:
        self.kind, self.url, self.stop = kind, url, stop
        self.sqs = boto3.client("sqs", endpoint_url=url, region_name=REGION,
                                config=Config(retries={"mode": "standard", "total_max_attempts": 3}))

    def new_queue(self) -> str:
        url: str = self.sqs.create_queue(QueueName=f"bench-{uuid.uuid4().hex[:10]}")["QueueUrl"]
        return url

    def depth(self, queue_url: str) -> int:
        attrs = self.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"])
        return int(attrs["Attributes"]["ApproximateNumberOfMessages"])


def start_server(choice: str, workdir: Path) -> Server:
    external = os.environ.get("BATCHBRIDGE_LOCALSTACK_URL")
    if choice in ("auto", "localstack") and external:
        return Server("localstack (external)", external.rstrip("/"), lambda: None)
    if choice == "localstack" or (choice == "auto" and LOCALSTACK_PYTHON.exists()):
        proc, url = start_localstack(workdir / "localstack")
        return Server("localstack (host mode)", url, lambda: stop_process_group(proc))
    moto = MotoServer()
    moto.start()
    return Server("moto (drained while filling)", moto.url, moto.stop)


@contextmanager
def draining(server: Server, queue_url: str) -> Iterator[None]:
    """On moto, keep the queue shallow while it is filled (its SQS store slows with depth)."""
    if not server.kind.startswith("moto"):
        yield
        return
    stop = threading.Event()

    def drain() -> None:
        client = boto3.client("sqs", endpoint_url=server.url, region_name=REGION)
        while not stop.is_set():
            msgs = client.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                          WaitTimeSeconds=0).get("Messages", [])
            if msgs:
                client.delete_message_batch(QueueUrl=queue_url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)])
            else:
                time.sleep(0.01)

    threads = [threading.Thread(target=drain, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(10)


def run_batchbridge(server: Server, events: list[dict[str, Any]]) -> float:
    queue_url = server.new_queue()
    name = queue_url.rsplit("/", 1)[-1]
    with open_publisher(f"sqs://{name}?endpoint_url={server.url}&region={REGION}") as pub, \
            draining(server, queue_url):
        elapsed = timed_publish(pub, events)
    _check(server, queue_url, len(events))
    return elapsed


def run_naive(server: Server, prepared: list[tuple[str, dict[str, dict[str, str]]]]) -> float:
    queue_url = server.new_queue()
    with draining(server, queue_url):
        start = time.perf_counter()
        for body, attrs in prepared:
            server.sqs.send_message(QueueUrl=queue_url, MessageBody=body, MessageAttributes=attrs)
        elapsed = time.perf_counter() - start
    _check(server, queue_url, len(prepared))
    return elapsed


def run_batched(server: Server, prepared: list[tuple[str, dict[str, dict[str, str]]]]) -> float:
    queue_url = server.new_queue()
    with draining(server, queue_url):
        start = time.perf_counter()
        for i in range(0, len(prepared), 10):
            entries = [{"Id": str(j), "MessageBody": body, "MessageAttributes": attrs}
                       for j, (body, attrs) in enumerate(prepared[i:i + 10])]
            response = server.sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
            if response.get("Failed"):
                raise SystemExit(f"raw batch: entries failed: {response['Failed'][:1]}")
        elapsed = time.perf_counter() - start
    _check(server, queue_url, len(prepared))
    return elapsed


def _check(server: Server, queue_url: str, n: int) -> None:
    if not server.kind.startswith("moto"):  # the drained moto queue cannot be counted
        depth = server.depth(queue_url)
        if depth != n:
            raise SystemExit(f"expected {n} messages in {queue_url}, found {depth}")
    server.sqs.delete_queue(QueueUrl=queue_url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000, help="events per run (default 5000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per way; the median is reported (default 3)")
    parser.add_argument("--quick", action="store_true", help="200 events, one run: proves it works")
    parser.add_argument("--server", choices=("auto", "localstack", "moto"), default="auto",
                        help="auto: LocalStack if installed (or BATCHBRIDGE_LOCALSTACK_URL), else moto")
    args = parser.parse_args(argv)
    n, repeat = (200, 1) if args.quick else (args.events, args.repeat)
    events = bench_events(n, jobs=50)
    prepared = wire(events)

    with tempfile.TemporaryDirectory(prefix="bench-sqs-") as tmp:
        server = start_server(args.server, Path(tmp))
        try:
            print(f"server: {server.kind} at {server.url}; {n} events, {repeat} run(s) per way", flush=True)
            # warm up connections and the server's code paths (not measured)
            run_batchbridge(server, events[:50])
            run_batched(server, prepared[:50])
            times: dict[str, list[float]] = {"batchbridge": [], "naive": [], "batched": []}
            for r in range(repeat):
                times["batchbridge"].append(run_batchbridge(server, events))
                times["naive"].append(run_naive(server, prepared))
                times["batched"].append(run_batched(server, prepared))
                print(f"  run {r + 1}: " + ", ".join(f"{k} {n / v[-1]:,.0f} msg/s" for k, v in times.items()),
                      flush=True)
        finally:
            server.stop()

    rate = {k: n / statistics.median(v) for k, v in times.items()}
    print()
    print(f"{'way':<44} {'msg/s (median)':>15}")
    print(f"{'(a) batchbridge Publisher (defaults)':<44} {rate['batchbridge']:>15,.0f}")
    print(f"{'(b) boto3 send_message loop':<44} {rate['naive']:>15,.0f}")
    print(f"{'(c) boto3 send_message_batch x10, 1 thread':<44} {rate['batched']:>15,.0f}")
    vs_naive = rate["batchbridge"] / rate["naive"]
    vs_batched = rate["batchbridge"] / rate["batched"]
    print()
    print(f"batchbridge vs naive loop:  {vs_naive:5.1f}x   (target >= 5x)   {'ok' if vs_naive >= 5 else 'BELOW'}")
    print(f"batchbridge vs raw batched: {vs_batched:5.0%}   (target >= 90%)  {'ok' if vs_batched >= 0.9 else 'BELOW'}")
    note = f"{n} events x {repeat}, medians, {server.kind}"
    emit_result("sqs publish vs naive loop", round(rate["batchbridge"], 1), "msg/s", baseline=round(rate["naive"], 1),
                ratio=round(vs_naive, 3), target=">= 5", passed=vs_naive >= 5, note=note)
    emit_result("sqs publish vs raw batched", round(rate["batchbridge"], 1), "msg/s",
                baseline=round(rate["batched"], 1), ratio=round(vs_batched, 3), target=">= 0.9",
                passed=vs_batched >= 0.9, note=note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
