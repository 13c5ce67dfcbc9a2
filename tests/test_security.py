"""Security properties, each shown on the real thing:

* no secret -- from a URI, a connection string, a credentials file or a header -- reaches a log
  line (any logger, DEBUG included, the SDKs' own), stdout/stderr, an error, a repr, a metric, a
  dead-letter record or the CLI's output, over a run of representative operations with known
  secrets;
* the MNS certificate URL allow-list holds against lookalike hosts, userinfo, ports, IDN and
  punycode, trailing dots, backslashes, plain http, encodings and redirects;
* the shared-token comparison is constant time (``hmac.compare_digest``, checked by reading the
  code, not by timing);
* ``serve`` binds to loopback unless told otherwise.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import inspect
import json
import logging
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from batchbridge.core import serve as serve_module
from batchbridge.core.backends import open_publisher, open_subscriber
from batchbridge.core.bridge import Bridge
from batchbridge.core.config import MnsSettings, ServeSettings, config_from_dict
from batchbridge.core.errors import BatchBridgeError
from batchbridge.core.mns_signature import MnsVerifier, SignatureError, check_cert_url
from batchbridge.core.relay import Relay
from batchbridge.core.serve import create_app
from fault_tools import MNS_CERT_URL, CliProcess, MnsSigner, ServeProcess, free_port, tencent_payloads, wait_until
from servicebus_broker import ServiceBusEnv, servicebus_broker  # noqa: F401  (the session fixture)
from uvicorn_thread import run_uvicorn

if TYPE_CHECKING:
    from aws_servers import AwsServer

ROOT = Path(__file__).resolve().parent.parent


def _secret(label: str) -> str:
    # unique per run, long, and shaped like the real thing (base64-ish characters included)
    return f"{label}{uuid.uuid4().hex}+/Zz9"


# --- no secret anywhere ------------------------------------------------------------------------------------


def _service_account(tmp_path: Path) -> tuple[Path, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path = tmp_path / "sa.json"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "p", "private_key_id": _secret("gcpkeyid"), "private_key": pem,
        "client_email": "bb@p.iam.gserviceaccount.com", "client_id": "1", "token_uri": "http://127.0.0.1:9/token",
    }))
    # one line of the key body stands for all of it
    return path, pem.splitlines()[5]


def test_no_secret_in_logs_errors_reprs_metrics_or_output(
        tmp_path: Path, moto_server: AwsServer, servicebus_broker: ServiceBusEnv,  # noqa: F811
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, the SDKs' wire logs included
    aws = moto_server
    aws_secret, aws_token = _secret("awssecret"), _secret("awstoken")
    aws_key_id = "AKIA" + uuid.uuid4().hex[:16].upper()
    sb_key = _secret("sbkey")
    token = _secret("servetoken")
    signer = MnsSigner()
    sa_path, sa_key_line = _service_account(tmp_path)
    secrets = {"aws secret key": aws_secret, "aws session token": aws_token, "aws key id": aws_key_id,
               "service bus key": sb_key, "serve token": token, "gcp private key": sa_key_line,
               "mns signing key": signer.key_pem.decode().splitlines()[3]}

    seen: list[str] = []  # every error text, repr and output collected along the way

    def note(*items: Any) -> None:
        seen.extend(str(i) for i in items)
        seen.extend(repr(i) for i in items)

    creds = f"aws_access_key_id={aws_key_id}&aws_secret_access_key={aws_secret}&aws_session_token={aws_token}"
    queue = aws.queue()
    sqs_uri = aws.uri("sqs", queue.name) + "&" + creds
    missing_sqs = aws.uri("sqs", "no-such-queue-" + uuid.uuid4().hex[:6]) + "&" + creds
    down_sqs = f"sqs://q?endpoint_url=http://127.0.0.1:9&region=us-east-1&max_attempts=1&connect_timeout=0.2&{creds}"
    os.environ["BB_SECRET_SB"] = (f"Endpoint=sb://127.0.0.1:{servicebus_broker.broker.port};"  # type: ignore[union-attr]
                                  f"SharedAccessKeyName=k;SharedAccessKey={sb_key};UseDevelopmentEmulator=true")
    sbq = servicebus_broker.queue()
    sb_uri = f"servicebus:///{sbq}?connection_string_env=BB_SECRET_SB"
    gcp_uri = f"pubsub://p/t?credentials_file={sa_path}&endpoint=127.0.0.1:9&timeout=1&retries=1"

    # 1. publishers and subscribers: success, a missing entity, an endpoint that is down
    with open_publisher(sqs_uri, retries=1) as pub:
        note(pub, pub.publish_one(tencent_event()))
    for uri in (missing_sqs, f"servicebus:///no-such-{uuid.uuid4().hex[:6]}?connection_string_env=BB_SECRET_SB",
                gcp_uri, down_sqs):
        try:
            with open_publisher(uri, retries=1) as pub:
                note(pub, *pub.publish([tencent_event()]))
        except BatchBridgeError as exc:
            note(exc, exc.to_dict())
    with open_publisher(sb_uri) as pub:
        note(pub, pub.publish_one(tencent_event()))
    with open_subscriber(sb_uri + "&max_wait_time=1") as sub:
        note(sub, *sub.receive(5, timeout=2))
    with open_subscriber(sqs_uri + "&wait_time_seconds=0") as sub:
        got = sub.receive(5, timeout=1)
        note(sub, *got)
        sub.ack(got)

    # 2. the bridge and serve: deliveries, a destination that is down, a refused event, dead letters,
    #    metrics, healthz, the token in every place a sender may put it, MNS pushes
    (tmp_path / "cert.pem").write_bytes(signer.pem)
    config = config_from_dict({
        "routes": [{"to": [sqs_uri, sb_uri, down_sqs]}],
        "unrouted": "deadletter",
        "outbox": {"path": str(tmp_path / "outbox.db"), "backoff_initial": 0.05, "backoff_max": 0.2},
        "serve": {"token": token, "mns": {"trust_store": {MNS_CERT_URL: str(tmp_path / "cert.pem")}}},
    })
    bridge = Bridge(config)
    app = create_app(bridge)
    note(bridge, config)
    server_url, stop = run_uvicorn(app, log_level="debug")
    try:
        with httpx.Client(base_url=server_url, timeout=10) as c:
            body = tencent_payloads(1, tag="sec-")[0][0]
            for kw in ({"headers": {"Authorization": f"Bearer {token}"}}, {"headers": {"X-Batchbridge-Token": token}},
                       {"params": {"token": token}}, {"headers": {"Authorization": f"Bearer {token}x"}},
                       {"params": {"token": token[:-1]}}):
                r = c.post("/events", content=body, **kw)  # type: ignore[arg-type]
                note(r.status_code, r.text, r.headers)
            r = c.post("/events", content=b"garbage", headers={"Authorization": f"Bearer {token}"})
            note(r.text)
            xml = _mns_body()
            r = c.post("/events", content=xml, headers=signer.headers(xml))
            note(r.status_code, r.text)
            wait_until(lambda: sum(bridge.stats.snapshot()["published"].values()) >= 2, 30, what="deliveries")
            # the destination that is down fails a few times (its errors are part of what is scanned)
            wait_until(lambda: sum(bridge.stats.snapshot()["failed"].values()) >= 3, 30, what="failed publishes")
            metrics = c.get("/metrics", headers={"Authorization": f"Bearer {token}"}).text
            note(metrics, c.get("/healthz").text)
        for rec in bridge.outbox.dead_letters():
            note(rec.summary(), rec.meta)
        note(bridge.stats.snapshot())
    finally:
        stop()
        bridge.stop()

    # 3. the relay's label, and the CLI's own output for the same config and URIs
    relay = Relay(Bridge(config_from_dict({"outbox": {"path": str(tmp_path / "r.db")}})), sqs_uri)
    note(relay.label)
    relay.bridge.stop()
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(f'[[routes]]\nto = ["{sqs_uri}", "{down_sqs}"]\n\n[outbox]\npath = "{tmp_path / "outbox.db"}"\n'
                   f'\n[serve]\ntoken = "{token}"\n')
    for args in (["dlq", "list", "--config", str(cfg), "--payload"], ["dlq", "list", "--config", str(cfg), "--json"],
                 ["-vv", "relay", "--from", missing_sqs, "--to", sqs_uri, "--outbox", str(tmp_path / "c.db")],
                 ["-vv", "publish", "samples", "--to", down_sqs], ["backends"]):
        p = CliProcess(args, tmp_path / "cli.log")
        p.wait(120)
        note(p.log())

    out, err = capsys.readouterr()
    haystacks = {"logs": caplog.text, "stdout": out, "stderr": err, "errors, reprs, metrics, output": "\n".join(seen)}
    leaks = [(what, where, text[max(0, text.find(s) - 300): text.find(s) + 60])
             for what, s in secrets.items() for where, text in haystacks.items() if s in text]
    assert leaks == [], "\n\n".join(map(str, leaks))
    # the operations did happen (a test that saw nothing would pass vacuously)
    assert "batchbridge_events_published_total" in haystacks["errors, reprs, metrics, output"]
    assert "***" in haystacks["errors, reprs, metrics, output"]


def test_an_sdk_debug_record_with_a_remembered_secret_is_scrubbed(caplog: pytest.LogCaptureFixture) -> None:
    """Regression: botocore's DEBUG wire log printed the session token (``X-Amz-Security-Token``) and
    the access key id to any handler but batchbridge's own; records are now scrubbed at creation."""
    from batchbridge.core.secrets import remember

    secret = _secret("wire")
    remember(secret)
    caplog.set_level(logging.DEBUG)
    logging.getLogger("botocore.endpoint").debug("Sending http request: %s", {"X-Amz-Security-Token": secret})
    try:
        raise ValueError(f"connect failed for key={secret}")
    except ValueError:
        logging.getLogger("some.sdk").exception("failed")
    assert secret not in caplog.text
    assert caplog.text.count("***") >= 2


