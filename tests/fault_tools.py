"""Helpers for the fault-injection, hostile-input and security experiments (``test_faults_*``,
``test_hostile_*``, ``test_security``).

* :class:`Figures` and :func:`record`: every experiment reports sent / delivered / lost / duplicates /
  time to recover. The figures go to a JSON file (``$BATCHBRIDGE_FAULTS_RESULTS``, default
  ``<tmp>/batchbridge-faults/results.json``; one object per experiment, newest last) and to a summary
  line printed at the end of the pytest run.
* :class:`Arrivals`: a thread-safe ledger of what reached the destination (count and bodies per id).
* :func:`tencent_payloads`: N distinct vendor payloads with their canonical event ids.
* :class:`CliProcess`: ``batchbridge serve`` / ``relay`` as a real subprocess, killable at any moment.
* :func:`scale`: how many runs / payloads an experiment does (bounded by default, full with
  ``BATCHBRIDGE_FAULTS_FULL=1`` or when the run selects ``-m faults``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from batchbridge.core.normalizing import normalize
from vendor_payloads import compact, tencent_element, tencent_message

ROOT = Path(__file__).resolve().parent.parent
FULL_ENV = "BATCHBRIDGE_FAULTS_FULL"
RESULTS_ENV = "BATCHBRIDGE_FAULTS_RESULTS"

#: summary lines printed at the end of the run
REPORT: list[str] = []


# --- how big a run is -------------------------------------------------------------------------------


def full_run(config: pytest.Config | None = None) -> bool:
    """True with ``BATCHBRIDGE_FAULTS_FULL=1``, or when the run was started with ``-m faults``."""
    if os.environ.get(FULL_ENV) == "1":
        return True
    if config is not None:
        marker = str(config.getoption("-m", default="") or "")
        return "faults" in marker and "not faults" not in marker
    return False


def scale(config: pytest.Config | None, bounded: int, full: int) -> int:
    return full if full_run(config) else bounded


# --- figures ----------------------------------------------------------------------------------------


@dataclass
class Figures:
    experiment: str
    backend: str
    fault: str
    sent: int
    delivered: int
    lost: int
    duplicates: int
    #: seconds from the end of the fault until everything sent before it had arrived
    recovery_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        rec = "-" if self.recovery_s is None else f"{self.recovery_s:.2f}s"
        extra = "".join(f" {k}={v}" for k, v in self.extra.items())
        return (f"[faults] {self.experiment} ({self.backend}; {self.fault}): sent={self.sent} "
                f"delivered={self.delivered} lost={self.lost} duplicates={self.duplicates} recovery={rec}{extra}")


def results_path() -> Path:
    explicit = os.environ.get(RESULTS_ENV)
    path = Path(explicit) if explicit else Path(tempfile.gettempdir()) / "batchbridge-faults" / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


_results_lock = threading.Lock()


class _Summary:
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if REPORT:
            terminalreporter.write_line(f"fault/hostile-input figures (also in {results_path()}):")
        for line in REPORT:
            terminalreporter.write_line(line)


def record(fig: Figures, config: pytest.Config | None = None) -> Figures:
    """Append ``fig`` to the results file and to the end-of-run summary."""
    line = fig.line()
    REPORT.append(line)
    print(line)
    if config is not None and not config.pluginmanager.has_plugin("batchbridge-faults-summary"):
        config.pluginmanager.register(_Summary(), "batchbridge-faults-summary")
    path = results_path()
    # the xdist workers append to the same file: a file lock, as well as the lock for this process's threads
    with _results_lock, open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            existing = json.loads(path.read_text()) if path.exists() else []
        except ValueError:
            existing = []
        if not isinstance(existing, list):
            existing = []
        existing.append({**asdict(fig), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        path.write_text(json.dumps(existing, indent=1))
    return fig


# --- events -----------------------------------------------------------------------------------------

NAMES = ("JOB_RUNNING", "JOB_SUCCEED", "JOB_FAILED", "TASK_RUNNING", "TASK_SUCCEED", "TASK_FAILED",
         "TASK_INSTANCE_SUCCEED", "TASK_INSTANCE_FAILED")


def tencent_payloads(n: int, tag: str = "f") -> list[tuple[bytes, str]]:
    """``n`` distinct Tencent CMQ payloads (one event each) and their canonical ids."""
    out = []
    for i in range(n):
        body = compact(tencent_message(tencent_element(NAMES[i % len(NAMES)], JobId=f"job-{tag}{i:06d}",
                                                       TaskInstanceIndex=i)))
        out.append((body, normalize(body)[0]["id"]))
    return out


def canonical_events(n: int, tag: str = "c") -> list[dict[str, Any]]:
    """``n`` distinct canonical events (what a source queue fed by the bridge itself carries)."""
    return [normalize(body)[0] for body, _ in tencent_payloads(n, tag)]


class Arrivals:
    """What reached a destination: per event id, how often, the bodies, and the first arrival time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.first: dict[str, float] = {}
        self.bodies: dict[str, set[bytes]] = {}
        self.foreign: list[bytes] = []

    def add(self, body: bytes, event_id: str | None = None) -> None:
        if event_id is None:
            try:
                doc = orjson.loads(body)
                event_id = str(doc["id"])
                # the same event published twice is the same JSON up to key order
                body = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
            except (orjson.JSONDecodeError, KeyError, TypeError):
                with self._lock:
                    self.foreign.append(body)
                return
        with self._lock:
            self.counts[event_id] = self.counts.get(event_id, 0) + 1
            self.first.setdefault(event_id, time.monotonic())
            self.bodies.setdefault(event_id, set()).add(body)

    def ids(self) -> set[str]:
        with self._lock:
            return set(self.counts)

    def wait_for(self, want: Iterable[str], timeout: float, poll: float = 0.05) -> bool:
        want = set(want)
        end = time.monotonic() + timeout
        while not want <= self.ids():
            if time.monotonic() > end:
                return False
            time.sleep(poll)
        return True

    def figures(self, sent: Iterable[str]) -> tuple[int, int, int]:
        """(delivered distinct, lost, duplicate deliveries) against the ids that were sent."""
        sent = set(sent)
        with self._lock:
            delivered = sent & set(self.counts)
            dups = sum(c - 1 for i, c in self.counts.items() if i in sent)
        return len(delivered), len(sent - delivered), dups

    def inconsistent_duplicates(self) -> list[str]:
        """Ids delivered more than once with different bodies (never allowed)."""
        with self._lock:
            return [i for i, b in self.bodies.items() if len(b) > 1]

    def recovery(self, ids: Iterable[str], since: float) -> float | None:
        with self._lock:
            times = [self.first[i] for i in ids if i in self.first]
        return max(0.0, max(times) - since) if times else None


