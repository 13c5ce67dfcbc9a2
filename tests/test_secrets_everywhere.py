"""Credentials in every part of a backend URI -- a userinfo user and password and a query key inside a
URI-valued option (``endpoint_url``), secret options -- appear in no output: ``serve`` logs (JSON, debug
level), its error bodies and ``/metrics``, ``dlq list`` in every format (``--json --payload`` too, with
``--config`` and with ``--outbox``), ``publish -vv``, config reprs. Real processes, real HTTP."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import httpx
from batchbridge.core.config import load_config
from fault_tools import free_port
from vendor_payloads import compact, tencent_element, tencent_message

SECRETS = ("proxyuser42", "pa55word-x", "sekr1tsig", "AKIAEXAMPLE1234", "s3cr3tkey99")
URI = ("sqs://q?region=us-east-1&endpoint_url=http://proxyuser42:pa55word-x@127.0.0.1:1/?X-Amz-Signature=sekr1tsig"
       "&aws_access_key_id=AKIAEXAMPLE1234&aws_secret_access_key=s3cr3tkey99&connect_timeout=0.5&max_attempts=1")


def cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "batchbridge.core.cli", *args], capture_output=True, text=True,
                          timeout=120, check=False)
    return done.stdout + done.stderr


def clean(text: str, what: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked in {what}: ...{text[max(0, text.find(secret) - 200):][:400]}"


def test_no_output_shows_a_credential(tmp_path: Path) -> None:
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(f'[[routes]]\nto = "{URI}"\n[outbox]\npath = "{tmp_path / "outbox.db"}"\n'
                   'backoff_initial = 0.05\nbackoff_max = 0.2\n')
    clean(repr(load_config(cfg)), "the config's repr")
    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "batchbridge.core.cli", "-vv", "--log-format", "json",
                                 "serve", "--config", str(cfg), "--port", str(port)], stdout=log, stderr=log)
        try:
            url = f"http://127.0.0.1:{port}"
            end = time.monotonic() + 20
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                assert time.monotonic() < end and proc.poll() is None, log_path.read_text()
                time.sleep(0.05)
            with httpx.Client(base_url=url, timeout=10) as c:
                good = compact(tencent_message(tencent_element("JOB_FAILED")))
                assert c.post("/events", content=good).status_code == 204
                bad = c.post("/events", content=b'{"Events": [{"EventName": "' + URI.encode() + b'"}]}')
                assert bad.status_code == 400
                clean(bad.text, "a 400 body")
                end = time.monotonic() + 20
                while b"unavailable" not in log_path.read_bytes():  # the publisher failed and said so
                    assert time.monotonic() < end, log_path.read_text()[-3000:]
                    time.sleep(0.1)
                clean(c.get("/metrics").text, "/metrics")
        finally:
            proc.terminate()
            proc.wait(20)
    clean(log_path.read_text(), "serve's JSON debug log")
    for args in (["dlq", "list"], ["dlq", "list", "--json"], ["dlq", "list", "--json", "--payload"],
                 ["dlq", "list", "--payload"]):
        for source in (["--config", str(cfg)], ["--outbox", str(tmp_path / "outbox.db")]):
            out = cli("-vv", *args, *source)
            assert "dead" in out.lower() or "{" in out or "intake" in out, out
            clean(out, " ".join(args + source[:1]))
    out = cli("-vv", "publish", "samples", "--to", URI)
    assert "EndpointConnectionError" in out, out[-2000:]  # it got as far as trying the endpoint
    clean(out, "publish -vv")
