"""MNS pushes against ``serve`` as an attacker sends them (uvicorn on a free port, httpx): certificate
URLs off the documented allow-list get 403 and cause no connection anywhere (a local trap server
counts them); a redirecting certificate host is not followed; a slow certificate host holds up neither
``/healthz`` nor genuine pushes; stale ``Date``s and bodies without Content-MD5 are refused by default.

Certificate fetches use the real fetcher (urllib, no-redirect handler, size and time bounds); for hosts
the test must stand in for (nothing here may reach Alibaba), the URL is mapped to a local server
*after* the allow-list passed it.
"""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from batchbridge.core.bridge import Bridge
from batchbridge.core.config import config_from_dict
from batchbridge.core.mns_signature import MnsVerifier, _fetch
from batchbridge.core.serve import create_app
from fault_tools import MNS_CERT_URL, MnsSigner
from uvicorn_thread import run_uvicorn
from vendor_payloads import alibaba_job, mns_xml

ALLOWED_HOST = "mnstest.oss-cn-hangzhou.aliyuncs.com"


class Trap:
    """A TCP listener that only counts who connects (and, as asked, holds or redirects them)."""

    def __init__(self, answer: bytes | None = None) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.answer = answer
        self._held: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            if self.answer is not None:
                conn.recv(4096)
                conn.sendall(self.answer)
                conn.close()
            else:
                self._held.append(conn)  # never answered: a certificate host that hangs

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        for c in self._held:
            c.close()


@pytest.fixture(scope="module")
def signer() -> MnsSigner:
    return MnsSigner()


@pytest.fixture
def trap() -> Iterator[Trap]:
    t = Trap()
    yield t
    t.close()


def serve_with(tmp_path: Path, verifier: MnsVerifier) -> tuple[Bridge, str, Callable[[], None]]:
    bridge = Bridge(config_from_dict({"outbox": {"path": str(tmp_path / "outbox.db")}}))
    url, stop = run_uvicorn(create_app(bridge, mns_verifier=verifier))
    return bridge, url, stop


def body() -> bytes:
    return mns_xml(orjson.dumps(alibaba_job("OnJobFailed")).decode())


def forged_urls(port: int) -> list[str]:
    return [
        f"https://127.0.0.1:{port}/x509_public_certificate.pem",
        "https://attacker-bucket.oss-cn-hangzhou.aliyuncs.com/x509_public_certificate.pem",  # bucket-style
        "https://mnstest.oss-cn-beijing.aliyuncs.com/x509_public_certificate.pem",            # another region
        "https://mns.cn-hangzhou.aliyuncs.com/x509_public_certificate.pem",                    # not documented
        f"https://{ALLOWED_HOST}.127.0.0.1.nip.io/c.pem",                                      # lookalike
        "https://mnstestxoss-cn-hangzhou.aliyuncs.com/c.pem",
        f"https://{ALLOWED_HOST}@127.0.0.1:{port}/c.pem",                                      # userinfo
        f"https://x:y@{ALLOWED_HOST}/c.pem",
        f"https://{ALLOWED_HOST}:{port}/c.pem",                                                # port
        f"https://{ALLOWED_HOST}:443/c.pem",
        "https://mnstest.oss-cn-hangzhou.aliyuncs\u3002com/c.pem",                            # IDN tricks
        "https://mnstest.oss-cn-hangzhou.aliyunc\u0455.com/c.pem",
        "https://xn--mnstest-oss-cn-hangzhou-aliyuncs-7ya.com/c.pem",
        f"https://{ALLOWED_HOST}%2e127.0.0.1/c.pem",
        f"http://{ALLOWED_HOST}/x509_public_certificate.pem",                                   # not https
        f"https://{ALLOWED_HOST}/c.pem?@127.0.0.1:{port}",                                    # query
        f"https://{ALLOWED_HOST}/../c.pem",
    ]


def test_forged_certificate_urls_are_403_and_nothing_is_fetched(tmp_path: Path, signer: MnsSigner,
                                                                 trap: Trap) -> None:
    fetched: list[str] = []

    def fetch(url: str, timeout: float) -> bytes:
        fetched.append(url)
        return _fetch(url, timeout)

    bridge, url, stop = serve_with(tmp_path, MnsVerifier(config_from_dict({}).serve.mns, fetch=fetch))
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            for cert_url in forged_urls(trap.port):
                payload = body()
                headers = signer.headers(payload)
                headers["x-mns-signing-cert-url"] = base64.b64encode(cert_url.encode()).decode()
                r = client.post("/events", content=payload, headers=headers)
                assert r.status_code == 403, (cert_url, r.text)
                assert r.json()["error"] == "bad_signature"
        assert bridge.outbox.depth() == 0 and bridge.stats.snapshot()["received"] == 0
    finally:
        stop()
        bridge.stop()
    assert fetched == [] and trap.connections == 0


