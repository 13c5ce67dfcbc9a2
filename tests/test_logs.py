"""Logging: the JSON and text formatters, configure_logging, the event fields on publish/consume records,
secrets scrubbed from every record, and the CLI's ``--log-format json``."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from batchbridge.core import configure_logging, open_publisher, open_subscriber
from batchbridge.core.logs import JsonFormatter, TextFormatter
from conformance import drain, make_event

if TYPE_CHECKING:
    from aws_servers import AwsServer

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-Value-that-must-not-leak"


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    handler = _Collect()
    logger = logging.getLogger("batchbridge")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def root_handlers() -> Iterator[None]:
    """configure_logging changes the root logger; put it back as pytest had it."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved:
            root.addHandler(h)
        root.setLevel(level)


def _record(msg: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError(f"Endpoint=sb://ns/;SharedAccessKeyName=k;SharedAccessKey={SECRET}")
        except RuntimeError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("batchbridge.test", logging.WARNING, __file__, 1, msg, args, exc_info)
    record.__dict__.update(extra)
    return record


def test_json_formatter_emits_fields_and_redacts_everything() -> None:
    record = _record("publish to %s failed", f"sqs://q?aws_secret_access_key={SECRET}", exc=True,
                     event_id="e1", event_type="batch.job.failed", backend=f"https://u:{SECRET}@host/x",
                     nested={"token": f"?token={SECRET}", "n": 3})
    line = JsonFormatter().format(record)
    assert SECRET not in line
    doc = json.loads(line)
    assert doc["level"] == "WARNING" and doc["logger"] == "batchbridge.test"
    assert doc["time"].endswith("Z")
    assert doc["message"] == "publish to sqs://q?aws_secret_access_key=*** failed"
    assert (doc["event_id"], doc["event_type"]) == ("e1", "batch.job.failed")
    assert doc["backend"] == "https://u:***@host/x"
    assert doc["nested"]["n"] == 3
    assert "RuntimeError" in doc["exception"] and "SharedAccessKey=***" in doc["exception"]


def test_text_formatter_appends_the_event_fields() -> None:
    line = TextFormatter().format(_record("published", event_id="e1", event_type="batch.job.succeeded",
                                          backend=f"sqs://q?token={SECRET}", unrelated="x"))
    assert line.endswith("batchbridge.test: published [event_id=e1 event_type=batch.job.succeeded "
                         "backend=sqs://q?token=***]")
    assert SECRET not in line


def test_configure_logging_installs_one_handler(root_handlers: None) -> None:
    root = logging.getLogger()
    foreign = logging.StreamHandler(io.StringIO())
    root.addHandler(foreign)
    assert configure_logging(json=True, force=False) is None, "someone else's handler: leave it"
    assert foreign in root.handlers

    out = io.StringIO()
    first = configure_logging(json=True, level="DEBUG", stream=out)
    second = configure_logging(json=True, level=logging.INFO, stream=out, force=False)
    assert root.handlers == [second] and first is not second, "force=True removed the rest; a second call replaces"
    assert root.level == logging.INFO
    logging.getLogger("batchbridge.x").debug("hidden")
    logging.getLogger("batchbridge.x").info("shown %s", "once", extra={"event_id": "e9"})
    [line] = out.getvalue().splitlines()
    assert json.loads(line)["message"] == "shown once" and json.loads(line)["event_id"] == "e9"


def test_publish_and_consume_records_carry_the_event(records: list[logging.LogRecord]) -> None:
    uri = f"memory://logs-{uuid.uuid4().hex[:8]}?max_bytes=3000"
    ok, huge = make_event("logged"), make_event("huge", pad=5000)
    with open_publisher(uri) as pub, open_subscriber(uri) as sub:
        results = pub.publish([ok, huge])
        assert [r.ok for r in results] == [True, False]
        drain(sub, 1, deadline=5)
    published = [r for r in records if r.name == "batchbridge.publisher"]
    assert [(r.levelno, r.event_id, r.event_type, r.backend) for r in published] == [  # type: ignore[attr-defined]
        (logging.DEBUG, ok["id"], ok["type"], uri),
        (logging.WARNING, huge["id"], huge["type"], uri),
    ]
    assert published[1].error_code == "message_too_large"  # type: ignore[attr-defined]
    [received] = [r for r in records if r.name == "batchbridge.subscriber"]
    assert (received.event_id, received.event_type, received.backend) == (ok["id"], ok["type"], uri)  # type: ignore[attr-defined]
    assert received.message_id  # type: ignore[attr-defined]


def test_undecodable_message_is_logged_with_its_message_id(records: list[logging.LogRecord]) -> None:
    from batchbridge.core.driver import Message

    uri = f"memory://logs-{uuid.uuid4().hex[:8]}"
    with open_publisher(uri) as pub, open_subscriber(uri) as sub:
        pub._driver.send_batch([Message(b"not json", {}, "text/plain")])  # a foreign producer's message
        [got] = drain(sub, 1, deadline=5)
    assert got.error is not None
    [warning] = [r for r in records if r.name == "batchbridge.subscriber"]
    assert warning.levelno == logging.WARNING
    assert warning.message_id == got.message.message_id and warning.error_code == "undecodable_message"  # type: ignore[attr-defined]


def test_secrets_in_backend_uris_never_reach_a_record(moto_server: AwsServer,
                                                      records: list[logging.LogRecord]) -> None:
    queue = moto_server.queue()
    uri = moto_server.uri("sqs", queue.name, aws_secret_access_key="testing-secret",
                          aws_access_key_id="testing")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logging.getLogger("batchbridge").addHandler(handler)
    try:
        with open_publisher(uri) as pub, open_subscriber(uri) as sub:
            assert pub.publish_one(make_event("secret")).ok
            drain(sub, 1, deadline=20)
    finally:
        logging.getLogger("batchbridge").removeHandler(handler)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert {line["logger"] for line in lines} >= {"batchbridge.publisher", "batchbridge.subscriber"}
    assert "testing-secret" not in out.getvalue()
    assert all("aws_secret_access_key=***" in line["backend"] for line in lines if "backend" in line)


def test_cli_log_format_json(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    proc = subprocess.run(
        [sys.executable, "-m", "batchbridge.core.cli", "--log-format", "json", "-vv", "publish",
         str(ROOT / "core" / "samples" / "aws-eventbridge-job-succeeded.json"), "--to", f"file://{out}", "--quiet"],
        capture_output=True, text=True, timeout=60, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]
    [event] = [json.loads(line) for line in out.read_text().splitlines()]
    [published] = [line for line in lines if line["logger"] == "batchbridge.publisher"]
    assert published["level"] == "DEBUG"
    assert (published["event_id"], published["event_type"]) == (event["id"], "batch.job.succeeded")
    assert published["backend"] == f"file://{out}"
