"""The Pub/Sub server the tests and the benchmark run against, and the ``pubsub_emulator`` fixture.

Which server (:func:`start_server`, usable outside pytest too):

1. ``BATCHBRIDGE_PUBSUB_EMULATOR_HOST=HOST:PORT``: an emulator that is already running (e.g. the
   docker compose ``pubsub-emulator`` service); it must answer within 15 s.
2. ``BATCHBRIDGE_PUBSUB=fake``: the in-repo gRPC fake (``tests/pubsub_fake.py``), always.
3. Otherwise the official emulator jar, found by ``$PUBSUB_EMULATOR_JAR``, the Debian package's path
   (``/usr/lib/google-cloud-sdk/platform/pubsub-emulator/lib/cloud-pubsub-emulator-*-all.jar``) or
   next to ``gcloud`` on PATH, started as ``java -jar JAR --host=127.0.0.1 --port=N`` in its own
   process group on a free port and stopped by process group.
4. If no jar (or no java) is found: the fake. With ``CI`` set (or ``BATCHBRIDGE_PUBSUB=emulator``) a
   jar that is present must work: a failed start is an error, never a silent fall-back.

The run says which one it used: the fixture registers a small plugin whose ``pytest_terminal_summary``
prints "Pub/Sub backend under test: ..." (no conftest change needed).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

DEB_JAR_GLOB = "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/lib/cloud-pubsub-emulator-*-all.jar"
_JAR_NAME = "cloud-pubsub-emulator-*-all.jar"
_VERSION = re.compile(r"cloud-pubsub-emulator-(.+)-all\.jar$")
_CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]

#: lines the run reports at the end ("Pub/Sub backend under test: ...")
REPORT: list[str] = []


class PubSubServerError(RuntimeError):
    """The server that must be used could not be started or reached."""


@dataclass
class PubSubServer:
    host: str  #: HOST:PORT, plain gRPC
    kind: str  #: "emulator", "external" or "fake"
    description: str
    _stop: Callable[[], None] = field(repr=False, default=lambda: None)
    _stopped: bool = field(default=False, repr=False)

    @property
    def enforces_filters(self) -> bool:
        """The official emulator (0.8.x) stores a subscription's filter but delivers every message."""
        return self.kind == "fake"

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._stop()


# --- finding and starting ------------------------------------------------------------------------


def find_emulator_jar() -> Path | None:
    explicit = os.environ.get("PUBSUB_EMULATOR_JAR")
    if explicit:
        if not Path(explicit).is_file():
            raise PubSubServerError(f"PUBSUB_EMULATOR_JAR={explicit} is not a file")
        return Path(explicit)
    candidates = sorted(glob.glob(DEB_JAR_GLOB))
    gcloud = shutil.which("gcloud")
    if not candidates and gcloud:
        sdk = Path(os.path.realpath(gcloud)).parent.parent  # .../google-cloud-sdk/bin/gcloud
        candidates = sorted(glob.glob(str(sdk / "platform" / "pubsub-emulator" / "lib" / _JAR_NAME)))
    return Path(candidates[-1]) if candidates else None


def jar_version(jar: Path) -> str:
    m = _VERSION.search(jar.name)
    return m.group(1) if m else "unknown version"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(host: str, timeout: float) -> bool:
    channel = grpc.insecure_channel(host)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def start_emulator(jar: Path | None = None, *, timeout: float = 60.0, attempts: int = 3) -> PubSubServer:
    """Start the official emulator jar on a free port; raise :class:`PubSubServerError` if it does not
    come up (the log's tail is in the message)."""
    jar = jar or find_emulator_jar()
    if jar is None:
        raise PubSubServerError("no Pub/Sub emulator jar found (set PUBSUB_EMULATOR_JAR)")
    java = shutil.which("java", path=os.path.join(os.environ["JAVA_HOME"], "bin")) \
        if os.environ.get("JAVA_HOME") else None
    java = java or shutil.which("java")
    if java is None:
        raise PubSubServerError(f"the Pub/Sub emulator jar {jar} needs java, which is not on PATH")
    workdir = tempfile.mkdtemp(prefix="pubsub-emulator-")
    last_log = why = ""
    for _ in range(attempts):
        port = free_port()
        host = f"127.0.0.1:{port}"
        log_path = Path(workdir) / f"emulator-{port}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [java, "-jar", str(jar), "--host=127.0.0.1", f"--port={port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=workdir, start_new_session=True,  # its own process group, stopped as a whole
            )
        end = time.monotonic() + timeout
        while time.monotonic() < end and proc.poll() is None:
            if wait_ready(host, 0.5):
                break
        if proc.poll() is None and wait_ready(host, 0.1):

            def stop(proc: subprocess.Popen[bytes] = proc) -> None:
                _kill_group(proc)
                shutil.rmtree(workdir, ignore_errors=True)

            atexit.register(stop)
            return PubSubServer(host, "emulator", f"official emulator {jar_version(jar)} ({jar})", stop)
        exited = proc.poll()
        _kill_group(proc)
        last_log = log_path.read_text(errors="replace")[-2000:]
        why = f"exited with code {exited}" if exited is not None else f"did not answer within {timeout:.0f} s"
        if "Address already in use" not in last_log:
            break
    shutil.rmtree(workdir, ignore_errors=True)
    raise PubSubServerError(f"the Pub/Sub emulator {jar} {why}:\n{last_log}")


