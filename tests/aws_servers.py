"""Real AWS-protocol servers for the tests: moto's HTTP server and LocalStack in host mode.

Fixtures (register with ``pytest_plugins = ["aws_servers"]``):

* ``moto_server`` (session): ``moto.server.ThreadedMotoServer`` on a free port on 127.0.0.1.
* ``localstack_server`` (session): LocalStack started in host mode (no Docker) from
  ``.venv-localstack/`` (``localstack/install-host-localstack.sh`` installs it) on a free port, and
  stopped by process group at the end. ``BATCHBRIDGE_LOCALSTACK_URL=http://localhost:4566`` targets a
  LocalStack that is already running (e.g. ``localstack/docker-compose.yml``) instead. Without either,
  the tests that need it are skipped with a reason saying how to install it, or fail when
  ``BATCHBRIDGE_REQUIRE_LOCALSTACK=1`` (CI).
* ``moto_restartable`` (function): a second moto server on its own port that a test may stop and
  start again (moto's state is per process, so queues made through ``moto_server`` exist on it too).

Both servers get dummy credentials from the environment (set for the session and restored after),
with ``~/.aws`` and any ``AWS_PROFILE`` / ``AWS_ENDPOINT_URL`` of the machine kept out of the way.
Each test makes its own fresh queues and topics with plain boto3 through :class:`AwsServer`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCALSTACK_PYTHON = ROOT / ".venv-localstack" / "bin" / "python"
REGION = "us-east-1"
ACCESS_KEY = "testing"
SECRET_KEY = "testing-secret"
INSTALL_HELP = (
    "LocalStack (host mode) is not installed: run localstack/install-host-localstack.sh (needs Python >= 3.12, "
    "~500 MB, no Docker), or start one with `docker compose -f localstack/docker-compose.yml up -d` and set "
    "BATCHBRIDGE_LOCALSTACK_URL=http://localhost:4566"
)

_ENV = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    # the machine's own configuration must not leak into the tests
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
_UNSET = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS",
          "AWS_ENDPOINT_URL_SNS")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Queue:
    name: str
    url: str
    arn: str


@dataclass
class Topic:
    name: str
    arn: str


@dataclass
class AwsServer:
    """One running server speaking the SQS and SNS wire protocols, and helpers to make resources."""

    kind: str
    endpoint_url: str
    region: str = REGION
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)

    def client(self, service: str) -> Any:
        if service not in self._clients:
            import boto3
            from botocore.config import Config

            self._clients[service] = boto3.client(
                service, endpoint_url=self.endpoint_url, region_name=self.region,
                aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                config=Config(retries={"mode": "standard", "total_max_attempts": 5}, connect_timeout=5,
                              read_timeout=30),
            )
        return self._clients[service]

    def uri(self, scheme: str, name: str, **options: Any) -> str:
        query = {"endpoint_url": self.endpoint_url, "region": self.region, **options}
        return f"{scheme}://{name}?" + "&".join(f"{k}={v}" for k, v in query.items())

    @staticmethod
    def name(prefix: str = "bb", fifo: bool = False) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}" + (".fifo" if fifo else "")

    def queue(self, fifo: bool = False, name: str | None = None, **attributes: str) -> Queue:
        sqs = self.client("sqs")
        name = name or self.name("q", fifo)
        if fifo:
            attributes.setdefault("FifoQueue", "true")
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        return Queue(name, url, arn)

    def topic(self, fifo: bool = False, name: str | None = None) -> Topic:
        name = name or self.name("t", fifo)
        attributes = {"FifoTopic": "true"} if fifo else {}
        arn = self.client("sns").create_topic(Name=name, Attributes=attributes)["TopicArn"]
        return Topic(name, arn)

    def subscribe(self, topic: Topic, queue: Queue, *, raw: bool, filter_policy: dict[str, Any] | None = None) -> str:
        """Subscribe ``queue`` to ``topic`` the way it is done on AWS (with the queue policy SNS needs)."""
        policy = {
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow", "Principal": {"Service": "sns.amazonaws.com"}, "Action": "sqs:SendMessage",
                "Resource": queue.arn, "Condition": {"ArnEquals": {"aws:SourceArn": topic.arn}},
            }],
        }
        self.client("sqs").set_queue_attributes(QueueUrl=queue.url, Attributes={"Policy": json.dumps(policy)})
        attributes = {"RawMessageDelivery": "true" if raw else "false"}
        if filter_policy is not None:
            attributes["FilterPolicy"] = json.dumps(filter_policy)
        arn: str = self.client("sns").subscribe(
            TopicArn=topic.arn, Protocol="sqs", Endpoint=queue.arn, Attributes=attributes,
            ReturnSubscriptionArn=True,
        )["SubscriptionArn"]
        return arn

    def receive_all(self, queue: Queue, want: int, deadline: float = 20.0) -> list[dict[str, Any]]:
        """Plain boto3: read (and delete) up to ``want`` messages, polling until ``deadline``."""
        sqs = self.client("sqs")
        got: list[dict[str, Any]] = []
        end = time.monotonic() + deadline
        while len(got) < want and time.monotonic() < end:
            msgs = sqs.receive_message(QueueUrl=queue.url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                       MessageAttributeNames=["All"],
                                       MessageSystemAttributeNames=["All"]).get("Messages", [])
            for i in range(0, len(msgs), 10):
                sqs.delete_message_batch(QueueUrl=queue.url, Entries=[
                    {"Id": str(j), "ReceiptHandle": m["ReceiptHandle"]} for j, m in enumerate(msgs[i:i + 10])])
            got += msgs
        return got


@pytest.fixture(scope="session")
def aws_env() -> Iterator[None]:
    """Dummy credentials and a clean AWS configuration for the whole session, restored afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        for name in _UNSET:
            mp.delenv(name, raising=False)
        for name, value in _ENV.items():
            mp.setenv(name, value)
        yield


