"""Shared fixtures. Backend servers (moto, LocalStack, Pub/Sub emulator, Service Bus stand-in) are
started by fixtures in their own modules under ``tests/`` on free ports and stopped at the end.

``bash tests/run.sh`` runs the tests in four pytest-xdist workers (``--dist loadgroup``). Each worker is
its own session with its own servers, so the tests that need an expensive server process (LocalStack,
the Pub/Sub emulator's JVM) are grouped onto one worker: that server starts once per run, not once per
worker. The figures the experiments print at the end are sent from the workers to the run's summary."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

# the conformance suite and the test servers are plain modules beside the tests
sys.path.insert(0, str(Path(__file__).parent))

# backend servers, each started once per session on a free port, on first use
pytest_plugins = ["aws_servers", "pubsub_servers", "pg_server"]

#: fixture -> the xdist group whose worker alone starts that server
_SERVER_GROUPS = {"localstack_server": "localstack", "pubsub_emulator": "pubsub-emulator"}

#: summary lines the xdist workers sent back (the controller prints them)
_WORKER_LINES: list[str] = []


# tryfirst: pytest-xdist's own hook turns xdist_group marks into the node-id suffix that --dist
# loadgroup schedules by, so the marks must be on before it runs (and pytest must be < 9.2, see
# pyproject.toml: without the suffix every worker started a LocalStack and an emulator JVM of its own)
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # tests/run.sh runs the suite in two phases: everything but the @solo tests on several workers, then
    # the @solo tests (they time latency, memory or recovery) alone, so that what they time is the
    # server and not the other workers' share of the cores; plain pytest runs everything at once
    phase = os.environ.get("BATCHBRIDGE_SOLO_PHASE")
    if phase in ("skip", "only"):
        keep: list[pytest.Item] = []
        drop: list[pytest.Item] = []
        for item in items:
            (keep if (item.get_closest_marker("solo") is not None) == (phase == "only") else drop).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if item.get_closest_marker("localstack") is not None:
            names.add("localstack_server")
        for fixture, group in _SERVER_GROUPS.items():
            if fixture in names:
                item.add_marker(pytest.mark.xdist_group(group))
                break


def _summary_lines() -> list[str]:
    import fault_tools
    import pubsub_servers

    return [*pubsub_servers.REPORT, *fault_tools.REPORT]


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: its figures go to the controller
        workeroutput["batchbridge_summary"] = _summary_lines()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    for line in getattr(node, "workeroutput", {}).get("batchbridge_summary", []):
        if line not in _WORKER_LINES:
            _WORKER_LINES.append(line)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _WORKER_LINES:
        terminalreporter.write_line("figures from the test workers (fault experiments, backends used):")
    for line in _WORKER_LINES:
        terminalreporter.write_line(line)