@pytest.mark.parametrize("name,text", [
    ("a long word", "a" * 300_000),
    ("a long query name", "?" + "a" * 300_000),
    ("many query starts", "?a" * 150_000),
    ("many secret-looking names", "&akey" * 60_000),
    ("many schemes", ("a://x:" + "y" * 100) * 3_000),
    ("a scheme after a long run", "a" * 300_000 + "://x"),
    ("userinfo without @", "h://" + "u:" * 150_000),
])
def test_redact_takes_linear_time_on_hostile_text(name: str, text: str) -> None:
    """Regression (ReDoS): redact() runs on error reasons that quote attacker input (a JSON key of any
    length); its URL and query patterns backtracked quadratically -- 13 s for one 50 KB key, ~5 min for
    250 KB, all of it holding the GIL, so one request stalled every other one in ``serve``."""
    from batchbridge.core.secrets import redact

    started = time.perf_counter()
    redact(text)
    assert time.perf_counter() - started < 0.5, name


def test_config_repr_hides_credentials_in_destination_uris() -> None:
    """Regression: ``repr(BridgeConfig)`` (a debugger, an error report, a log of the config) showed
    every route's URI with its keys."""
    secret = _secret("cfg")
    config = config_from_dict({"routes": [{"to": f"sqs://q?region=x&aws_secret_access_key={secret}"}],
                               "unrouted": f"sqs://d?region=x&aws_session_token={secret}"})
    assert secret not in repr(config) and secret not in repr(config.routes[0]) and secret not in str(config)
    assert "aws_secret_access_key=***" in repr(config)


