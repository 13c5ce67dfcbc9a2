"""``batchbridge serve`` on a PostgreSQL outbox (a real server, ``tests/pg_server.py``): intake answers
503 while PostgreSQL is down and resumes once it is back, ``/readyz`` says why in between, and every
event acknowledged before, and after, reaches the destination."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
from fault_tools import ServeProcess, wait_until
from pg_server import PgServer
from test_replicas import job_events, read_destination


def test_intake_answers_503_while_postgresql_is_down_and_resumes(tmp_path: Path, pg_server: PgServer,
                                                                 pg_url: str) -> None:
    dest = tmp_path / "dest.jsonl"
    config = tmp_path / "bridge.toml"
    config.write_text(f'[outbox]\nurl = "{pg_url}"\n\n[[routes]]\nto = "file://{dest}"\n')
    before, during, after = job_events("job-pg-a"), job_events("job-pg-b"), job_events("job-pg-c")
    serve = ServeProcess(config, tmp_path / "serve.log")
    try:
        with httpx.Client(base_url=serve.url, timeout=30) as client:
            for body, _ in before:
                assert client.post("/events", content=body).status_code == 204
            pg_server.stop()
            try:
                refused = client.post("/events", content=during[0][0])
                assert refused.status_code == 503, refused.text
                assert refused.json()["error"] == "outbox_unavailable" and "retry-after" in refused.headers
                ready = client.get("/readyz")
                assert ready.status_code == 503 and "PostgreSQL is unavailable" in ready.text
                assert serve.alive()
            finally:
                pg_server.start()

            def accepted() -> bool:
                with contextlib.suppress(httpx.TransportError):
                    return client.post("/events", content=during[0][0]).status_code == 204
                return False

            wait_until(accepted, 30, poll=0.2, what="intake to resume after the restart")
            for body, _ in [*during[1:], *after]:
                assert client.post("/events", content=body).status_code == 204
            assert client.get("/readyz").status_code == 200
        want = {eid for _, eid in [*before, *during, *after]}
        wait_until(lambda: want <= read_destination(dest).ids(), 60, poll=0.2, what="every event delivered")
    finally:
        serve.kill()
    assert "Traceback" not in serve.log()
