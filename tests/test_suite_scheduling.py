"""The suite's own scheduling: tests that need LocalStack or the Pub/Sub emulator run on one xdist worker.

Each worker is a session of its own, so a test spread to every worker starts that server on every worker
(a JVM, or ~500 MB of LocalStack, four times over). tests/conftest.py marks those tests with an
``xdist_group``; this runs that conftest, in a real pytest-xdist run, on stand-in tests that take the
same fixtures, and reads back which worker ran each one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent

STAND_INS = '''
import os

import pytest


def _note(kind: str) -> None:
    with open(os.environ["BB_SCHEDULING_OUT"], "a") as out:
        out.write(f"{kind} {os.environ['PYTEST_XDIST_WORKER']}\\n")


@pytest.fixture
def localstack_server() -> None:  # stands in for the real one: only its name matters here
    return None


@pytest.fixture
def pubsub_emulator() -> None:
    return None


@pytest.mark.parametrize("n", range(8))
def test_on_localstack(localstack_server: None, n: int) -> None:
    _note("localstack")


@pytest.mark.parametrize("n", range(8))
def test_on_the_emulator(pubsub_emulator: None, n: int) -> None:
    _note("emulator")


@pytest.mark.parametrize("n", range(8))
def test_on_nothing(n: int) -> None:
    _note("free")
'''


def test_tests_sharing_an_expensive_server_run_on_one_worker(tmp_path: Path) -> None:
    (tmp_path / "test_stand_ins.py").write_text(STAND_INS)
    out = tmp_path / "workers.txt"
    env = {**os.environ, "BB_SCHEDULING_OUT": str(out),
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    env.pop("BATCHBRIDGE_SOLO_PHASE", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-n", "2", "--dist", "loadgroup", "-q",
         "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path / "test_stand_ins.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    ran: dict[str, list[str]] = {}
    for line in out.read_text().splitlines():
        kind, worker = line.split()
        ran.setdefault(kind, []).append(worker)
    assert {kind: len(workers) for kind, workers in ran.items()} == {"localstack": 8, "emulator": 8, "free": 8}
    assert len(set(ran["localstack"])) == 1, ran
    assert len(set(ran["emulator"])) == 1, ran