def tencent_event() -> dict[str, Any]:
    from batchbridge.core.normalizing import normalize

    return normalize(tencent_payloads(1, tag=f"e{uuid.uuid4().hex[:6]}-")[0][0])[0]


def _mns_body() -> bytes:
    import orjson
    from vendor_payloads import alibaba_job, mns_xml

    return mns_xml(orjson.dumps(alibaba_job("OnJobFailed")).decode())


# --- the MNS certificate URL allow-list --------------------------------------------------------------------

ALLOWED = ("aliyuncs.com",)
BYPASSES = [
    "http://mns.cn-hangzhou.aliyuncs.com/x509_public_certificate.pem",          # plain http
    "HTTP://mns.cn-hangzhou.aliyuncs.com/c.pem",
    "https://mns.cn-hangzhou.aliyuncs.com.evil.com/",                             # suffix lookalikes
    "https://mns.cn-hangzhou.aliyuncs.com.evil.com./c.pem",
    "https://aliyuncs.com.evil.com/c.pem",
    "https://evilaliyuncs.com/c.pem",
    "https://aliyuncs.co/c.pem",
    "https://aliyuncs.com-evil.com/c.pem",
    "https://evil.com@mns.cn-hangzhou.aliyuncs.com/c.pem",                        # userinfo
    "https://mns.cn-hangzhou.aliyuncs.com@evil.com/c.pem",
    "https://mns.cn-hangzhou.aliyuncs.com:pw@evil.com/c.pem",
    "https://mns.cn-hangzhou.aliyuncs.com%40evil.com/c.pem",
    "https://mns.cn-hangzhou.aliyuncs.com#@evil.com/c.pem",
    "https://mns.cn-hangzhou.aliyuncs.com?@evil.com/c.pem",
    "https://mns.cn-hangzhou.aliyuncs.com:443/c.pem",                             # ports
    "https://mns.cn-hangzhou.aliyuncs.com:8443/c.pem",
    "https://mns.cn-hangzhou.aliyuncs.com:/c.pem",
    "https://mns.cn-hangzhou.aliyuncs.com:0x1bb/c.pem",
    "https://mns.cn-hangzhou.aliyuncs.com\\.evil.com/c.pem",                      # backslashes
    "https://evil.com\\@mns.cn-hangzhou.aliyuncs.com/c.pem",
    "https:\\\\mns.cn-hangzhou.aliyuncs.com\\c.pem",
    "https://mns.aliyun\u0441s.com/c.pem",                                         # IDN homograph (Cyrillic es)
    "https://mns.aliyuncs\u3002com/c.pem",                                         # ideographic full stop
    "https://mns.aliyuncs\uff0ecom/c.pem",                                         # fullwidth full stop
    "https://xn--mns-aliyuncs-7ya.com/c.pem",                                      # punycode
    "https://xn--aliyuncs-7ya.com/c.pem",
    "https://mns.cn-hangzhou.aliyuncs.com\t.evil.com/c.pem",                      # control characters
    "https://mns.cn-hangzhou.aliyuncs.com\n.evil.com/c.pem",
    "https://mns.cn-hangzhou.aliyuncs.com\x00.evil.com/c.pem",
    " https://mns.cn-hangzhou.aliyuncs.com/c.pem",
    "https://mns.cn-hangzhou.aliyuncs.com%2eevil.com/c.pem",                      # percent-encoding in the host
    "https://mns%2ecn-hangzhou%2ealiyuncs%2ecom/c.pem",
    "https://127.0.0.1/c.pem",                                                    # addresses
    "https://[::1]/c.pem",
    "https://0x7f.1/c.pem",
    "https://2130706433/c.pem",
    "https:///c.pem",
    "https:/mns.cn-hangzhou.aliyuncs.com/c.pem",
    "//mns.cn-hangzhou.aliyuncs.com/c.pem",
    "mns.cn-hangzhou.aliyuncs.com/c.pem",
    "file:///etc/passwd",
    "ftp://mns.cn-hangzhou.aliyuncs.com/c.pem",
    "",
]


