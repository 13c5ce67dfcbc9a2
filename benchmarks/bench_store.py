"""Outbox stores: intake throughput of the PostgreSQL store against the SQLite outbox, same load,
durable commits on both (SQLite ``synchronous=FULL``; PostgreSQL ``fsync=on``,
``synchronous_commit=on``), on a throwaway PostgreSQL server started here (``tests/pg_server.py``).

    .venv/bin/python benchmarks/bench_store.py [--quick] [--events N] [--clients C]

C threads each ``put`` one ~1.5 KB event at a time (what C concurrent HTTP requests do to the outbox),
so the group committers fold them into few transactions. This is the store alone -- no HTTP, no
decoding -- an early indicator for issue 16's serve-level target (one PostgreSQL replica >= 50 % of
one SQLite process), not that target itself: the figure is reported and not judged.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _common import emit_result, machine  # noqa: E402


def _rate(store: Any, events: int, clients: int) -> tuple[float, float]:
    """(events/s, events per commit) for ``events`` single-event puts from ``clients`` threads."""
    import orjson
    from batchbridge.core.outbox import OutboxRow

    body = {"specversion": "1.0", "type": "batch.job.succeeded", "source": "bench",
            "data": {"provider": "aws", "kind": "job", "pad": "x" * 1400}}

    def one(i: int) -> None:
        event = {**body, "id": f"{i:032d}", "data": {**body["data"], "job": {"id": f"job-{i % 500}"}}}
        store.put([OutboxRow("file:///bench.jsonl", event["id"], event["type"], orjson.dumps(event), event)])

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(events)))
    rate = events / (time.perf_counter() - started)
    commits, requests = store.group_commit_stats
    return rate, requests / max(1, commits)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--events", type=int, default=0, help="events per measurement (default 10000, quick 1500)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=0, help="measurements of each (default 3, quick 1)")
    args = parser.parse_args()
    events = args.events or (1500 if args.quick else 10_000)
    repeat = args.repeat or (1 if args.quick else 3)

    from batchbridge.core.outbox import Outbox
    from batchbridge.core.store_postgres import PostgresStore
    from pg_server import PgServer, find_bindir

    bindir = find_bindir()
    if bindir is None:
        print("no PostgreSQL server binaries (apt-get install postgresql): nothing measured")
        return 0
    print(f"store intake: {events} events x {repeat}, {args.clients} concurrent clients, durable commits; {machine()}")
    server = PgServer(bindir, durable=True)
    try:
        server.init()
        server.start()
        sqlite, postgres = [], []
        for i in range(repeat):  # interleaved, so drift in machine load hits both alike
            with tempfile.TemporaryDirectory() as d, Outbox(Path(d) / "outbox.db", synchronous="full") as ob:
                rate, per = _rate(ob, events, args.clients)
            sqlite.append(rate)
            print(f"  SQLite (FULL)        {rate:8,.0f} events/s  {per:5.1f} events per commit")
            db = server.create_database()
            with PostgresStore(server.url(db)) as pg:
                rate, per = _rate(pg, events, args.clients)
            postgres.append(rate)
            print(f"  PostgreSQL (fsync)   {rate:8,.0f} events/s  {per:5.1f} events per commit  (run {i + 1})")
    finally:
        server.destroy()
    s, p = statistics.median(sqlite), statistics.median(postgres)
    emit_result("store: intake events/s, PostgreSQL store vs SQLite outbox (durable commits)", round(p, 1),
                "events/s", baseline=round(s, 1), ratio=round(p / s, 3), target=None, passed=None,
                note=f"{args.clients} clients, single-event puts; store level only, the serve-level target "
                     "(>= 0.5) is measured once the bridge runs on the store")
    return 0


if __name__ == "__main__":
    sys.exit(main())
