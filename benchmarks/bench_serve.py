"""serve: vendor events ingested over HTTP with the durable outbox on, vs a bare ASGI endpoint that
answers 204 on the same server (uvicorn, same settings), driven by the same load in the same run.

    .venv/bin/python benchmarks/bench_serve.py [--quick] [--seconds S] [--concurrency C] [--http H --loop L]

Each server runs in its own process; the load generator is ``wrk`` (Debian package ``wrk``: a C
client, so the servers and not the client are measured) posting the bundled JSON samples round-robin
over C connections. Without wrk it falls back to an asyncio + httpx client and says so: that client
saturates first (~300 requests/s here), so the run judges nothing. Nor does a run whose load
generator used nearly all the CPU it can (``CLIENT_SATURATED`` of its threads' cores while driving
the bare endpoint): the bare rate is then the client's, not the server's, and the ratio says nothing
about the bridge. Target: the bridge ingests at >= 30 % of the bare endpoint's rate.
Both servers run on what ``batchbridge serve`` picks in this environment (uvicorn's ``auto``: its
C parser ``httptools`` and ``uvloop`` when installed, else ``h11`` and asyncio; the ``serve`` extra
installs neither) unless ``--http``/``--loop`` say otherwise; the line printed first names them.
The 204 from ``serve`` means the events are committed to the SQLite outbox (group commits) and the
outbox publisher drains them to a ``file://`` backend meanwhile, as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

_WRK_SCRIPT = """
bodies = {%s}
events = {%s}
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[(counter %% #bodies) + 1])
end
"""

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SAMPLES, emit_result, machine  # noqa: E402

TARGET = 0.30
#: the load generator counts as the bottleneck when it keeps this share of its threads' cores busy
#: (capped by the machine's cores) while driving the bare endpoint
CLIENT_SATURATED = 0.90
WRK_THREADS = 2


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def _bare_app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def, type-arg]
    """The floor: read the body, answer 204, keep nothing."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _stack(http: str, loop: str) -> tuple[str, str]:
    """The HTTP protocol and event loop uvicorn will use (resolving ``auto`` as uvicorn does)."""
    import importlib.util

    if http == "auto":
        http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    if loop == "auto":
        loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return http, loop


def _run_server(kind: str, port: int, workdir: str, http: str, loop: str, route: str = "") -> None:
    """``bare`` or ``bridge`` (``route``: more keys for the one route, e.g. ``supersede = true``)."""
    import uvicorn

    if kind == "bare":
        app = _bare_app
    else:
        from batchbridge.core.config import load_config
        from batchbridge.core.serve import create_app

        config = Path(workdir) / "bridge.toml"
        config.write_text(
            f'[outbox]\npath = "{workdir}/outbox.sqlite"\n\n'
            f'[[routes]]\nto = ["file://{workdir}/events.jsonl"]\n{route}'
        )
        app = create_app(load_config(config))
    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_level="warning", http=http, loop=loop)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _payloads() -> list[tuple[bytes, int]]:
    from batchbridge.core.normalizing import normalize

    out = []
    for path in sorted(SAMPLES.glob("*.json")):
        body = path.read_bytes()
        out.append((body, len(normalize(body))))
    return out


async def _load(url: str, payloads: list[tuple[bytes, int]], requests: int, concurrency: int) -> tuple[float, int]:
    """Post ``requests`` payloads over ``concurrency`` connections; (seconds, events carried)."""
    counter = iter(range(requests))
    events = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal events
        for i in counter:
            body, n = payloads[i % len(payloads)]
            response = await client.post(url, content=body, headers={"content-type": "application/json"})
            if response.status_code != 204:
                raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:200]}")
            events += n

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return time.perf_counter() - start, events


def _wrk(url: str, payloads: list[tuple[bytes, int]], seconds: float, concurrency: int,
         workdir: str) -> tuple[float, float]:
    """(events/s, client load) under wrk: requests/s times the mean events per payload (posted
    round-robin), and the share of its threads' cores wrk kept busy."""
    script = Path(workdir) / "post.lua"
    script.write_text(_WRK_SCRIPT % (
        ", ".join(f"[==[{body.decode()}]==]" for body, _ in payloads), ", ".join(str(n) for _, n in payloads)))
    cpu, started = _children_cpu(), time.perf_counter()
    done = subprocess.run(["wrk", f"-t{WRK_THREADS}", f"-c{concurrency}", f"-d{seconds:g}s", "-s", str(script), url],
                          capture_output=True, text=True, timeout=seconds + 60, check=True)
    # wrk is the only child reaped in between: the server's own usage is counted when it is waited for
    load = (_children_cpu() - cpu) / ((time.perf_counter() - started) * min(WRK_THREADS, os.cpu_count() or 1))
    if "Non-2xx" in done.stdout:
        raise RuntimeError(f"{url} answered errors under load:\n{done.stdout}")
    rps = float(next(line for line in done.stdout.splitlines() if line.startswith("Requests/sec:")).split()[1])
    return rps * statistics.mean(n for _, n in payloads), load


