"""Run every benchmark (``benchmarks/bench_*.py``) and summarise their figures against their targets.

    .venv/bin/python benchmarks/run.py                     # full runs: PASS/FAIL per target
    .venv/bin/python benchmarks/run.py --quick             # small runs, targets informative only (CI)
    .venv/bin/python benchmarks/run.py --only normalize scale
    .venv/bin/python benchmarks/run.py --only cli_normalize  # whole-process CLI vs the stdlib floor, peak RSS
    .venv/bin/python benchmarks/run.py --only serve_limits   # small-push p99 and RSS while serve decodes big bodies

Each benchmark runs as its own subprocess (``--quick`` passed through), its output shown as it
comes. A benchmark reports each figure on a line ``RESULT {json}`` (the contract is in
``benchmarks/_common.py``): the figure, the baseline measured in the same run, the ratio and the
target. Those lines are collected into a final table; a benchmark that prints none is listed with
its exit status and its last lines.

Exit status: 1 if any benchmark failed to *run* (non-zero exit, timeout, could not start), else 0 —
also when targets are missed. With ``--quick`` the targets are informative only (a noisy CI machine
says little about them); in full mode each target is marked PASS or FAIL, but a missed target still
does not change the exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULT_PREFIX = "RESULT "
TAIL_LINES = 15


@dataclass
class Outcome:
    name: str
    #: the exit status; None when it did not finish (timed out, could not start)
    status: int | None = None
    seconds: float = 0.0
    results: list[dict[str, Any]] = field(default_factory=list)
    #: shown, but not a failure to run (unreadable RESULT lines, processes left behind)
    problems: list[str] = field(default_factory=list)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))

    @property
    def ran(self) -> bool:
        return self.status == 0


def discover() -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}


def _stop(proc: subprocess.Popen[str]) -> None:
    """Stop a benchmark and whatever it started: SIGINT first, so its own cleanup (servers) runs."""
    for sig, grace in ((signal.SIGINT, 20.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            # the benchmark leads its own process group (start_new_session), so this reaches only it
            # and the processes it spawned
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    # anything the benchmark left behind in its group once it exited
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_one(name: str, script: Path, quick: bool, timeout: float | None) -> Outcome:
    outcome = Outcome(name)
    cmd = [sys.executable, str(script), *(["--quick"] if quick else [])]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("GRPC_VERBOSITY", "ERROR")
    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
    start = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, start_new_session=True)
    except OSError as exc:
        outcome.problems.append(f"could not start: {exc}")
        return outcome

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            print(f"  | {line}", flush=True)
            outcome.tail.append(line)
            if line.startswith(RESULT_PREFIX):
                try:
                    record = json.loads(line[len(RESULT_PREFIX):])
                    if not isinstance(record, dict) or "name" not in record:
                        raise ValueError("not an object with a name")
                    outcome.results.append(record)
                except ValueError as exc:
                    outcome.problems.append(f"unreadable RESULT line ({exc})")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    finished = True
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        finished = False
        outcome.problems.append(f"timed out after {timeout:.0f} s; stopped")
        _stop(proc)
    except KeyboardInterrupt:
        _stop(proc)
        raise
    else:
        # a server the benchmark failed to stop would hold the output pipe open, and the machine busy
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, 0)
            outcome.problems.append("left processes running in its process group; killed them")
            os.killpg(proc.pid, signal.SIGKILL)
    reader.join(10)
    outcome.status = proc.returncode if finished else None
    outcome.seconds = time.monotonic() - start
    return outcome


def _num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 100:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def verdict(record: dict[str, Any], quick: bool) -> str:
    text = record.get("verdict") or {True: "PASS", False: "FAIL"}.get(record.get("pass"), "-")
    return f"({text})" if quick and text != "-" else str(text)


def describe(outcome: Outcome, quick: bool) -> list[str]:
    lines = []
    for r in outcome.results:
        unit = r.get("unit") or ""
        baseline = f"{_num(r.get('baseline'))} {unit}".strip() if r.get("baseline") is not None else "-"
        lines.append(f"  {r['name']}: {_num(r.get('figure'))} {unit}; baseline {baseline}; "
                     f"ratio {_num(r.get('ratio'))} (target {r.get('target') or '-'}) {verdict(r, quick)}")
    if not outcome.results:
        status = "did not finish" if outcome.status is None else f"exit status {outcome.status}"
        lines.append(f"  no RESULT line ({status}); its last lines:")
        lines.extend(f"    {line}" for line in outcome.tail)
    lines.extend(f"  problem: {p}" for p in outcome.problems)
    if outcome.status not in (0, None):
        lines.append(f"  FAILED TO RUN: exit status {outcome.status}")
    return lines


def table(outcomes: list[Outcome], quick: bool) -> str:
    header = ("benchmark", "figure", "baseline", "ratio", "target", "verdict")
    rows: list[tuple[str, ...]] = []
    for o in outcomes:
        run_state = "ran" if o.ran else ("did not finish" if o.status is None else f"exit {o.status}")
        if not o.results:
            rows.append((o.name, "-", "-", "-", "-", f"no result, {run_state}"))
        for r in o.results:
            unit = r.get("unit") or ""
            baseline = f"{_num(r.get('baseline'))} {unit}".strip() if r.get("baseline") is not None else "-"
            rows.append((r["name"], f"{_num(r.get('figure'))} {unit}".strip(), baseline, _num(r.get("ratio")),
                         str(r.get("target") or "-"),
                         verdict(r, quick) if o.ran else f"{verdict(r, quick)}, {run_state}"))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(header, widths, strict=True)).rstrip(),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    benches = discover()
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true",
                        help="pass --quick to every benchmark; targets become informative only")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=sorted(benches),
                        help=f"run only these ({', '.join(sorted(benches))})")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per benchmark before it is stopped (default: 900 with --quick, 3600 without)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, path in benches.items():
            print(f"{name:12s} {path.relative_to(ROOT)}")
        return 0
    names = args.only or list(benches)
    timeout = args.timeout or (900.0 if args.quick else 3600.0)

    outcomes: list[Outcome] = []
    try:
        for name in names:
            outcome = run_one(name, benches[name], args.quick, timeout)
            outcomes.append(outcome)
            print(f"--- {name}: {'ran' if outcome.ran else 'FAILED TO RUN'} in {outcome.seconds:.0f} s")
            print("\n".join(describe(outcome, args.quick)), flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted; the benchmark that was running has been stopped", file=sys.stderr)
        return 130

    mode = "quick mode: targets are informative only" if args.quick else "full mode"
    print(f"\n=== summary ({mode})")
    print(table(outcomes, args.quick))
    failed = [o.name for o in outcomes if not o.ran]
    if failed:
        print(f"\nfailed to run: {', '.join(failed)}")
        return 1
    missed = [r["name"] for o in outcomes for r in o.results if r.get("pass") is False]
    if missed and not args.quick:
        print(f"\ntargets missed (exit status unaffected): {', '.join(missed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
