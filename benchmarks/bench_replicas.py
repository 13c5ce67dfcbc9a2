"""serve ingest across processes: ``serve --workers 1`` and ``--workers 2`` on one SQLite outbox, and
1 and 2 ``serve`` replicas on one PostgreSQL outbox, durable commits everywhere (SQLite
``synchronous = "full"``; PostgreSQL ``fsync=on``, ``synchronous_commit=on``, on a throwaway server
started here by ``tests/pg_server.py``), driven by the same load generator in the same run.

    .venv/bin/python benchmarks/bench_replicas.py [--quick] [--seconds S] [--concurrency C] [--repeat R]

Every server is the real ``batchbridge serve`` process (its outbox publisher delivering to a
``file://`` backend meanwhile, as in production). The load generator is ``wrk`` posting the bundled
samples round-robin (``benchmarks/bench_serve.py``'s script): one wrk on the one address of one
process or of ``--workers``; for two replicas (two addresses) two wrk at once, each with half the
connections and threads, their rates summed. Each round measures every shape back to back; a ratio
is judged as the median over the rounds of that round's ratio (the machine's speed drifts over
minutes far more than within one round), and the median rates are printed beside it.

Targets (issue 16): 2 workers >= 1.4x one worker; one PostgreSQL replica >= 50 % of one SQLite
process. Nothing is judged when the load generator is the bottleneck: without wrk (the httpx
fallback saturates at a few hundred requests/s), or when wrk kept >= 90 % of its cores busy. Nor
when the machine was busy with other work before the run started (1-minute load average above
``BUSY`` x its cores): the processes measured then share the cores with others, and the more
processes a shape runs the larger the share the scheduler gives it, so the ratios say nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _common import emit_result, machine  # noqa: E402
from bench_serve import (  # noqa: E402
    _WRK_SCRIPT,
    CLIENT_SATURATED,
    WRK_THREADS,
    _load,
    _payloads,
    load_arguments,
    load_settings,
)

WORKERS_TARGET = 1.4
#: above this 1-minute load average per core before the run, other work competes for the cores
BUSY = 1.0
POSTGRES_TARGET = 0.5

Payloads = list[tuple[bytes, int]]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wrk_many(urls: list[str], payloads: Payloads, seconds: float, concurrency: int,
              workdir: str) -> tuple[float, float]:
    """(events/s summed over ``urls``, the share of their cores the wrk processes kept busy): one wrk
    per URL, at once, sharing :data:`WRK_THREADS` threads and ``concurrency`` connections."""
    script = Path(workdir) / "post.lua"
    script.write_text(_WRK_SCRIPT % (
        ", ".join(f"[==[{body.decode()}]==]" for body, _ in payloads), ", ".join(str(n) for _, n in payloads)))
    threads = max(1, WRK_THREADS // len(urls))
    cpu, started = _children_cpu(), time.perf_counter()
    procs = [subprocess.Popen(["wrk", f"-t{threads}", f"-c{max(threads, concurrency // len(urls))}",
                               f"-d{seconds:g}s", "-s", str(script), url], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for url in urls]
    outputs = [p.communicate(timeout=seconds + 60)[0] for p in procs]
    load = (_children_cpu() - cpu) / ((time.perf_counter() - started) * min(WRK_THREADS, os.cpu_count() or 1))
    rps = 0.0
    for url, out in zip(urls, outputs, strict=True):
        if "Non-2xx" in out or "Requests/sec:" not in out:
            raise RuntimeError(f"{url} answered errors under load:\n{out}")
        rps += float(next(line for line in out.splitlines() if line.startswith("Requests/sec:")).split()[1])
    return rps * statistics.mean(n for _, n in payloads), load


def _httpx_many(urls: list[str], payloads: Payloads, requests: int, concurrency: int) -> tuple[float, float]:
    async def both() -> list[tuple[float, int]]:
        return list(await asyncio.gather(*(_load(u, payloads, requests // len(urls), max(1, concurrency // len(urls)))
                                           for u in urls)))

    cpu, started = time.process_time(), time.perf_counter()
    done = asyncio.run(both())
    took = time.perf_counter() - started
    return sum(n for _, n in done) / took, (time.process_time() - cpu) / took


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def _servers(config: Path, count: int, workers: int, workdir: str) -> Iterator[list[str]]:
    """``count`` ``batchbridge serve`` processes (each with ``workers``) on one config; their base URLs."""
    procs: list[subprocess.Popen[bytes]] = []
    urls = []
    try:
        for i in range(count):
            port = _free_port()
            log = open(Path(workdir) / f"serve-{i}.log", "ab")  # noqa: SIM115 - closed with the process
            cmd = [sys.executable, "-m", "batchbridge.core.cli", "serve", "--config", str(config), "--port", str(port)]
            if workers > 1:
                cmd += ["--workers", str(workers)]
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True))
            log.close()
            urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        for url, proc in zip(urls, procs, strict=True):
            while not _up(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = "".join((Path(workdir) / f"serve-{i}.log").read_text(errors="replace")[-2000:]
                                   for i in range(count))
                    raise RuntimeError(f"serve did not start:\n{tail}")
                time.sleep(0.1)
        yield urls
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _config(workdir: Path, name: str, outbox: str) -> Path:
    key = "url" if outbox.startswith("postgresql://") else "path"
    path = workdir / f"{name}.toml"
    path.write_text(f'[outbox]\n{key} = "{outbox}"\nsynchronous = "full"\n\n'
                    f'[[routes]]\nto = ["file://{workdir}/{name}-events.jsonl"]\n')
    return path


def _measure(config: Path, count: int, workers: int, payloads: Payloads, args: Any, settings: tuple[int, float],
             workdir: str) -> tuple[float, float]:
    requests, seconds = settings
    with _servers(config, count, workers, workdir) as bases:
        urls = [f"{b}/events" for b in bases]
        _httpx_many(urls, payloads, min(200, requests), args.concurrency)  # warm-up
        if shutil.which("wrk"):
            return _wrk_many(urls, payloads, seconds, args.concurrency, workdir)
        return _httpx_many(urls, payloads, requests, args.concurrency)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    load_arguments(parser)
    args = parser.parse_args()
    requests, seconds, repeat, client = load_settings(args)
    if not args.repeat and not args.quick:
        repeat = 5  # rounds: a median of per-round ratios needs more than three to be steady
    payloads = _payloads()
    from pg_server import PgServer, find_bindir

    bindir = find_bindir()
    if bindir is None:
        print("bench_replicas: no PostgreSQL server binaries (apt-get install postgresql): nothing measured")
        return 0
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    print(f"replicas benchmark: {client} x {repeat}, {args.concurrency} connections in all; {machine()}; "
          f"load average {load_before:.1f} before the run")
    server = PgServer(bindir, durable=True)
    rows: dict[str, list[float]] = {"sqlite-1": [], "sqlite-2": [], "postgres-1": [], "postgres-2": []}
    loads: list[float] = []
    try:
        server.init()
        server.start()
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            for round_ in range(repeat):
                for label, count, workers in (("sqlite-1", 1, 1), ("sqlite-2", 1, 2), ("postgres-1", 1, 1),
                                              ("postgres-2", 2, 1)):
                    name = f"{label}-{round_}"
                    if label.startswith("sqlite"):
                        outbox = str(work / f"{name}.sqlite")
                    else:
                        outbox = server.url(server.create_database())
                    rate, load = _measure(_config(work, name, outbox), count, workers, payloads, args,
                                          (requests, seconds), tmp)
                    rows[label].append(rate)
                    loads.append(load)
                print("  " + "   ".join(f"{k} {v[-1]:,.0f} events/s" for k, v in rows.items())
                      + f"   (client load up to {max(loads):.0%})")
    finally:
        server.destroy()
    med = {k: statistics.median(v) for k, v in rows.items()}
    # each round measures every shape back to back: the ratio within a round cancels the machine's drift
    # (on this shared host one shape's rate moves by up to 2x over minutes), so the judged figure is the
    # median of the rounds' ratios, not a ratio of medians taken minutes apart
    per_round = {
        "workers": [two / one for one, two in zip(rows["sqlite-1"], rows["sqlite-2"], strict=True)],
        "postgres": [pg / one for one, pg in zip(rows["sqlite-1"], rows["postgres-1"], strict=True)],
        "replicas": [two / one for one, two in zip(rows["postgres-1"], rows["postgres-2"], strict=True)],
    }
    bound = None
    if not shutil.which("wrk"):
        bound = ("no wrk: the httpx fallback client saturates before the servers do, so these rates are the "
                 "client's (install wrk for a judged run)")
    elif max(loads) >= CLIENT_SATURATED:
        bound = (f"wrk kept {max(loads):.0%} of its cores busy (>= {CLIENT_SATURATED:.0%}): the load generator is "
                 "the bottleneck, so the ratios say nothing about the servers")
    elif load_before > BUSY * cores:
        bound = (f"the machine was busy before the run (load average {load_before:.1f} on {cores} cores): the "
                 "servers shared the cores with other work, so the ratios say nothing")
    print("median: " + ", ".join(f"{k} {v:,.0f} events/s" for k, v in med.items()))
    if bound:
        print(f"NOT JUDGED: {bound}")
    note = f"{client}; {args.concurrency} connections" + (f"; {bound}" if bound else "")
    judged = None if bound else True
    verdict = "NOT JUDGED" if bound else None
    print("ratios per round: " + "; ".join(f"{k} " + " ".join(f"{r:.2f}" for r in v) for k, v in per_round.items()))
    w = statistics.median(per_round["workers"])
    emit_result("serve --workers 2 vs 1 on one SQLite outbox (durable)", round(med["sqlite-2"], 1), "events/s",
                baseline=round(med["sqlite-1"], 1), ratio=round(w, 3), target=f">= {WORKERS_TARGET}",
                passed=judged and w >= WORKERS_TARGET, verdict=verdict, client_load=round(max(loads), 3), note=note)
    p = statistics.median(per_round["postgres"])
    emit_result("serve, one replica on PostgreSQL vs one process on SQLite (durable)", round(med["postgres-1"], 1),
                "events/s", baseline=round(med["sqlite-1"], 1), ratio=round(p, 3), target=f">= {POSTGRES_TARGET}",
                passed=judged and p >= POSTGRES_TARGET, verdict=verdict, client_load=round(max(loads), 3), note=note)
    r = statistics.median(per_round["replicas"])
    emit_result("serve, 2 replicas vs 1 on one PostgreSQL outbox (durable)", round(med["postgres-2"], 1), "events/s",
                baseline=round(med["postgres-1"], 1), ratio=round(r, 3), target=None, passed=None, note=note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