def test_a_redirecting_certificate_host_is_not_followed(tmp_path: Path, signer: MnsSigner, trap: Trap) -> None:
    redirect = Trap(answer=(f"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{trap.port}/cert.pem\r\n"
                            "Content-Length: 0\r\nConnection: close\r\n\r\n").encode())

    def fetch(url: str, timeout: float) -> bytes:
        # the allow-list passed the documented URL; it is served here by the redirecting stand-in
        return _fetch(f"http://127.0.0.1:{redirect.port}{urlsplit(url).path}", timeout)

    bridge, url, stop = serve_with(tmp_path, MnsVerifier(config_from_dict({}).serve.mns, fetch=fetch))
    try:
        payload = body()
        r = httpx.post(url + "/events", content=payload, headers=signer.headers(payload), timeout=10)
        assert r.status_code == 403 and r.json()["where"] == "x-mns-signing-cert-url"
    finally:
        stop()
        bridge.stop()
        redirect.close()
    assert redirect.connections == 1 and trap.connections == 0


def test_a_hanging_certificate_host_stalls_neither_healthz_nor_genuine_pushes(tmp_path: Path, signer: MnsSigner,
                                                                              trap: Trap) -> None:
    def fetch(url: str, timeout: float) -> bytes:
        if url == MNS_CERT_URL:
            return signer.pem
        return _fetch(f"http://127.0.0.1:{trap.port}{urlsplit(url).path}", timeout)  # hangs

    settings = config_from_dict({"serve": {"mns": {"cert_timeout": 3.0}}}).serve.mns
    bridge, url, stop = serve_with(tmp_path, MnsVerifier(settings, fetch=fetch))
    try:
        with httpx.Client(base_url=url, timeout=15) as client:
            payload = body()
            assert client.post("/events", content=payload, headers=signer.headers(payload)).status_code == 204

            def forged(i: int) -> int:
                h = signer.headers(payload, cert_url=f"https://{ALLOWED_HOST}/unknown-{i}.pem")
                return httpx.post(url + "/events", content=payload, headers=h, timeout=15).status_code

            with ThreadPoolExecutor(30) as pool:
                flood = [pool.submit(forged, i) for i in range(30)]
                time.sleep(0.2)  # let the flood arrive (what it does is awaited below)
                slowest = 0.0
                for _ in range(10):
                    started = time.monotonic()
                    assert client.get("/healthz").status_code == 200
                    r = client.post("/events", content=payload, headers=signer.headers(payload))
                    assert r.status_code == 204, r.text
                    slowest = max(slowest, time.monotonic() - started)
                statuses = [f.result() for f in flood]
        assert slowest < 1.5, slowest  # a request held up by a hanging fetch would take 3 s (cert_timeout)
        assert set(statuses) == {403}
        # at most max_fetches connections ever reached the hanging host, and after they failed the
        # host is on backoff: a new URL there is refused without another connection
        assert trap.connections <= settings.max_fetches
        seen = trap.connections
        h = signer.headers(payload, cert_url=f"https://{ALLOWED_HOST}/later.pem")
        started = time.monotonic()
        assert httpx.post(url + "/events", content=payload, headers=h, timeout=15).status_code == 403
        assert time.monotonic() - started < 0.5 and trap.connections == seen
    finally:
        stop()
        bridge.stop()


@pytest.mark.parametrize("case", ["a Date from 2019", "a Date an hour ahead", "no Content-MD5"])
def test_replays_and_unbound_bodies_are_refused_by_default(tmp_path: Path, signer: MnsSigner, case: str) -> None:
    verifier = MnsVerifier(config_from_dict({}).serve.mns, trust_store={MNS_CERT_URL: signer.pem})
    bridge, url, stop = serve_with(tmp_path, verifier)
    payload = body()
    kw: dict[str, Any] = {"date": "Wed, 25 May 2019 10:46:14 GMT"} if case == "a Date from 2019" else \
        {"date": formatdate(time.time() + 3600, usegmt=True)} if case == "a Date an hour ahead" else {"md5": ""}
    try:
        r = httpx.post(url + "/events", content=payload, headers=signer.headers(payload, **kw), timeout=10)
        assert r.status_code == 403, r.text
        assert r.json()["where"] == ("content-md5" if case == "no Content-MD5" else "date")
        assert httpx.post(url + "/events", content=payload, headers=signer.headers(payload),
                          timeout=10).status_code == 204
    finally:
        stop()
        bridge.stop()
