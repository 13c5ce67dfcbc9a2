"""SQLite outbox intake with ``synchronous=FULL`` against ``NORMAL``, 1, 16 and 64 requests at a time,
one ~1.5 KB event each (what ``docs/bridge.md`` quotes). DIR should be on the disk the outbox will use.

    .venv/bin/python benchmarks/bench_outbox_sync.py [DIR]
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
from batchbridge.core.outbox import SYNC_LEVELS, Outbox, OutboxRow


def bench(directory: str | Path, *, events: int = 10_000, clients: Sequence[int] = (1, 16, 64)) -> list[str]:
    body = orjson.dumps({"specversion": "1.0", "id": "0" * 32, "type": "batch.job.succeeded",
                         "data": {"pad": "x" * 1400}})
    lines = []
    for sync in SYNC_LEVELS:
        for n_clients in clients:
            n = events // 5 if n_clients == 1 else events
            with tempfile.TemporaryDirectory(dir=directory) as d, Outbox(Path(d) / "o.db", synchronous=sync) as ob:
                def one(i: int, ob: Outbox = ob) -> None:
                    ob.put([OutboxRow("file:///bench.jsonl", str(i), "batch.job.succeeded", body)])

                started = time.perf_counter()
                with ThreadPoolExecutor(n_clients) as pool:
                    list(pool.map(one, range(n)))
                rate = n / (time.perf_counter() - started)
                commits, requests = ob.group_commit_stats
            lines.append(f"synchronous={sync:<6} {n_clients:3d} concurrent requests: {rate:8.0f} events/s, "
                         f"{requests / max(1, commits):5.1f} events per commit")
    return lines


if __name__ == "__main__":
    print("\n".join(bench(sys.argv[1] if len(sys.argv) > 1 else ".")))