@pytest.mark.parametrize("url", BYPASSES)
def test_mns_certificate_url_bypass_attempts_are_refused(url: str) -> None:
    with pytest.raises(SignatureError):
        check_cert_url(url, ALLOWED)


@pytest.mark.parametrize("url", [
    "https://mns.cn-hangzhou.aliyuncs.com/x509_public_certificate.pem",
    "https://MNS.CN-HANGZHOU.ALIYUNCS.COM/x509_public_certificate.pem",  # host names are case-insensitive
    "https://mns.cn-hangzhou.aliyuncs.com./x509_public_certificate.pem",  # the same host, fully qualified
    "https://aliyuncs.com/c.pem",
])
def test_mns_certificate_url_allowed_forms(url: str) -> None:
    assert check_cert_url(url, ALLOWED) == url


@pytest.mark.parametrize("url", [*BYPASSES[:12], "https://mns.cn-hangzhou.aliyuncs.com.evil.com/"])
def test_nothing_is_fetched_for_a_refused_url(url: str) -> None:
    """The allow-list runs before the fetch: a push naming a bad URL costs no outgoing request."""
    fetched: list[str] = []

    def fetch(u: str, timeout: float) -> bytes:
        fetched.append(u)
        return b""

    verifier = MnsVerifier(MnsSettings(), fetch=fetch)
    signer = _SIGNER
    headers = signer.headers(b"<x/>", cert_url=url) if url.isascii() and url.isprintable() else {
        **signer.headers(b"<x/>"), "x-mns-signing-cert-url": base64.b64encode(url.encode()).decode()}
    with pytest.raises(SignatureError):
        verifier.verify("POST", "/events", list(headers.items()), b"<x/>")
    assert fetched == []


