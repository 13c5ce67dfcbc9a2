"""Normalise throughput: decode + normalise + serialise a mixed JSON Lines stream, against the floor of
parsing and re-serialising the same lines with the standard library alone.

The stream holds payloads from all five vendors in a realistic mix (native events and their
envelopes: CMQ push, Base64, MNS JSON, EventBridge, Pub/Sub push, Azure ``records`` exports), with
ids, times and states varied per payload (``benchmarks/_common.py``). The two runners, alternating:

* **floor**: ``json.dumps(json.loads(line))`` for every line of the bytes (Base64 lines decoded
  first) — the least any decoder that re-emits JSON must do;
* **batchbridge**: ``normalize_stream(data)`` and ``dumps()`` of every event it yields.

Each takes the whole stream as one ``bytes`` object, as the CLI does; the figure is the median time
over the repetitions. Target: batchbridge <= 2x the floor; above 3x is a failure.

    .venv/bin/python benchmarks/bench_normalize.py            # 200,000 payloads x 5
    .venv/bin/python benchmarks/bench_normalize.py --quick    # 10,000 payloads x 3
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import statistics
import sys
import time

from _common import emit_result, machine, payload_lines
from batchbridge.core.errors import InputError
from batchbridge.core.normalizing import dumps, normalize_stream

TARGET = 2.0
LIMIT = 3.0


def run_floor(data: bytes) -> tuple[float, int]:
    loads, dumps_, b64decode = json.loads, json.dumps, base64.b64decode
    start = time.perf_counter()
    n = 0
    for line in data.split(b"\n"):
        if line:
            # the few Base64 lines (Tencent's console form) must be decoded before they can be parsed
            dumps_(loads(line if line[:1] == b"{" else b64decode(line)))
            n += 1
    return time.perf_counter() - start, n


def run_batchbridge(data: bytes) -> tuple[float, int]:
    start = time.perf_counter()
    events = 0
    size = 0
    for _where, outcome in normalize_stream(data):
        if isinstance(outcome, InputError):
            raise SystemExit(f"{_where}: {outcome}")  # the generator only makes valid payloads
        for event in outcome:
            size += len(dumps(event))
            events += 1
    return time.perf_counter() - start, events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=None, help="payloads in the stream (default 200,000)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per runner (default 5)")
    parser.add_argument("--quick", action="store_true", help="10,000 payloads x 3 repetitions")
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args(argv)
    n = args.events or (10_000 if args.quick else 200_000)
    reps = args.reps or (3 if args.quick else 5)

    print(f"machine: {machine()}")
    data = b"\n".join(payload_lines(n, args.seed)) + b"\n"
    print(f"{n:,} payloads, {len(data) / 1e6:.1f} MB of JSON Lines, {reps} repetitions per runner", flush=True)

    # warm both paths (imports, caches, allocator) outside the measurement
    warm = data[: data.index(b"\n", min(len(data) - 1, 2_000_000)) + 1]
    run_floor(warm)
    run_batchbridge(warm)

    floor_s: list[float] = []
    bb_s: list[float] = []
    events = 0
    for rep in range(reps):
        order = (("floor", floor_s), ("bb", bb_s)) if rep % 2 == 0 else (("bb", bb_s), ("floor", floor_s))
        for which, into in order:
            gc.collect()
            elapsed, count = run_floor(data) if which == "floor" else run_batchbridge(data)
            into.append(elapsed)
            if which == "bb":
                events = count
        print(f"  rep {rep + 1}: floor {floor_s[-1]:7.3f} s   batchbridge {bb_s[-1]:7.3f} s   "
              f"ratio {bb_s[-1] / floor_s[-1]:.2f}", flush=True)

    floor, bb = statistics.median(floor_s), statistics.median(bb_s)
    ratio = bb / floor
    verdict = "PASS" if ratio <= TARGET else ("WARN" if ratio <= LIMIT else "FAIL")
    print(f"medians over {reps}: floor (json.loads + json.dumps per line) {floor:.3f} s "
          f"({n / floor:,.0f} payloads/s); batchbridge {bb:.3f} s ({n / bb:,.0f} payloads/s, "
          f"{events:,} events, {bb / events * 1e6:.2f} us/event)")
    print(f"batchbridge / floor = {ratio:.2f}x (target <= {TARGET}x, failure above {LIMIT}x): {verdict}")
    emit_result("normalize", round(bb, 4), "s", baseline=round(floor, 4), ratio=round(ratio, 3),
                target=f"<= {TARGET}", passed=ratio <= TARGET, verdict=verdict,
                note=f"{n} payloads, {events} events, median of {reps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
