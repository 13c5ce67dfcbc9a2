"""``GET /status`` in a real headless Chromium, ``GET /state`` and ``batchbridge state`` on a real outbox."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from lifecycle_fleet import fleet, superseding_app
from uvicorn_thread import run_uvicorn

TOKEN = "status-token-0123456789abcdef"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's package, installed by .ci/run


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Any, Any]]:
    f = fleet(10, duplicate=True)
    (tmp_path / "blocker").write_text("a file where the destination's directory would be")
    # a destination that cannot open: its rows wait in the outbox, as its backlog
    app = superseding_app(tmp_path, TOKEN, {"name": "down", "to": f"file://{tmp_path}/blocker/x.jsonl"})
    url, stop = run_uvicorn(app)
    try:
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {TOKEN}"}) as c:
            for _, body in f.bodies:
                assert c.post("/events", content=body).status_code == 204
            assert c.post("/events", content=b'{"not": "an event"}').status_code == 400
        yield url, f, app.state.bridge
    finally:
        stop()


def _chromium(tmp: Path, *args: str) -> str:
    with tempfile.TemporaryDirectory(dir=tmp) as profile:
        done = subprocess.run(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", *args],
            capture_output=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.decode()


def test_status_page_in_headless_chromium(served: tuple[str, Any, Any], tmp_path: Path) -> None:
    url, f, _bridge = served
    assert httpx.get(f"{url}/status").status_code == 401
    dom = _chromium(tmp_path, "--dump-dom", f"{url}/status?token={TOKEN}")
    assert "<h1>batchbridge</h1>" in dom
    for subject, state in f.truth.items():
        if subject.count("/") == 1:  # each job and environment heads its timeline
            assert f'data-resource="{subject}"' in dom, subject
        assert f'data-subject="{subject}" data-state="{state}"' in dom, subject
    assert 'class="st succeeded"' in dom and 'class="st running"' in dom and 'class="st deleted"' in dom
    row = dom.split("blocker/x.jsonl", 1)[1].split("</tr>", 1)[0]
    assert f'<td class="num">{f.events}</td>' in row  # the destination that is down, with its whole backlog
    assert "FileExistsError" in row  # and why
    assert "unrecognized_format" in dom  # the dead letter, by reason
    assert TOKEN not in dom
    shot = tmp_path / "status.png"
    _chromium(tmp_path, "--window-size=1400,1800", f"--screenshot={shot}", f"{url}/status?token={TOKEN}")
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot: {shot}")


def test_state_endpoint_and_command_agree(served: tuple[str, Any, Any], tmp_path: Path) -> None:
    url, f, bridge = served
    with httpx.Client(base_url=url, headers={"x-batchbridge-token": TOKEN}) as c:
        view = c.get("/state").json()
        assert c.get("/state", params={"limit": "x"}).status_code == 400
        one = c.get("/state", params={"subject": view[0]["subject"]}).json()
    assert {r["subject"]: r["state"] for r in view} == f.truth
    assert one == [view[0]]
    outbox = str(bridge.outbox.path)
    cmd = [sys.executable, "-m", "batchbridge.core.cli", "state", "--outbox", outbox]
    lines = subprocess.run([*cmd, "--json"], capture_output=True, check=True).stdout.splitlines()
    assert [orjson.loads(line) for line in lines] == view
    table = subprocess.run([*cmd, "environments/*"], capture_output=True, check=True, text=True).stdout.splitlines()
    assert table[0].split() == ["subject", "type", "state", "time", "sequence", "id", "provider"]
    assert sorted(line.split()[0] for line in table[1:]) == sorted(s for s in f.truth if s.startswith("environments/"))
    limited = subprocess.run([*cmd, "--limit", "2"], capture_output=True, check=True, text=True)
    assert len(limited.stdout.splitlines()) == 3 and "--limit" in limited.stderr
    missing = subprocess.run([*cmd[:-1], str(tmp_path / "nope.db")], capture_output=True, text=True)
    assert missing.returncode == 2 and "no outbox here" in missing.stderr and "Traceback" not in missing.stderr