_SIGNER = MnsSigner()


def test_certificate_fetch_does_not_follow_redirects_even_to_allowed_hosts() -> None:
    import http.server

    from batchbridge.core.mns_signature import _fetch

    hits: list[str] = []

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(301 if self.path == "/moved" else 200)
            self.send_header("Location", "https://mns.cn-hangzhou.aliyuncs.com/x509_public_certificate.pem"
                             if self.path == "/moved" else "")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(OSError):  # urllib's HTTPError for the unfollowed 301
            _fetch(f"http://127.0.0.1:{server.server_address[1]}/moved", 2.0)
        assert hits == ["/moved"]
    finally:
        server.shutdown()
        server.server_close()


# --- constant-time token comparison (by inspection) -------------------------------------------------------


def test_token_comparison_is_constant_time_by_inspection() -> None:
    tree = ast.parse(inspect.getsource(serve_module))
    funcs = {n.name: n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    token_ok = funcs["_token_ok"]
    calls = [ast.unparse(n.func) for n in ast.walk(token_ok) if isinstance(n, ast.Call)]
    assert "hmac.compare_digest" in calls
    # no ==, !=, in, startswith or len() comparison of the secret anywhere in the module
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            text = ast.unparse(node)
            assert not any(name in text for name in ("presented", "conf.token", "token ==", "== token")) or \
                text in ("token is None", "presented is not None"), text
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "startswith", "endswith", "find", "index"):
            assert "token" not in ast.unparse(node.func.value), ast.unparse(node)
    # and it is what every protected endpoint goes through
    assert "_token_ok" in ast.unparse(funcs["_handle"])  # the intake endpoint
    assert "_token_ok" in ast.unparse(funcs["authorized"])
    for endpoint in ("healthz", "metrics"):
        assert "authorized(request)" in ast.unparse(funcs[endpoint])
    # the MNS body check compares digests the same way
    from batchbridge.core import mns_signature

    assert "hmac.compare_digest" in inspect.getsource(mns_signature.content_md5_matches)


def test_token_check_accepts_only_the_exact_token(tmp_path: Path) -> None:
    token = "exact-token-0123456789"
    bridge = Bridge(config_from_dict({"outbox": {"path": str(tmp_path / "o.db")}, "serve": {"token": token}}))
    try:
        app = create_app(bridge)

        async def statuses() -> list[int]:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bb") as client:
                out = []
                for presented in (token, token[:-1], token + "x", token.upper(), "", " " + token + "x", token[:8]):
                    r = await client.get("/metrics", headers={"Authorization": f"Bearer {presented}"})
                    out.append(r.status_code)
                return out

        assert asyncio.run(statuses()) == [200] + [401] * 6
    finally:
        bridge.stop()


# --- loopback by default -----------------------------------------------------------------------------------


def _listening(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(addr)
    return found


def test_serve_binds_to_loopback_unless_told_otherwise(tmp_path: Path) -> None:
    assert ServeSettings().host == "127.0.0.1"
    assert config_from_dict({}).serve.host == "127.0.0.1"
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(f'[outbox]\npath = "{tmp_path / "o.db"}"\n')
    serve = ServeProcess(cfg, tmp_path / "serve.log")
    try:
        assert _listening(serve.port) == {"0100007F"}  # 127.0.0.1, nothing else
    finally:
        serve.signal(signal.SIGTERM)
        assert serve.wait(30) == 0
    port = free_port()
    told = CliProcess(["serve", "--config", str(cfg), "--port", str(port), "--host", "0.0.0.0",
                       "--outbox", str(tmp_path / "o2.db")], tmp_path / "serve2.log")
    try:
        wait_until(lambda: bool(_listening(port)), 20, what="serve --host 0.0.0.0")
        assert _listening(port) == {"00000000"}
    finally:
        told.signal(signal.SIGTERM)
        told.wait(30)