def _measure(kind: str, payloads: list[tuple[bytes, int]], requests: int, concurrency: int,
             seconds: float, stack: tuple[str, str], script: str = __file__) -> tuple[float, float]:
    """(events/s of the server ``script --serve KIND ...`` runs -- ``bare``: the 204 endpoint at ``/`` --,
    client load: the share of its cores the load generator kept busy)."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as workdir:
        proc = subprocess.Popen([sys.executable, script, "--serve", kind, str(port), workdir, *stack],
                                start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}/events" if kind != "bare" else f"http://127.0.0.1:{port}/"
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError(f"{kind} server did not start") from None
                    time.sleep(0.1)
            asyncio.run(_load(url, payloads, min(200, requests), concurrency))  # warm-up
            if shutil.which("wrk"):
                return _wrk(url, payloads, seconds, concurrency, workdir)
            cpu = time.process_time()  # the httpx client runs in this process, on one thread
            took, events = asyncio.run(_load(url, payloads, requests, concurrency))
            return events / took, (time.process_time() - cpu) / took
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def load_arguments(parser: argparse.ArgumentParser) -> None:
    """The load options every serve-style benchmark takes."""
    parser.add_argument("--quick", action="store_true", help="few requests: only shows that it runs")
    parser.add_argument("--seconds", type=float, default=0, help="wrk: seconds per measurement (default 10)")
    parser.add_argument("--requests", type=int, default=0, help="without wrk: requests per measurement")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=0, help="measurements of each (default 3, quick 1)")


def load_settings(args: argparse.Namespace) -> tuple[int, float, int, str]:
    """(requests, seconds, repeat, the client's description) from :func:`load_arguments`' options."""
    requests = args.requests or (300 if args.quick else 4000)
    seconds = args.seconds or (2 if args.quick else 10)
    repeat = args.repeat or (1 if args.quick else 3)
    client = f"wrk, {seconds:g} s" if shutil.which("wrk") else f"httpx (no wrk: client-bound), {requests} requests"
    return requests, seconds, repeat, client


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    load_arguments(parser)
    parser.add_argument("--http", default="auto", choices=("auto", "h11", "httptools"),
                        help="uvicorn's HTTP implementation for both servers (default: what serve would use)")
    parser.add_argument("--loop", default="auto", choices=("auto", "asyncio", "uvloop"),
                        help="uvicorn's event loop for both servers")
    parser.add_argument("--serve", nargs=5, metavar=("KIND", "PORT", "DIR", "HTTP", "LOOP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _run_server(args.serve[0], int(args.serve[1]), args.serve[2], args.serve[3], args.serve[4])
        return 0
    requests, seconds, repeat, client = load_settings(args)
    payloads = _payloads()
    stack = _stack(args.http, args.loop)
    print(f"serve benchmark: {client} x {repeat}, {args.concurrency} connections; uvicorn with {stack[0]} on "
          f"{stack[1]}; {machine()}")
    bare, bridge, loads = [], [], []
    for _ in range(repeat):  # interleaved, so drift in machine load hits both alike
        rate, load = _measure("bare", payloads, requests, args.concurrency, seconds, stack)
        bare.append(rate)
        loads.append(load)
        bridge.append(_measure("bridge", payloads, requests, args.concurrency, seconds, stack)[0])
        print(f"  bare {bare[-1]:,.0f} events/s (client load {load:.0%})   serve+outbox {bridge[-1]:,.0f} events/s")
    b, s = statistics.median(bare), statistics.median(bridge)
    ratio = s / b
    print(f"median: bare endpoint {b:,.0f} events/s, serve with durable outbox {s:,.0f} events/s "
          f"= {ratio:.0%} (target >= {TARGET:.0%})")
    bound = _client_bound(bool(shutil.which("wrk")), max(loads))
    if bound:
        print(f"NOT JUDGED: {bound}")
    emit_result("serve: events/s ingested with the durable outbox vs a bare 204 endpoint", round(s, 1),
                "events/s", baseline=round(b, 1), ratio=round(ratio, 3), target=f">= {TARGET}",
                passed=None if bound else ratio >= TARGET, verdict="NOT JUDGED (client-bound)" if bound else None,
                client_load=round(max(loads), 3), note=f"{client}; uvicorn {stack[0]}/{stack[1]}"
                + (f"; {bound}" if bound else ""))
    return 0


def _client_bound(wrk: bool, load: float) -> str | None:
    """Why the load generator, not the server, set the bare endpoint's rate; None when it did not."""
    if not wrk:
        return ("no wrk: the httpx fallback client saturates before the servers do, so the bare endpoint's rate "
                "is the client's (install wrk for a judged run)")
    if load >= CLIENT_SATURATED:
        return (f"wrk kept {load:.0%} of its cores busy driving the bare endpoint (>= {CLIENT_SATURATED:.0%}): "
                "the load generator is the bottleneck, so the ratio says nothing about the bridge")
    return None


if __name__ == "__main__":
    sys.exit(main())
