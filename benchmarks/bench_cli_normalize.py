"""Whole-process ``batchbridge normalize FILE > out`` against the stdlib floor, with peak RSS.

Both run as their own process on the same mixed JSON Lines file (``benchmarks/_common.py``), output
to a file, alternating, median of the repetitions:

* **floor**: ``for line in f: out.write(json.dumps(json.loads(line)))`` (Base64 lines decoded first);
* **batchbridge**: the installed console script, start-up and imports included.

Each process's CPU time (user + system, from ``wait4``) is the figure compared: on a machine shared
with other work the wall clock measures the neighbours as much as the process (both are printed; on
an idle machine they agree, the work being single-threaded). The peak resident set of each process
(``ru_maxrss``) is printed beside the ratio; a second, 4x larger input shows that the CLI's peak does
not grow with its input (it streams). The package's bytecode is compiled first, as installing a
wheel does (``PYTHONDONTWRITEBYTECODE`` would otherwise make every run compile every module).
The CLI is timed as installed: with the normalising path compiled by ``setup.py`` (mypyc) where
the install had a C compiler, which its first line of output says (``BATCHBRIDGE_PURE_PYTHON=1``
times the pure-Python path instead).
Target: batchbridge <= 2x the floor: the median over the repetitions of each one's CPU-time ratio,
printed as PASS or FAIL (and in the RESULT line's ``verdict``).

    .venv/bin/python benchmarks/bench_cli_normalize.py            # 200,000 payloads x 3
    .venv/bin/python benchmarks/bench_cli_normalize.py --quick    # 20,000 payloads x 3
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from _common import emit_result, machine, payload_lines

TARGET = 2.0
FLOOR = """
import base64, json, sys
with open(sys.argv[1], "rb") as f, open(sys.argv[2], "w") as out:
    for line in f:
        if line.strip():
            out.write(json.dumps(json.loads(line if line[:1] == b"{" else base64.b64decode(line))))
"""


class Run(NamedTuple):
    cpu: float  # user + system seconds
    wall: float
    rss: float  # peak resident set, MiB


def timed(cmd: list[str], stdout_path: Path | None = None, env: dict[str, str] | None = None) -> Run:
    """CPU and wall seconds and peak RSS of one process run to completion."""
    with open(stdout_path or os.devnull, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        took = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[0]} failed with status {status}")
    return Run(usage.ru_utime + usage.ru_stime, took, usage.ru_maxrss / 1024)


def _digest(path: Path) -> str:
    """SHA-256 of a file read in pieces: a file read whole would swell this process, and with it the
    peak RSS its next child is charged before it execs."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for piece in iter(lambda: fh.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def write_input(path: Path, n: int, seed: int) -> None:
    with open(path, "wb") as fh:
        for line in payload_lines(n, seed):
            fh.write(line + b"\n")


