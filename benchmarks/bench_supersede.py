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
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit_result, machine
from bench_serve import _measure, _payloads, _run_server, _stack, load_arguments, load_settings

TARGET = 0.80


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    load_arguments(parser)
    parser.add_argument("--serve", nargs=5, metavar=("KIND", "PORT", "DIR", "HTTP", "LOOP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        kind, port, workdir, http, loop = args.serve
        _run_server("bridge", int(port), workdir, http, loop, f"supersede = {str(kind == 'supersede').lower()}\n")
        return 0
    requests, seconds, repeat, client = load_settings(args)
    payloads = _payloads()
    stack = _stack("auto", "auto")
    print(f"supersede benchmark: {client} x {repeat}, {args.concurrency} connections; uvicorn with {stack[0]} on "
          f"{stack[1]}; {machine()}")
    plain: list[float] = []
    superseding: list[float] = []
    for i in range(repeat):  # interleaved, each first in turn, so drift in machine load hits both alike
        for kind in ("plain", "supersede") if i % 2 == 0 else ("supersede", "plain"):
            rate = _measure(kind, payloads, requests, args.concurrency, seconds, stack, __file__)[0]
            (plain if kind == "plain" else superseding).append(rate)
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
