"""Every Python block in docs/embedding.md compiles; the blocks marked ``<!-- run -->`` (or
``<!-- run: NAME -->``) run as written, against memory:// and file:// backends, and the handlers they
define are invoked with the platform's payloads."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from batchbridge.core import disable_tracing, normalize

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "embedding.md"
SAMPLES = ROOT / "core" / "samples"
_BLOCK = re.compile(r"(?:<!-- (run|compile)(?:: ([\w-]+))? -->\n)?```python\n(.*?)```", re.S)


@dataclass
class Block:
    line: int
    mode: str  # "run" or "compile"
    name: str
    code: str


def _blocks() -> list[Block]:
    text = DOC.read_text()
    return [Block(text[:m.start(3)].count("\n") + 1, m.group(1) or "compile", m.group(2) or "", m.group(3))
            for m in _BLOCK.finditer(text)]


BLOCKS = _blocks()


def _id(b: Block) -> str:
    return f"line{b.line}-{b.name or b.mode}"


def test_the_doc_has_a_section_per_platform() -> None:
    text = DOC.read_text()
    for heading in ("## Plain Python", "## AWS Lambda", "### EventBridge", "### SQS", "## Google Cloud Functions",
                    "## Azure Functions", "## FastAPI", "## The stable API"):
        assert heading in text
    for permission in ("sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
                       "sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sns:Publish", "roles/pubsub.publisher",
                       "roles/pubsub.subscriber", "Azure Service Bus Data Sender", "Azure Service Bus Data Receiver"):
        assert permission in text
    assert {b.name for b in BLOCKS if b.mode == "run"} >= {"lambda-eventbridge", "lambda-sqs", "gcp", "azure",
                                                           "fastapi", "logging", "tracing"}


@pytest.mark.parametrize("block", BLOCKS, ids=_id)
def test_block_compiles(block: Block) -> None:
    compile(block.code, f"{DOC.name}:{block.line}", "exec", flags=ast.PyCF_ONLY_AST)


def _lambda_eventbridge(ns: dict[str, Any], out: Path) -> None:
    payload = json.loads((SAMPLES / "aws-eventbridge-job-succeeded.json").read_text())
    assert ns["handler"](payload, None)["deliveries"] == 1
    assert [json.loads(line) for line in out.read_text().splitlines()] == normalize(payload)


def _lambda_sqs(ns: dict[str, Any], out: Path) -> None:
    body = (SAMPLES / "aws-eventbridge-array-child-failed.json").read_text()
    event = {"Records": [{"messageId": "059f36b4-87a3-44ab-83d2-661975830a7d", "receiptHandle": "AQEBwJnKyrHigUMZj6r",
                          "body": body, "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
                          "md5OfBody": "", "eventSource": "aws:sqs",
                          "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:batch", "awsRegion": "us-east-1"}]}
    assert ns["handler"](event, None) == {"batchItemFailures": []}
    assert [json.loads(line)["type"] for line in out.read_text().splitlines()] == ["batch.task_instance.failed"]


def _gcp(ns: dict[str, Any], out: Path) -> None:
    push = (SAMPLES / "gcp-pubsub-push-job-succeeded.json").read_bytes()
    request = type("Request", (), {"data": push})()
    assert ns["batch_push"](request)[1] == 204
    ns["batch_event"]({"specversion": "1.0", "id": "1", "source": "//pubsub.googleapis.com/projects/p/topics/t",
                       "type": "google.cloud.pubsub.topic.v1.messagePublished", "data": json.loads(push)})
    assert len(out.read_text().splitlines()) == 2


def _azure(ns: dict[str, Any], out: Path) -> None:
    assert [json.loads(line)["type"] for line in out.read_text().splitlines()] == ["batch.environment.created"]


def _fastapi(ns: dict[str, Any], out: Path) -> None:
    paths = {getattr(r, "path", None) for r in ns["app"].routes}
    assert {"/", "/batch"} <= paths


def _tracing(ns: dict[str, Any], out: Path) -> None:
    assert ns["received"].event["traceparent"].startswith("00-")


CHECKS: dict[str, Callable[[dict[str, Any], Path], None]] = {
    "lambda-eventbridge": _lambda_eventbridge, "lambda-sqs": _lambda_sqs, "gcp": _gcp, "azure": _azure,
    "fastapi": _fastapi, "tracing": _tracing,
}


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """cwd, outbox directory and BATCHBRIDGE_TO in a temporary directory; logging and tracing as they were."""
    out = tmp_path / "events.jsonl"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BATCHBRIDGE_OUTBOX_DIR", str(tmp_path))
    monkeypatch.setenv("BATCHBRIDGE_TO", f"file://{out}")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield out
    finally:
        disable_tracing()
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)


def _close(ns: dict[str, Any]) -> None:
    """Stop what a block left running: handlers and bridges hold an outbox lock and threads."""
    for value in ns.values():
        for method in ("close", "stop"):
            fn = getattr(value, method, None)
            if callable(fn) and type(value).__module__.startswith("batchbridge."):
                with contextlib.suppress(Exception):
                    fn()
                break


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.mode == "run"], ids=_id)
def test_block_runs(block: Block, sandbox: Path) -> None:
    if block.name == "fastapi":
        pytest.importorskip("fastapi")
    if block.name == "tracing":
        pytest.importorskip("opentelemetry.sdk")
    ns: dict[str, Any] = {"__name__": f"docs_block_{block.line}"}
    stdout = io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout):
            exec(compile(block.code, f"{DOC.name}:{block.line}", "exec"), ns)
        check = CHECKS.get(block.name)
        if check is not None:
            check(ns, sandbox)
    finally:
        _close(ns)
