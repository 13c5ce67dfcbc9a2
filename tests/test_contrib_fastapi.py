"""``serve`` mounted in a FastAPI application, over real HTTP: uvicorn on a free port."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from batchbridge.contrib.fastapi import mount_bridge
from batchbridge.core import normalize

fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

SAMPLES = Path(__file__).resolve().parent.parent / "core" / "samples"
SUCCEEDED = (SAMPLES / "aws-eventbridge-job-succeeded.json").read_bytes()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Served:
    def __init__(self, app: Any) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, lifespan="on",
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        end = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > end or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)


@pytest.fixture
def app_and_file(tmp_path: Path) -> Iterator[tuple[Any, Path, Any]]:
    out = tmp_path / "events.jsonl"
    app = fastapi.FastAPI()

    @app.get("/hello")
    def hello() -> dict[str, str]:
        return {"hello": "world"}

    bridge = mount_bridge(app, "/batch", {"routes": [{"to": f"file://{out}"}]}, outbox=tmp_path / "outbox.db")
    yield app, out, bridge
    bridge.stop()


def test_mounted_receiver_over_http(app_and_file: tuple[Any, Path, Any]) -> None:
    app, out, bridge = app_and_file
    with Served(app) as served, httpx.Client(base_url=served.url, timeout=10) as client:
        assert client.get("/hello").json() == {"hello": "world"}
        assert bridge.running, "the host application's lifespan starts the bridge"
        r = client.post("/batch/events", content=SUCCEEDED, headers={"content-type": "application/json"})
        assert r.status_code == 204, r.text
        bad = client.post("/batch/events/aws", content=b"{}")
        assert bad.status_code == 400 and bad.json()["error"] in ("malformed_payload", "unrecognized_format")
        health = client.get("/batch/healthz").json()
        assert health["status"] == "ok" and health["publishing"] is True
    # shutdown drained the outbox before stopping the bridge
    assert not bridge.running
    [event] = [json.loads(line) for line in out.read_text().splitlines()]
    assert event == normalize(SUCCEEDED)[0]
