"""Publish throughput: batchbridge's ``pubsub://`` publisher vs the raw google-cloud-pubsub client.

Both publish the same canonical events (spread over many jobs, so not on one ordering key) to the
same Pub/Sub server in one run:

* **raw**: ``pubsub_v1.PublisherClient()`` with its default ``BatchSettings`` (100 messages / 1 MB /
  10 ms per batch), one ``publish()`` future per message, then every future's result. It gets the
  bodies and attributes *already encoded* (structured CloudEvents binding, same ``ce-*`` and
  ``content-type`` attributes), so its timed region holds only the client's own work.
* **batchbridge**: ``open_publisher("pubsub://PROJECT/TOPIC?emulator_host=...").publish(events)``
  with default options, timed *including* the CloudEvents binding of every event.

Each repetition publishes to a fresh topic with one subscription (so the server stores what it
receives, as in real use); the two runners alternate; the medians are compared. The server is the
official emulator when installed (started and stopped here, see ``tests/pubsub_servers.py``), else
the in-repo fake.

    GRPC_VERBOSITY=ERROR .venv/bin/python benchmarks/bench_pubsub.py            # 10,000 events x 5
    GRPC_VERBOSITY=ERROR .venv/bin/python benchmarks/bench_pubsub.py --quick    # 1,000 events x 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _common import bench_events, emit_result, timed_publish
from batchbridge.core import binding
from batchbridge.core.backends import open_publisher
from pubsub_servers import Admin, PubSubServer, admin, start_server

PROJECT = "batchbridge-bench"


def encode_raw(events: list[dict[str, Any]]) -> list[tuple[bytes, dict[str, str]]]:
    """Exactly what batchbridge puts on the wire: the structured binding plus ``content-type``."""
    out = []
    for e in events:
        m = binding.to_message(e, mode="structured", prefix="ce-", max_attributes=100, content_type_attribute=True)
        out.append((m.body, m.attributes))
    return out


def run_raw(server: PubSubServer, topic: str, messages: list[tuple[bytes, dict[str, str]]]) -> float:
    from google.cloud import pubsub_v1

    os.environ["PUBSUB_EMULATOR_HOST"] = server.host  # the raw client's documented way; read at creation
    client = pubsub_v1.PublisherClient()
    try:
        start = time.perf_counter()
        futures = [client.publish(topic, body, **attrs) for body, attrs in messages]
        for f in futures:
            f.result(timeout=120)
        return time.perf_counter() - start
    finally:
        client.stop()


def run_batchbridge(server: PubSubServer, topic: str, events: list[dict[str, Any]]) -> float:
    name = topic.rsplit("/", 1)[-1]
    with open_publisher(f"pubsub://{PROJECT}/{name}?emulator_host={server.host}") as pub:
        return timed_publish(pub, events)


def one(clients: Admin, fn: Callable[[str], float]) -> float:
    name = f"bench-{uuid.uuid4().hex[:10]}"
    topic = clients.create_topic(name)
    clients.create_subscription(f"{name}-sub", name)
    try:
        return fn(topic)
    finally:
        clients.delete(name, f"{name}-sub")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=None, help="events per repetition (default 10,000)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per runner (default 5)")
    parser.add_argument("--quick", action="store_true", help="1,000 events x 3 repetitions")
    parser.add_argument("--server", choices=("auto", "emulator", "fake"), default="auto",
                        help="auto: the official emulator if installed, else the in-repo fake")
    args = parser.parse_args(argv)
    n = args.events or (1000 if args.quick else 10_000)
    reps = args.reps or (3 if args.quick else 5)

    server = start_server(None if args.server == "auto" else args.server)
    print(f"Pub/Sub server: {server.description} at {server.host}")
    clients = admin(server.host, PROJECT)
    try:
        events = bench_events(n)
        raw_messages = encode_raw(events)
        warm = bench_events(200)
        one(clients, lambda t: run_raw(server, t, encode_raw(warm)))
        one(clients, lambda t: run_batchbridge(server, t, warm))
        raw_s: list[float] = []
        bb_s: list[float] = []
        for rep in range(reps):
            order = [("raw", raw_s), ("bb", bb_s)] if rep % 2 == 0 else [("bb", bb_s), ("raw", raw_s)]
            for which, into in order:
                if which == "raw":
                    into.append(one(clients, lambda t: run_raw(server, t, raw_messages)))
                else:
                    into.append(one(clients, lambda t: run_batchbridge(server, t, events)))
            print(f"  rep {rep + 1}: raw {n / raw_s[-1]:8.0f} msg/s   batchbridge {n / bb_s[-1]:8.0f} msg/s")
        raw_rate, bb_rate = n / statistics.median(raw_s), n / statistics.median(bb_s)
        body = len(raw_messages[0][0])
        print(f"{n} events (~{body} B body, {len(raw_messages[0][1])} attributes), {reps} repetitions, medians:")
        print(f"  raw client (default BatchSettings, pre-encoded): {raw_rate:8.0f} msg/s")
        print(f"  batchbridge (binding included):                  {bb_rate:8.0f} msg/s")
        ratio = bb_rate / raw_rate
        print(f"  batchbridge / raw = {ratio:.0%} (target >= 90%)")
        # a missed target is in the RESULT line; the exit status says only that the run completed
        emit_result("pubsub publish throughput", round(bb_rate, 1), "msg/s", baseline=round(raw_rate, 1),
                    ratio=round(ratio, 3), target=">= 0.9", passed=ratio >= 0.9,
                    note=f"{n} events x {reps}, medians, {server.description}")
        return 0
    finally:
        clients.close()
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