def wait_until(cond: Callable[[], bool], timeout: float, poll: float = 0.05, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


class Poller(threading.Thread):
    """Runs ``step`` again and again until stopped, swallowing the errors a backend outage causes."""

    def __init__(self, step: Callable[[], None], name: str = "fault-poller") -> None:
        super().__init__(name=name, daemon=True)
        self._step = step
        self.stop_event = threading.Event()
        self.errors = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self._step()
            except Exception:
                self.errors += 1
                self.stop_event.wait(0.1)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(30)


# --- processes --------------------------------------------------------------------------------------


def rss_kib(pid: int | None = None) -> int:
    """Resident set size in KiB (``/proc``)."""
    status = Path(f"/proc/{pid or 'self'}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class CliProcess:
    """``python -m batchbridge.core.cli ARGS`` with its output in a log file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in wait()/kill()
        self.proc = subprocess.Popen([sys.executable, "-m", "batchbridge.core.cli", *args], stdout=self._log,
                                     stderr=self._log, env={**os.environ, **(env or {})}, cwd=ROOT)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self._log.close()

    def kill(self) -> int:
        self.signal(signal.SIGKILL)
        return self.wait(10)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")


class ServeProcess(CliProcess):
    def __init__(self, config: Path, log: Path, *, port: int | None = None, extra: list[str] | None = None,
                 ready: bool = True) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(["serve", "--config", str(config), "--port", str(self.port), *(extra or [])], log)
        if ready:
            self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        while True:
            assert self.alive(), self.log()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            assert time.monotonic() < end, "serve did not come up:\n" + self.log()
            time.sleep(0.05)


@contextlib.contextmanager
def processes() -> Iterator[list[CliProcess]]:
    """Every process appended is killed at the end, whatever happened."""
    started: list[CliProcess] = []
    try:
        yield started
    finally:
        for p in started:
            if p.alive():
                p.kill()


def jitter(rng: random.Random, low: float, high: float) -> float:
    return low + (high - low) * rng.random()


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- hostile payloads -------------------------------------------------------------------------------

#: byte strings spliced into payloads: structure, numbers, encodings and XML constructs decoders trip on
TOKENS: tuple[bytes, ...] = (
    b"{", b"}", b"[", b"]", b'"', b"\\", b":", b",", b"\x00", b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xed\xa0\x80",
    b"\\ud800", b"\\u0000", b"\xef\xbb\xbf", b"1e999999", b"-1e999999", b"1e-999999", b"-0", b"NaN", b"Infinity",
    b"9" * 400, b"0x10", b"null", b"true", b"[]", b"{}", b'""', b"\r\n", b"\t", b"<", b">", b"&", b"&amp;",
    b"<!DOCTYPE x [<!ENTITY a \"aaaaaaaa\">]>", b"&a;", b"<![CDATA[", b"]]>", b"<?xml version=\"1.0\"?>",
    b"<!ENTITY % p SYSTEM \"file:///etc/passwd\">", b"=", b"==", b"+/", b"-_",
)

#: raw JSON values substituted for any value of a payload (written as text: some are not valid JSON)
HOSTILE_VALUES: tuple[bytes, ...] = (
    b"1e999999", b"-1e999999", b"1" + b"0" * 5000, b"-" + b"9" * 100000, b"1.7976931348623157e309", b"null",
    b"true", b"[]", b"{}", b'""', b'"' + b"x" * 70000 + b'"', b'"\\ud800"', b'"\xff\xfe"', b'"\\u0000"',
    b"[" * 70 + b"]" * 70, b'{"a":' * 70 + b"1" + b"}" * 70, b"[" * 3000 + b"]" * 3000, b"0.0000000000000001",
    b'"2018-13-45T99:99:99Z"', b'"9999-12-31T23:59:59Z"', b'"0000-01-01T00:00:00Z"', b"-1", b"2147483648",
    b"18446744073709551616", b'"\\" onerror=alert(1)"', b'"../../etc/passwd"', b'"%s%n%x"',
    b'"' + "\u202e\u0000\U0010ffff".encode("utf-8", "surrogatepass").replace(b"\x00", b"\\u0000") + b'"',
)


class Mutator:
    """Deterministic payload mutations (a seeded ``random.Random``): byte-level (flips, cuts, inserts,
    repeats, splices), structural (any JSON value replaced by a hostile one), envelope wrapping in
    every layer the decoders open, deep nesting and other text encodings."""

    def __init__(self, seeds: list[bytes], seed: int) -> None:
        self.seeds = seeds
        self.rng = random.Random(seed)
        self.ops: list[Callable[[bytes], bytes]] = [
            self.flip, self.cut, self.insert, self.repeat, self.splice, self.truncate, self.value, self.value,
            self.value, self.wrap, self.wrap, self.nest, self.encode,
        ]

    def payload(self) -> bytes:
        data = self.rng.choice(self.seeds)
        for _ in range(self.rng.choice((1, 1, 1, 2, 2, 3))):
            data = self.rng.choice(self.ops)(data)
            if len(data) > 2_000_000:  # keep the volume run about decoding, not copying
                data = data[: self.rng.randrange(1, 2_000_000)]
        return data

    def _pos(self, data: bytes) -> int:
        return self.rng.randrange(len(data) + 1)

    def flip(self, data: bytes) -> bytes:
        if not data:
            return data
        b = bytearray(data)
        for _ in range(self.rng.randint(1, 8)):
            i = self.rng.randrange(len(b))
            b[i] ^= 1 << self.rng.randrange(8)
        return bytes(b)

    def cut(self, data: bytes) -> bytes:
        i, j = sorted((self._pos(data), self._pos(data)))
        return data[:i] + data[j:]

    def insert(self, data: bytes) -> bytes:
        i = self._pos(data)
        token = self.rng.choice(TOKENS) if self.rng.random() < 0.8 else self.rng.randbytes(self.rng.randint(1, 16))
        return data[:i] + token + data[i:]

    def repeat(self, data: bytes) -> bytes:
        i, j = sorted((self._pos(data), self._pos(data)))
        return data[:j] + data[i:j] * self.rng.randint(2, 64) + data[j:]

    def splice(self, data: bytes) -> bytes:
        other = self.rng.choice(self.seeds)
        return data[: self._pos(data)] + other[self._pos(other):]

    def truncate(self, data: bytes) -> bytes:
        return data[: self._pos(data)]

    def value(self, data: bytes) -> bytes:
        """Replace one JSON value (found by its text) with a hostile one."""
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self.insert(data)
        leaves: list[Any] = []

        def walk(v: Any) -> None:
            if isinstance(v, dict):
                leaves.extend(v.values())
                for c in v.values():
                    walk(c)
            elif isinstance(v, list):
                leaves.extend(v)
                for c in v:
                    walk(c)

        try:
            walk(doc)
            target = orjson.dumps(self.rng.choice(leaves)) if leaves else b""
        except (RecursionError, TypeError):  # nesting deeper than orjson writes back (or Python recurses)
            return self.insert(data)
        if not leaves:
            return self.rng.choice(HOSTILE_VALUES)
        if target not in data:
            return self.insert(data)
        start = data.find(target)
        return data[:start] + self.rng.choice(HOSTILE_VALUES) + data[start + len(target):]

    def wrap(self, data: bytes) -> bytes:
        import base64
        from xml.sax.saxutils import escape

        text = data.decode("utf-8", "surrogateescape")
        kind = self.rng.randrange(9)
        if kind == 0:
            return base64.b64encode(data)
        if kind == 1:
            return orjson.dumps(text.encode("utf-8", "replace").decode())
        if kind == 2:
            return orjson.dumps({"msgId": "1", "topicName": "t", "msgBody": data.decode("utf-8", "replace")})
        if kind == 3:
            body = escape(data.decode("utf-8", "replace"))
            return (f'<?xml version="1.0"?><Notification xmlns="http://mns.aliyuncs.com/doc/v1/"><MessageId>1'
                    f"</MessageId><Message>{body}</Message></Notification>").encode()
        if kind == 4:
            return orjson.dumps({"Type": self.rng.choice(["Notification", "SubscriptionConfirmation"]),
                                 "TopicArn": "arn:aws:sns:us-east-1:1:t", "Message": data.decode("utf-8", "replace"),
                                 "SubscribeURL": "http://127.0.0.1:9/confirm", "Signature": "AAAA"})
        if kind == 5:
            return orjson.dumps({"message": {"data": base64.b64encode(data).decode(), "attributes": {"a": "b"}},
                                 "subscription": "projects/p/subscriptions/s"})
        if kind == 6:
            return orjson.dumps({"records": [self._obj(data)] * self.rng.randint(1, 3)})
        if kind == 7:
            return orjson.dumps({"detail-type": "x", "source": "custom", "detail": data.decode("utf-8", "replace")})
        return orjson.dumps({"Message": data.decode("utf-8", "replace"), "MessageId": "1", "TopicName": "t"})

    @staticmethod
    def _obj(data: bytes) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return data.decode("utf-8", "replace")

    def nest(self, data: bytes) -> bytes:
        k = self.rng.choice((2, 8, 63, 64, 65, 200, 1100, 20000))
        if self.rng.random() < 0.5:
            return b"[" * k + data + b"]" * k
        return b'{"a":' * k + data + b"}" * k

    def encode(self, data: bytes) -> bytes:
        text = data.decode("utf-8", "replace")
        return text.encode(self.rng.choice(("utf-16", "utf-16-be", "utf-32", "latin-1")), "replace")


# --- MNS pushes ---------------------------------------------------------------------------------------

MNS_CERT_URL = "https://mnstest.oss-cn-hangzhou.aliyuncs.com/x509_public_certificate.pem"


class MnsSigner:
    """Signs MNS pushes the way Alibaba documents it, with a throwaway key and certificate."""

    def __init__(self) -> None:
        import datetime as dt

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "batchbridge-fault-tests")])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=1)).sign(self.key, hashes.SHA256()))
        self.pem = cert.public_bytes(serialization.Encoding.PEM)
        self.key_pem = self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())

    def headers(self, body: bytes, path: str = "/events", *, cert_url: str = MNS_CERT_URL,
                date: str | None = None, md5: str | None = None) -> dict[str, str]:
        import base64
        import hashlib
        from email.utils import formatdate

        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        h = {
            "Content-MD5": hashlib.md5(body).hexdigest().upper() if md5 is None else md5,
            "Content-Type": "text/xml;charset=utf-8",
            "Date": date or formatdate(usegmt=True),
            "x-mns-request-id": "6423F9B7BF94313030AF5EA0",
            "x-mns-version": "2015-06-06",
            "x-mns-signing-cert-url": base64.b64encode(cert_url.encode()).decode(),
        }
        if not h["Content-MD5"]:
            del h["Content-MD5"]
        mns = sorted((k.lower(), v) for k, v in h.items() if k.lower().startswith("x-mns-"))
        text = "POST\n" + h.get("Content-MD5", "") + "\n" + h["Content-Type"] + "\n" + h["Date"] + "\n"
        text += "".join(f"{k}:{v}\n" for k, v in mns) + path
        h["Authorization"] = base64.b64encode(self.key.sign(text.encode(), padding.PKCS1v15(), hashes.SHA1())).decode()
        return h


# --- the figures as a table ---------------------------------------------------------------------------


def markdown(results: list[dict[str, Any]]) -> str:
    """The results file as one Markdown table (newest figures per experiment, backend and fault)."""
    latest: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in results:
        latest[(r["experiment"], r["backend"], r["fault"])] = r
    lines = ["| experiment | backend | fault | sent | delivered | lost | duplicates | recovery | notes |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in latest.values():
        rec = "-" if r["recovery_s"] is None else f"{r['recovery_s']:.2f} s"
        notes = ", ".join(f"{k}={v}" for k, v in r.get("extra", {}).items())
        lines.append(f"| {r['experiment']} | {r['backend']} | {r['fault']} | {r['sent']} | {r['delivered']} | "
                     f"{r['lost']} | {r['duplicates']} | {rec} | {notes} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python tests/fault_tools.py [results.json]: the figures as Markdown
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else results_path()
    print(markdown(json.loads(path.read_text())))