class MotoServer:
    """moto's threaded HTTP server in this process, on 127.0.0.1; can be stopped and started again."""

    def __init__(self, port: int | None = None) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.port = port or free_port()
        self._cls = ThreadedMotoServer
        self._server: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._server = self._cls(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        _wait_http(f"{self.url}/moto-api/", 10.0)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


def _wait_http(url: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="session")
def moto_server(aws_env: None) -> Iterator[AwsServer]:
    moto = MotoServer()
    moto.start()
    try:
        yield AwsServer("moto", moto.url)
    finally:
        moto.stop()


@dataclass
class RestartableMoto:
    server: AwsServer
    _moto: MotoServer

    def stop(self) -> None:
        self._moto.stop()

    def start(self) -> None:
        self._moto.start()


@pytest.fixture
def moto_restartable(moto_server: AwsServer) -> Iterator[RestartableMoto]:
    moto = MotoServer()
    moto.start()
    try:
        yield RestartableMoto(AwsServer("moto", moto.url), moto)
    finally:
        moto.stop()


def _health(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{url}/_localstack/health", timeout=2) as resp:
            doc: dict[str, Any] = json.loads(resp.read())
            return doc
    except (OSError, ValueError):
        return None


def _ready(url: str) -> bool:
    doc = _health(url)
    services = (doc or {}).get("services", {})
    return all(services.get(s) in ("available", "running") for s in ("sqs", "sns"))


def _unavailable(reason: str) -> None:
    if os.environ.get("BATCHBRIDGE_REQUIRE_LOCALSTACK") == "1":
        pytest.fail(f"{reason} (BATCHBRIDGE_REQUIRE_LOCALSTACK=1)")
    pytest.skip(reason)


def start_localstack(base: Path, timeout: float = 120.0) -> tuple[subprocess.Popen[bytes], str]:
    """Start LocalStack in host mode from ``.venv-localstack`` with its state under ``base``; wait until
    SQS and SNS are ready. Returns the process (leader of its own process group) and its URL. Raises
    ``FileNotFoundError`` without the venv and ``RuntimeError`` (with the log's tail) if it never gets ready."""
    if not LOCALSTACK_PYTHON.exists():
        raise FileNotFoundError(INSTALL_HELP)
    for sub in ("fs", "tmp", "xdg"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCALSTACK_", "PYTHON", "VIRTUAL_ENV"))}
    env.update({
        "OVERRIDE_IN_DOCKER": "0",
        "FILESYSTEM_ROOT": str(base / "fs"),
        "TMPDIR": str(base / "tmp"),
        "XDG_CACHE_HOME": str(base / "xdg"),
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        # queue URLs point back at this gateway, and have no virtual-host DNS names to resolve
        "LOCALSTACK_HOST": f"127.0.0.1:{port}",
        "SQS_ENDPOINT_STRATEGY": "path",
        "SERVICES": "sns,sqs",
        "EAGER_SERVICE_LOADING": "1",
        "DISABLE_EVENTS": "1",
        "DNS_ADDRESS": "0",
        "SKIP_SSL_CERT_DOWNLOAD": "1",
    })
    log_path = base / "localstack.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [str(LOCALSTACK_PYTHON), "-m", "localstack.runtime.main"], cwd=base, env=env,
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    end = time.monotonic() + timeout
    while not _ready(url):
        if proc.poll() is not None or time.monotonic() > end:
            stop_process_group(proc)
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"LocalStack did not become ready on {url} (exit code {proc.poll()}); log:\n{tail}")
        time.sleep(0.25)
    return proc, url


@pytest.fixture(scope="session")
def localstack_server(aws_env: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AwsServer]:
    external = os.environ.get("BATCHBRIDGE_LOCALSTACK_URL")
    if external:
        url = external.rstrip("/")
        end = time.monotonic() + 30
        while not _ready(url):
            if time.monotonic() > end:
                _unavailable(f"BATCHBRIDGE_LOCALSTACK_URL={url} does not answer /_localstack/health with sqs "
                             "and sns available")
            time.sleep(0.5)
        yield AwsServer("localstack", url)
        return
    if not LOCALSTACK_PYTHON.exists():
        _unavailable(INSTALL_HELP)
    try:
        proc, url = start_localstack(tmp_path_factory.mktemp("localstack"))
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield AwsServer("localstack", url)
    finally:
        stop_process_group(proc)


def stop_process_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        proc.wait(timeout=10)
