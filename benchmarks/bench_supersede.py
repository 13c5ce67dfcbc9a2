"""serve ingest with ``supersede = true`` on its route vs the same route without, same load, same run.

    .venv/bin/python benchmarks/bench_supersede.py [--quick] [--seconds S] [--concurrency C]

Both servers are ``batchbridge serve`` (uvicorn, durable outbox, a ``file://`` destination), in their
own processes, driven by the serve benchmark's load (``wrk`` posting the bundled samples round-robin;
httpx without wrk). Every event is observed by the subject-state store in both; with supersedence
each intake transaction also decides, per event, whether it is stale. Target: >= 80 % of the rate
without supersedence.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit_result, machine
from bench_serve import _measure, _payloads, _stack

TARGET = 0.80


def _run_server(kind: str, port: int, workdir: str, http: str, loop: str) -> None:
    import uvicorn
    from batchbridge.core.config import load_config
    from batchbridge.core.serve import create_app

    config = Path(workdir) / "bridge.toml"
    config.write_text(
        f'[outbox]\npath = "{workdir}/outbox.sqlite"\n\n'
        f'[[routes]]\nto = ["file://{workdir}/events.jsonl"]\nsupersede = {str(kind == "supersede").lower()}\n'
    )
    app = create_app(load_config(config))
    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_level="warning", http=http, loop=loop)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs: only shows that it runs")
    parser.add_argument("--seconds", type=float, default=0, help="wrk: seconds per measurement (default 10)")
    parser.add_argument("--requests", type=int, default=0, help="without wrk: requests per measurement")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=0, help="measurements of each (default 3, quick 1)")
    parser.add_argument("--serve", nargs=5, metavar=("KIND", "PORT", "DIR", "HTTP", "LOOP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _run_server(args.serve[0], int(args.serve[1]), args.serve[2], args.serve[3], args.serve[4])
        return 0
    requests = args.requests or (300 if args.quick else 4000)
    seconds = args.seconds or (2 if args.quick else 10)
    repeat = args.repeat or (1 if args.quick else 3)
    payloads = _payloads()
    stack = _stack("auto", "auto")
    client = f"wrk, {seconds:g} s" if shutil.which("wrk") else f"httpx (no wrk: client-bound), {requests} requests"
    print(f"supersede benchmark: {client} x {repeat}, {args.concurrency} connections; uvicorn with {stack[0]} on "
          f"{stack[1]}; {machine()}")
    plain, superseding = [], []
    for _ in range(repeat):  # interleaved, so drift in machine load hits both alike
        plain.append(_measure("plain", payloads, requests, args.concurrency, seconds, stack, __file__))
        superseding.append(_measure("supersede", payloads, requests, args.concurrency, seconds, stack, __file__))
        print(f"  supersede = false {plain[-1]:,.0f} events/s   supersede = true {superseding[-1]:,.0f} events/s")
    p, s = statistics.median(plain), statistics.median(superseding)
    ratio = s / p
    print(f"median: without supersedence {p:,.0f} events/s, with {s:,.0f} events/s = {ratio:.0%} "
          f"(target >= {TARGET:.0%})")
    emit_result("supersede: serve ingest with supersede = true vs false", round(s, 1), "events/s",
                baseline=round(p, 1), ratio=round(ratio, 3), target=f">= {TARGET}", passed=ratio >= TARGET,
                note=f"{client}; uvicorn {stack[0]}/{stack[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
