"""Publish throughput: batchbridge's ``servicebus://`` publisher vs raw azure-servicebus batch sends.

Both send the same canonical events (spread over many jobs) to the same broker in one run:

* **raw**: one ``ServiceBusSender``, ``ServiceBusMessageBatch``es filled with ``add_message`` until
  the SDK says full, each sent with ``send_messages(batch)``. It gets the bodies, ``cloudEvents_*``
  application properties, ``content_type``, ``subject`` and ``message_id`` *already encoded* (the
  same structured binding batchbridge produces), so its timed region holds only the SDK's own work.
* **batchbridge**: ``open_publisher("servicebus:///QUEUE").publish(events)`` with default options,
  timed *including* the CloudEvents binding of every event.

Link opens (about half a second inside the SDK) are outside both timed regions. Each repetition
sends to a fresh queue; the runners alternate; the medians are compared. The broker is the stand-in
(``tests/servicebus_broker.py``), started here in its own process and stopped at the end.

    .venv/bin/python benchmarks/bench_servicebus.py                # 5,000 events x 7
    .venv/bin/python benchmarks/bench_servicebus.py --quick        # 1,000 events x 3
    .venv/bin/python benchmarks/bench_servicebus.py --events 20000
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

# benchmarks/ is on sys.path when run as a script
from _common import ROOT, bench_events, emit_result, machine, timed_publish
from batchbridge.core import binding
from batchbridge.core.backends import open_publisher

ENV = "BATCHBRIDGE_BENCH_SERVICEBUS"
TARGET = 0.90


def encode_raw(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Exactly what batchbridge puts on the wire, as ServiceBusMessage keyword arguments."""
    out = []
    for e in events:
        m = binding.to_message(e, mode="structured", prefix="cloudEvents_", max_attributes=64)
        out.append({"body": m.body, "application_properties": m.attributes, "content_type": m.content_type,
                    "subject": m.event_type, "message_id": m.dedup_id})
    return out


class Broker:
    """The stand-in broker in a child process (so it does not share the GIL with the clients)."""

    def __init__(self, queues: list[str]) -> None:
        args = [sys.executable, str(ROOT / "tests" / "servicebus_broker.py"), "--port", "0"]
        for q in queues:
            args += ["--queue", q]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.stop()
            raise SystemExit(f"the stand-in broker did not start: {line!r}")
        self.connection_string = line.split(" ", 1)[1].strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_raw(conn: str, queue: str, messages: list[dict[str, Any]]) -> float:
    from azure.servicebus import ServiceBusClient, ServiceBusMessage

    with ServiceBusClient.from_connection_string(conn) as client, client.get_queue_sender(queue) as sender:
        sender.create_message_batch()  # the link is open before the clock starts
        start = time.perf_counter()
        batch = sender.create_message_batch()
        for kw in messages:
            msg = ServiceBusMessage(**kw)
            try:
                batch.add_message(msg)
            except ValueError:  # MessageSizeExceededError: the batch is full
                sender.send_messages(batch)
                batch = sender.create_message_batch()
                batch.add_message(msg)
        if len(batch):
            sender.send_messages(batch)
        return time.perf_counter() - start


def run_batchbridge(queue: str, events: list[dict[str, Any]]) -> float:
    with open_publisher(f"servicebus:///{queue}?connection_string_env={ENV}") as pub:
        return timed_publish(pub, events)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=None, help="events per repetition (default 5,000)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per runner (default 7)")
    parser.add_argument("--quick", action="store_true", help="1,000 events x 3 repetitions")
    args = parser.parse_args(argv)
    n = args.events or (1000 if args.quick else 5000)
    reps = args.reps or (3 if args.quick else 7)

    queues = [f"bench-{i}" for i in range(2 * reps + 2)]
    broker = Broker(queues)
    os.environ[ENV] = broker.connection_string
    print(f"Service Bus stand-in broker (own process); {machine()}")
    try:
        fresh = iter(queues)
        events = bench_events(n)
        raw_messages = encode_raw(events)
        warm = bench_events(200)
        run_raw(broker.connection_string, next(fresh), encode_raw(warm))
        run_batchbridge(next(fresh), warm)
        raw_s: list[float] = []
        bb_s: list[float] = []
        runners: dict[str, tuple[list[float], Callable[[str], float]]] = {
            "raw": (raw_s, lambda q: run_raw(broker.connection_string, q, raw_messages)),
            "bb": (bb_s, lambda q: run_batchbridge(q, events)),
        }
        for rep in range(reps):
            for which in (("raw", "bb") if rep % 2 == 0 else ("bb", "raw")):
                into, fn = runners[which]
                into.append(fn(next(fresh)))
            print(f"  rep {rep + 1}: raw {n / raw_s[-1]:8.0f} msg/s   batchbridge {n / bb_s[-1]:8.0f} msg/s")
        raw_rate, bb_rate = n / statistics.median(raw_s), n / statistics.median(bb_s)
        body = len(raw_messages[0]["body"])
        print(f"{n} events (~{body} B body, {len(raw_messages[0]['application_properties'])} application "
              f"properties), {reps} repetitions, medians:")
        print(f"  raw SDK (ServiceBusMessageBatch, pre-encoded): {raw_rate:8.0f} msg/s")
        print(f"  batchbridge (binding included):                {bb_rate:8.0f} msg/s")
        ratio = bb_rate / raw_rate
        print(f"  batchbridge / raw = {ratio:.0%} (target >= {TARGET:.0%})")
        emit_result("servicebus_publish_throughput", round(bb_rate, 1), "msg/s", baseline=round(raw_rate, 1),
                    ratio=round(ratio, 3), target=f">= {TARGET}", passed=ratio >= TARGET,
                    note=f"{n} events x {reps}, medians, stand-in broker")
        return 0
    finally:
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