def start_fake() -> PubSubServer:
    from pubsub_fake import serve

    server, fake, host = serve()

    def stop() -> None:
        fake.stop()
        server.stop(None)

    return PubSubServer(host, "fake", "in-repo fake (tests/pubsub_fake.py)", stop)


def start_server(mode: str | None = None) -> PubSubServer:
    """The server the environment asks for (see the module docstring)."""
    external = os.environ.get("BATCHBRIDGE_PUBSUB_EMULATOR_HOST")
    mode = (mode or os.environ.get("BATCHBRIDGE_PUBSUB") or "").lower()
    if external and mode != "fake":
        if not wait_ready(external, 15.0):
            raise PubSubServerError(f"BATCHBRIDGE_PUBSUB_EMULATOR_HOST={external} does not answer")
        return PubSubServer(external, "external", f"running emulator at {external} "
                                                  "(BATCHBRIDGE_PUBSUB_EMULATOR_HOST)")
    if mode == "fake":
        return start_fake()
    jar = find_emulator_jar()
    if mode == "emulator" or (jar is not None and os.environ.get("CI")):
        return start_emulator(jar)  # must work here: no fall-back
    if jar is not None and (shutil.which("java") or os.environ.get("JAVA_HOME")):
        try:
            return start_emulator(jar)
        except PubSubServerError as exc:
            server = start_fake()
            server.description += f"; the emulator failed to start: {str(exc).splitlines()[0]}"
            return server
    server = start_fake()
    server.description += " (no emulator jar or java found)"
    return server


# --- plain clients for fixtures (creating and deleting entities, reading back) ---------------------


@dataclass
class Admin:
    """Generated Publisher/Subscriber clients on a plain channel, every call with a deadline."""

    publisher: Any
    subscriber: Any
    project: str
    timeout: float = 10.0

    def topic(self, name: str) -> str:
        return f"projects/{self.project}/topics/{name}"

    def subscription(self, name: str) -> str:
        return f"projects/{self.project}/subscriptions/{name}"

    def create_topic(self, name: str) -> str:
        path = self.topic(name)
        self.publisher.create_topic(name=path, retry=None, timeout=self.timeout)
        return path

    def create_subscription(self, name: str, topic: str, **fields: Any) -> str:
        path = self.subscription(name)
        request = {"name": path, "topic": self.topic(topic), "ack_deadline_seconds": 10, **fields}
        self.subscriber.create_subscription(request=request, retry=None, timeout=self.timeout)
        return path

    def delete(self, topic: str | None = None, subscription: str | None = None) -> None:
        """Best effort: a test that failed half-way must not fail again in teardown."""
        with contextlib.suppress(Exception):
            if subscription:
                self.subscriber.delete_subscription(subscription=self.subscription(subscription), retry=None,
                                                    timeout=self.timeout)
        with contextlib.suppress(Exception):
            if topic:
                self.publisher.delete_topic(topic=self.topic(topic), retry=None, timeout=self.timeout)

    def pull(self, subscription: str, want: int, deadline: float = 15.0) -> list[Any]:
        """Pull (and ack) until ``want`` messages arrived or ``deadline`` passed; the raw ReceivedMessages."""
        got: list[Any] = []
        end = time.monotonic() + deadline
        while len(got) < want and time.monotonic() < end:
            try:
                response = self.subscriber.pull(
                    request={"subscription": self.subscription(subscription), "max_messages": 100},
                    retry=None, timeout=max(0.1, min(3.0, end - time.monotonic())))
            except Exception as exc:
                if type(exc).__name__ == "DeadlineExceeded":
                    continue
                raise
            batch = list(response.received_messages)
            if batch:
                self.subscriber.acknowledge(subscription=self.subscription(subscription),
                                            ack_ids=[r.ack_id for r in batch], retry=None, timeout=self.timeout)
            got.extend(batch)
        return got

    def close(self) -> None:
        for client in (self.publisher, self.subscriber):
            with contextlib.suppress(Exception):
                client.transport.close()


def admin(host: str, project: str) -> Admin:
    from google.pubsub_v1 import PublisherClient, SubscriberClient
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    return Admin(
        PublisherClient(transport=PublisherGrpcTransport(channel=grpc.insecure_channel(host, _CHANNEL_OPTIONS))),
        SubscriberClient(transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(host, _CHANNEL_OPTIONS))),
        project,
    )


# --- pytest -----------------------------------------------------------------------------------------


class _Summary:
    """Registered at run time by the fixture, so the run reports its server without a conftest hook."""

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        for line in REPORT:
            terminalreporter.write_line(line)


def _record(line: str, config: pytest.Config) -> None:
    REPORT.append(line)
    if not config.pluginmanager.has_plugin("batchbridge-pubsub-summary"):
        config.pluginmanager.register(_Summary(), "batchbridge-pubsub-summary")


_shared: PubSubServer | None = None
_users = 0


@pytest.fixture(scope="session")
def pubsub_emulator(request: pytest.FixtureRequest) -> Iterator[PubSubServer]:
    """One server for the whole run, however many test modules import this fixture (each import is
    its own session-scoped fixture, so they share the server and the last one stops it)."""
    global _shared, _users
    if _shared is None:
        _shared = start_server()
        _record(f"Pub/Sub backend under test: {_shared.description}", request.config)
    _users += 1
    server = _shared
    try:
        yield server
    finally:
        _users -= 1
        if _users == 0:
            _shared = None
            server.stop()
