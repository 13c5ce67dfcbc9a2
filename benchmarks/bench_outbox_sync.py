"""SQLite outbox intake with ``synchronous=FULL`` against ``NORMAL``, 1, 16 and 64 requests at a time,
one ~1.5 KB event each (what ``docs/bridge.md`` quotes). DIR should be on the disk the outbox will use.

    .venv/bin/python benchmarks/bench_outbox_sync.py [--quick] [DIR]

Informative (no target): the RESULT line is durable intake at 64 requests at a time against
``synchronous=NORMAL`` in the same run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
from batchbridge.core.outbox import SYNC_LEVELS, Outbox, OutboxRow

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit_result


def bench(directory: str | Path, *, events: int = 10_000, clients: Sequence[int] = (1, 16, 64)
          ) -> tuple[list[str], dict[tuple[str, int], float]]:
    body = orjson.dumps({"specversion": "1.0", "id": "0" * 32, "type": "batch.job.succeeded",
                         "data": {"pad": "x" * 1400}})
    lines = []
    rates: dict[tuple[str, int], float] = {}
    for sync in SYNC_LEVELS:
        for n_clients in clients:
            n = events // 5 if n_clients == 1 else events
            with tempfile.TemporaryDirectory(dir=directory) as d, Outbox(Path(d) / "o.db", synchronous=sync) as ob:
                def one(i: int, ob: Outbox = ob) -> None:
                    ob.put([OutboxRow("file:///bench.jsonl", str(i), "batch.job.succeeded", body)])

                started = time.perf_counter()
                with ThreadPoolExecutor(n_clients) as pool:
                    list(pool.map(one, range(n)))
                rate = rates[sync, n_clients] = n / (time.perf_counter() - started)
                commits, requests = ob.group_commit_stats
            lines.append(f"synchronous={sync:<6} {n_clients:3d} concurrent requests: {rate:8.0f} events/s, "
                         f"{requests / max(1, commits):5.1f} events per commit")
    return lines, rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", nargs="?", default=".", help="where the outbox files go (default: here)")
    parser.add_argument("--quick", action="store_true", help="1,000 events per step instead of 10,000")
    args = parser.parse_args()
    lines, rates = bench(args.directory, events=1_000 if args.quick else 10_000)
    print("\n".join(lines))
    full, normal = rates["full", 64], rates["normal", 64]
    emit_result("outbox intake, synchronous=full vs normal, 64 requests at a time", round(full, 1), "events/s",
                baseline=round(normal, 1), ratio=round(full / normal, 3))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