def _baseline_env(tree: Path, tmp: Path) -> dict[str, str]:
    """The environment that runs the CLI on ``tree``'s code: a checkout (``core/`` at its top, as this
    repository is) is laid out as ``batchbridge/core`` first, since a checkout on PYTHONPATH as it is
    would still import this tree's editable install, and the "baseline" would be this tree again."""
    tree = tree.resolve()
    if (tree / "core").is_dir() and not (tree / "batchbridge").is_dir():
        package = tmp / "baseline" / "batchbridge"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        for part in ("core", "adapters", "contrib"):
            if (tree / part).is_dir():
                (package / part).symlink_to(tree / part)
        tree = package.parent
    env = {**os.environ, "PYTHONPATH": str(tree)}
    where = subprocess.run([sys.executable, "-c", "import batchbridge.core as c; print(c.__file__)"], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not Path(where).is_relative_to(tree):
        raise SystemExit(f"--baseline-tree {tree}: the CLI would still import {where}, not that tree")
    compileall.compile_dir(tree, quiet=1)
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=None, help="payloads in the stream (default 200,000)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20,000 payloads")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--baseline-tree", type=Path, metavar="DIR",
                        help="also run the CLI on the code of DIR (another checkout, or a directory holding one "
                             "as batchbridge/core), alternating, and compare the outputs")
    args = parser.parse_args(argv)
    n = args.events or (20_000 if args.quick else 200_000)
    cli = str(Path(sys.executable).parent / "batchbridge")
    print(f"machine: {machine()}")
    # which build the CLI runs: compiled by setup.py (mypyc), or pure Python and why
    build = subprocess.run([cli, "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[-1]
    print(build)
    import batchbridge.core

    for package in batchbridge.core.__path__:  # and the adapters beside it: what a wheel install compiles
        for tree in (Path(package), Path(package).parent / "adapters"):
            compileall.compile_dir(tree, quiet=1)
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        src, out = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        write_input(src, n, args.seed)
        print(f"{n:,} payloads, {src.stat().st_size / 1e6:.1f} MB of JSON Lines, {args.reps} repetitions", flush=True)
        floors: list[Run] = []
        ours: list[Run] = []
        others: list[Run] = []
        other_env = None
        if args.baseline_tree:
            other_env = _baseline_env(args.baseline_tree, Path(tmp))
        for rep in range(args.reps):
            f = timed([sys.executable, "-c", FLOOR, str(src), str(out)])
            b = timed([cli, "normalize", str(src)], out)
            floors.append(f)
            ours.append(b)
            line = (f"  rep {rep + 1}: floor {f.cpu:6.2f} s CPU ({f.wall:6.2f} s wall, {f.rss:.0f} MiB)   "
                    f"batchbridge {b.cpu:6.2f} s CPU ({b.wall:6.2f} s wall, {b.rss:.0f} MiB)   "
                    f"ratio {b.cpu / f.cpu:.2f} (wall {b.wall / f.wall:.2f})")
            if other_env is not None:
                other_out = out.with_suffix(".baseline")
                o = timed([cli, "normalize", str(src)], other_out, other_env)
                others.append(o)
                same = "same output" if _digest(other_out) == _digest(out) else "OUTPUT DIFFERS"
                line += f"   baseline tree {o.cpu:6.2f} s CPU, ratio {o.cpu / f.cpu:.2f} ({same})"
            print(line, flush=True)
        start_up = timed([cli, "normalize", "-"])
        big = Path(tmp) / "big.jsonl"
        write_input(big, 4 * n, args.seed + 1)  # payloads of their own: repeats would not be a real stream
        big_rss = timed([cli, "normalize", str(big)], Path(os.devnull)).rss
    floor = statistics.median(r.cpu for r in floors)
    ours_s = statistics.median(r.cpu for r in ours)
    # the median of each repetition's own ratio: a floor and a CLI run side by side saw the same machine
    ratio = statistics.median(b.cpu / f.cpu for f, b in zip(floors, ours, strict=True))
    wall_ratio = statistics.median(b.wall / f.wall for f, b in zip(floors, ours, strict=True))
    rss, floor_rss = max(r.rss for r in ours), max(r.rss for r in floors)
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    if others:
        print(f"baseline tree {args.baseline_tree}: ratio "
              f"{statistics.median(o.cpu / f.cpu for f, o in zip(floors, others, strict=True)):.2f}x the floor; "
              f"this tree takes {ours_s / statistics.median(o.cpu for o in others):.3f} of its CPU time")
    print(f"medians: floor {floor:.2f} s CPU, batchbridge {ours_s:.2f} s CPU (start-up alone {start_up.cpu:.2f} s)")
    print(f"{verdict}: ratio {ratio:.2f}x the floor in CPU time (median of {args.reps}; target <= {TARGET}x; "
          f"wall-clock ratio {wall_ratio:.2f}x) -- peak RSS {rss:.0f} MiB (floor {floor_rss:.0f} MiB), "
          f"{big_rss:.0f} MiB on the 4x input")
    emit_result("cli_normalize", round(ours_s, 3), "s", baseline=round(floor, 3), ratio=round(ratio, 3),
                target=f"<= {TARGET}", passed=ratio <= TARGET, verdict=verdict,
                note=f"{n} payloads, CPU seconds; wall-clock ratio {wall_ratio:.2f}; peak RSS {rss:.0f} MiB "
                     f"({big_rss:.0f} MiB on 4x the input), floor {floor_rss:.0f} MiB; start-up {start_up.cpu:.2f} s; "
                     f"{build}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
