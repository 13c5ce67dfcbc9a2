"""Scale: time per event and peak memory of the normalise path and the file-publish path at 10k, 100k
and 1M payloads — both should be flat (per-event time within 20 %, peak RSS not growing).

The payloads (the mixed five-vendor stream of ``benchmarks/_common.py``) are first written, streamed,
to a JSON Lines file; then each (path, size) runs in a fresh interpreter that reads that file line
by line and reports its time and its peak RSS (``VmHWM``), so no run inherits another's heap:

* **normalize**: ``normalize_lines(file)`` and ``dumps()`` of every event;
* **publish**: the same events, gathered in chunks of 1,000, each chunk through
  ``open_publisher("file:///tmp/...jsonl").publish(chunk)`` (the portable Publisher with the file
  driver's defaults: batches of up to 1,000, one lane, write + fsync per batch);
* **publish-nofsync**: the same with ``?fsync=false``, which shows what the fsyncs cost.

Nothing holds the whole stream: the file is read lazily and each chunk is dropped once published.
The figure per size is the median of ``--reps`` runs. Targets: per-event time at every size within
20 % of the smallest size's, and peak RSS within 10 % (+8 MiB of allocator slack) of it.

    .venv/bin/python benchmarks/bench_scale.py            # 10k, 100k, 1M; 3 runs each
    .venv/bin/python benchmarks/bench_scale.py --quick    # 10k and 100k; 1 run each
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import emit_result, machine, payload_lines, peak_rss_mib

CHUNK = 1000
PATHS = ("normalize", "publish", "publish-nofsync")
TIME_TARGET = 1.2
RSS_TARGET = 1.1
RSS_SLACK_MIB = 8.0


# --- the child: one path at one size, in its own interpreter ------------------------------------------


def child(path: str, source: Path, workdir: Path) -> dict[str, Any]:
    from batchbridge.core.backends import open_publisher
    from batchbridge.core.errors import InputError
    from batchbridge.core.normalizing import dumps, normalize_lines

    # warm imports and caches on a few payloads, then note the memory the measured run starts from
    with open(source, "rb") as fh:
        head = [fh.readline() for _ in range(200)]
    for _, outcome in normalize_lines(head):
        if isinstance(outcome, list):
            for event in outcome:
                dumps(event)
    del head
    start_rss = peak_rss_mib()

    events = payloads = 0
    in_publish = 0.0
    with open(source, "rb") as fh:
        if path == "normalize":
            start = time.perf_counter()
            for where, outcome in normalize_lines(fh):
                if isinstance(outcome, InputError):
                    raise SystemExit(f"{where}: {outcome}")
                payloads += 1
                for event in outcome:
                    dumps(event)
                    events += 1
            elapsed = time.perf_counter() - start
        else:
            target = workdir / "published.jsonl"
            uri = target.as_uri() + ("?fsync=false" if path == "publish-nofsync" else "")
            with open_publisher(uri) as publisher:
                start = time.perf_counter()
                chunk: list[dict[str, Any]] = []
                for where, outcome in normalize_lines(fh):
                    if isinstance(outcome, InputError):
                        raise SystemExit(f"{where}: {outcome}")
                    payloads += 1
                    chunk.extend(outcome)
                    if len(chunk) >= CHUNK:
                        in_publish += _publish(publisher, chunk)
                        events += len(chunk)
                        chunk = []
                if chunk:
                    in_publish += _publish(publisher, chunk)
                    events += len(chunk)
                elapsed = time.perf_counter() - start
            with open(target, "rb") as out:
                written = sum(1 for _ in out)
            target.unlink()
            if written != events:
                raise SystemExit(f"published {events} events but the file holds {written} lines")
    return {
        "path": path,
        "payloads": payloads,
        "events": events,
        "seconds": elapsed,
        "us_per_event": elapsed / events * 1e6,
        "publish_share": in_publish / elapsed if path != "normalize" else None,
        "start_rss_mib": start_rss,
        "peak_rss_mib": peak_rss_mib(),
    }


def _publish(publisher: Any, chunk: list[dict[str, Any]]) -> float:
    start = time.perf_counter()
    results = publisher.publish(chunk)
    spent = time.perf_counter() - start
    failed = [r for r in results if not r.ok]
    if failed:
        raise SystemExit(f"{len(failed)} events failed to publish, first: {failed[0].error}")
    return spent


# --- the parent ----------------------------------------------------------------------------------------


def write_stream(target: Path, n: int) -> None:
    with open(target, "wb") as fh:
        for line in payload_lines(n):
            fh.write(line)
            fh.write(b"\n")


def run_child(path: str, source: Path, workdir: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", path, str(source), str(workdir)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"child {path} {source.name} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k only, one run each")
    parser.add_argument("--sizes", type=int, nargs="+", help="stream lengths (default 10000 100000 1000000)")
    parser.add_argument("--reps", type=int, default=None, help="runs per path and size (default 3)")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS),
                        help="publish-nofsync: the same with ?fsync=false, to show what the fsyncs cost")
    parser.add_argument("--keep", action="store_true", help="keep the generated streams (in the temp dir)")
    parser.add_argument("--child", nargs=3, metavar=("PATH", "SOURCE", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        path, source, workdir = args.child
        print(json.dumps(child(path, Path(source), Path(workdir))))
        return 0

    sizes = args.sizes or ([10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])
    reps = args.reps or (1 if args.quick else 3)
    print(f"machine: {machine()}")
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        rows: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for n in sizes:
            source = workdir / f"stream-{n}.jsonl"
            start = time.perf_counter()
            write_stream(source, n)
            print(f"{label(n)}: wrote {source.stat().st_size / 1e6:.0f} MB of payloads in "
                  f"{time.perf_counter() - start:.1f} s", flush=True)
            for rep in range(reps):
                for path in args.paths:
                    result = run_child(path, source, workdir)
                    rows.setdefault((path, n), []).append(result)
                    share = (f", {result['publish_share']:.0%} of it in publish()"
                             if result["publish_share"] is not None else "")
                    print(f"  {path:15s} run {rep + 1}: {result['events']:>9,} events  "
                          f"{result['us_per_event']:6.2f} us/event{share}  peak RSS {result['peak_rss_mib']:6.1f} MiB "
                          f"(after warm-up {result['start_rss_mib']:.1f})", flush=True)
            if not args.keep:
                source.unlink()

        print()
        print(f"{'path':16s} {'size':>5s} {'events':>10s} {'us/event':>9s} {'vs first':>9s} {'peak RSS':>9s} "
              f"{'vs first':>9s}")
        for path in args.paths:
            base_time = base_rss = 0.0
            for n in sizes:
                runs = rows[(path, n)]
                per_event = statistics.median(r["us_per_event"] for r in runs)
                rss = statistics.median(r["peak_rss_mib"] for r in runs)
                if n == sizes[0]:
                    base_time, base_rss = per_event, rss
                time_ratio, rss_ratio = per_event / base_time, rss / base_rss
                rss_ok = rss <= base_rss * RSS_TARGET + RSS_SLACK_MIB
                print(f"{path:16s} {label(n):>5s} {runs[0]['events']:>10,} {per_event:9.2f} {time_ratio:8.2f}x "
                      f"{rss:8.1f}M {rss_ratio:8.2f}x")
                if n == sizes[0]:
                    continue
                emit_result(f"scale {path} {label(n)} time/event", round(per_event, 3), "us/event",
                            baseline=round(base_time, 3), ratio=round(time_ratio, 3), target=f"<= {TIME_TARGET}",
                            passed=time_ratio <= TIME_TARGET, note=f"vs {label(sizes[0])}, median of {len(runs)}")
                emit_result(f"scale {path} {label(n)} peak RSS", round(rss, 1), "MiB", baseline=round(base_rss, 1),
                            ratio=round(rss_ratio, 3), target=f"<= {RSS_TARGET} (+{RSS_SLACK_MIB:.0f} MiB)",
                            passed=rss_ok, note=f"vs {label(sizes[0])}, median of {len(runs)}")
    finally:
        if args.keep:
            print(f"streams kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
