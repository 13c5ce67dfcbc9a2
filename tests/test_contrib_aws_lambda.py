"""The AWS Lambda handlers, invoked with the events Lambda really passes, publishing to SQS on moto's
HTTP server.

The SQS batch events are built from messages really sent to, and received from, a queue on moto
(raw messages, an SNS notification envelope, a batchbridge CloudEvent in binary mode), turned into
Lambda's record shape the way its event source mapping does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from batchbridge.contrib.aws_lambda import make_eventbridge_handler, make_sqs_handler
from batchbridge.core import BackendError, config_from_dict, normalize, open_publisher
from conformance import make_trusted_event

if TYPE_CHECKING:
    from aws_servers import AwsServer, Queue

SAMPLES = Path(__file__).resolve().parent.parent / "core" / "samples"
SUCCEEDED = json.loads((SAMPLES / "aws-eventbridge-job-succeeded.json").read_text())
CHILD_FAILED = json.loads((SAMPLES / "aws-eventbridge-array-child-failed.json").read_text())


class LambdaContext:
    """The part of Lambda's context object the handlers read (the runtime's contract, not an SDK)."""

    def __init__(self, seconds: float) -> None:
        self._deadline = time.monotonic() + seconds
        self.aws_request_id = "c6af9ac6-7b61-11e6-9a41-93e812345678"

    def get_remaining_time_in_millis(self) -> int:
        return int((self._deadline - time.monotonic()) * 1000)


def _events(aws: AwsServer, queue: Queue, want: int) -> list[dict[str, Any]]:
    return [json.loads(m["Body"]) for m in aws.receive_all(queue, want, deadline=15)]


def _lambda_event(aws: AwsServer, source: Queue, want: int) -> dict[str, Any]:
    """Receive ``want`` messages from ``source`` and shape them as Lambda's SQS event."""
    sqs = aws.client("sqs")
    messages: list[dict[str, Any]] = []
    end = time.monotonic() + 15
    while len(messages) < want and time.monotonic() < end:
        messages += sqs.receive_message(QueueUrl=source.url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                        MessageAttributeNames=["All"], AttributeNames=["All"]).get("Messages", [])
    assert len(messages) == want
    records = []
    for m in messages:
        records.append({
            "messageId": m["MessageId"],
            "receiptHandle": m["ReceiptHandle"],
            "body": m["Body"],
            "attributes": m.get("Attributes", {}),
            "messageAttributes": {
                name: {"stringValue": a.get("StringValue"), "stringListValues": [], "binaryListValues": [],
                       "dataType": a["DataType"]}
                for name, a in (m.get("MessageAttributes") or {}).items()},
            "md5OfBody": m["MD5OfBody"],
            "eventSource": "aws:sqs",
            "eventSourceARN": source.arn,
            "awsRegion": aws.region,
        })
    return {"Records": records}


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    handlers: list[Any] = []
    yield handlers
    for h in handlers:
        h.close()


def test_eventbridge_handler_publishes_before_returning(moto_server: AwsServer, tmp_path: Path,
                                                        closing: list[Any]) -> None:
    out = moto_server.queue()
    handler = make_eventbridge_handler(moto_server.uri("sqs", out.name), outbox=tmp_path / "outbox.db")
    closing.append(handler)
    assert handler(SUCCEEDED, LambdaContext(30)) == {"events": 1, "deliveries": 1, "unrouted": 0,
                                                     "dead_lettered": 0}
    [event] = _events(moto_server, out, 1)
    assert event == normalize(SUCCEEDED)[0]
    # a warm invocation reuses the bridge and its publisher
    bridge = handler.bridge
    assert handler(CHILD_FAILED, LambdaContext(30))["events"] == 1
    assert handler.bridge is bridge and bridge.outbox.depth() == 0
    [child] = _events(moto_server, out, 1)
    assert child["type"] == "batch.task_instance.failed"


def test_eventbridge_handler_fails_the_invocation_when_not_delivered(moto_server: AwsServer, tmp_path: Path,
                                                                     closing: list[Any]) -> None:
    missing = moto_server.uri("sqs", moto_server.name("missing"))
    handler = make_eventbridge_handler(missing, outbox=tmp_path / "outbox.db", drain_timeout=30)
    closing.append(handler)
    started = time.monotonic()
    with pytest.raises(BackendError) as err:
        handler(SUCCEEDED, LambdaContext(3.5))  # the invocation's deadline bounds the wait, not drain_timeout
    assert time.monotonic() - started < 3.5
    assert err.value.retryable


def test_eventbridge_handler_dead_letters_what_it_cannot_decode(moto_server: AwsServer, tmp_path: Path,
                                                                closing: list[Any]) -> None:
    handler = make_eventbridge_handler(moto_server.uri("sqs", moto_server.queue().name), outbox=tmp_path / "o.db")
    closing.append(handler)
    other = {**SUCCEEDED, "detail-type": "Batch Service Job State Change", "detail": {"jobQueue": "q"}}
    assert handler(other, LambdaContext(10))["dead_lettered"] == 1
    [dl] = handler.bridge.outbox.dead_letters()
    assert dl.stage == "intake" and json.loads(dl.payload) == other


def test_sqs_handler_real_records_all_handled(moto_server: AwsServer, tmp_path: Path, closing: list[Any]) -> None:
    source, out = moto_server.queue(), moto_server.queue()
    sqs = moto_server.client("sqs")
    # an EventBridge rule's SQS target delivers the event itself
    sqs.send_message(QueueUrl=source.url, MessageBody=json.dumps(SUCCEEDED))
    # a queue subscribed to SNS without raw delivery gets the notification envelope
    topic = moto_server.topic()
    moto_server.subscribe(topic, source, raw=False)
    moto_server.client("sns").publish(TopicArn=topic.arn, Message=json.dumps(CHILD_FAILED))
    # a CloudEvent batchbridge published in binary mode: the context is in the message attributes
    relayed = make_trusted_event("relayed")
    with open_publisher(moto_server.uri("sqs", source.name, mode="binary")) as pub:
        assert pub.publish_one(relayed).ok
    # and something that is no batch event at all
    sqs.send_message(QueueUrl=source.url, MessageBody="hello, not an event")
    event = _lambda_event(moto_server, source, 4)

    handler = make_sqs_handler(moto_server.uri("sqs", out.name), outbox=tmp_path / "outbox.db")
    closing.append(handler)
    assert handler(event, LambdaContext(30)) == {"batchItemFailures": []}

    got = {e["id"]: e for e in _events(moto_server, out, 3)}
    expected = normalize(SUCCEEDED) + normalize(CHILD_FAILED) + [relayed]
    assert got == {e["id"]: e for e in expected}
    [dl] = handler.bridge.outbox.dead_letters()
    assert dl.payload == b"hello, not an event" and dl.code == "unrecognized_format"
    assert dl.meta["message_id"] in {r["messageId"] for r in event["Records"]}


def test_sqs_handler_reports_only_the_records_a_backend_did_not_take(moto_server: AwsServer, tmp_path: Path,
                                                                    closing: list[Any]) -> None:
    source, jobs = moto_server.queue(), moto_server.queue()
    config = config_from_dict({"routes": [
        {"match": "batch.job.*", "to": moto_server.uri("sqs", jobs.name)},
        {"match": "batch.task_instance.*", "to": moto_server.uri("sqs", moto_server.name("missing"))},
    ]})
    sqs = moto_server.client("sqs")
    for body in (SUCCEEDED, CHILD_FAILED):
        sqs.send_message(QueueUrl=source.url, MessageBody=json.dumps(body))
    event = _lambda_event(moto_server, source, 2)
    child_record = next(r["messageId"] for r in event["Records"] if json.loads(r["body"]) == CHILD_FAILED)

    # the missing queue's row is what the invocation waits for until drain_timeout; 2 s was too short for
    # the good record's first publish on a loaded machine (it too was reported as failed)
    handler = make_sqs_handler(config, outbox=tmp_path / "outbox.db", drain_timeout=6.0)
    closing.append(handler)
    assert handler(event, LambdaContext(30)) == {"batchItemFailures": [{"itemIdentifier": child_record}]}
    [job] = _events(moto_server, jobs, 1)
    assert job["type"] == "batch.job.succeeded"


def test_sqs_handler_on_a_fifo_queue_fails_everything_after_the_first_failure(
        moto_server: AwsServer, tmp_path: Path, closing: list[Any]) -> None:
    source, jobs = moto_server.queue(fifo=True), moto_server.queue()
    config = config_from_dict({"routes": [
        {"match": "batch.job.*", "to": moto_server.uri("sqs", jobs.name)},
        {"match": "batch.task_instance.*", "to": moto_server.uri("sqs", moto_server.name("missing"))},
    ]})
    later = {**SUCCEEDED, "id": "later", "detail": {**SUCCEEDED["detail"], "jobId": "later-job"}}
    for n, body in enumerate((SUCCEEDED, CHILD_FAILED, later)):
        moto_server.client("sqs").send_message(QueueUrl=source.url, MessageBody=json.dumps(body),
                                               MessageGroupId="batch", MessageDeduplicationId=str(n))
    event = _lambda_event(moto_server, source, 3)
    order = [json.loads(r["body"])["id"] for r in event["Records"]]
    assert order == [SUCCEEDED["id"], CHILD_FAILED["id"], "later"]

    handler = make_sqs_handler(config, outbox=tmp_path / "outbox.db", drain_timeout=6.0)  # as above
    closing.append(handler)
    answer = handler(event, LambdaContext(30))
    assert answer == {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in event["Records"][1:]]}


def test_default_outbox_goes_to_the_outbox_dir(moto_server: AwsServer, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, closing: list[Any]) -> None:
    """Lambda's code directory is read-only: by default the outbox lives in /tmp (or the given dir),
    one file per handler kind, so two handlers in one process do not share an outbox lock."""
    monkeypatch.setenv("BATCHBRIDGE_OUTBOX_DIR", str(tmp_path))
    uri = moto_server.uri("sqs", moto_server.queue().name)
    a, b = make_eventbridge_handler(uri), make_sqs_handler(uri)
    closing += [a, b]
    assert a.bridge.outbox.path.parent == tmp_path and b.bridge.outbox.path.parent == tmp_path
    assert a.bridge.outbox.path != b.bridge.outbox.path
    assert a(SUCCEEDED, None)["deliveries"] == 1
    assert b({"Records": []}, None) == {"batchItemFailures": []}


def test_lambda_sqs_events_of_real_deliveries_normalize_to_the_bare_events(moto_server: AwsServer) -> None:
    """EventBridge -> SQS, and EventBridge -> SNS -> SQS without raw delivery: the whole Lambda SQS
    event, as Lambda passes it, gives the ids the bare events give."""
    direct, fanned = moto_server.queue(), moto_server.queue()
    moto_server.client("sqs").send_message(QueueUrl=direct.url, MessageBody=json.dumps(SUCCEEDED))
    topic = moto_server.topic()
    moto_server.subscribe(topic, fanned, raw=False)
    moto_server.client("sns").publish(TopicArn=topic.arn, Message=json.dumps(CHILD_FAILED))
    bare = {e["id"] for e in normalize(SUCCEEDED) + normalize(CHILD_FAILED)}
    via_sqs = normalize(_lambda_event(moto_server, direct, 1))
    via_sns = normalize(_lambda_event(moto_server, fanned, 1))
    assert via_sqs == normalize(SUCCEEDED)
    assert via_sns == normalize(CHILD_FAILED)
    assert {e["id"] for e in via_sqs + via_sns} == bare


def test_eventbridge_handler_takes_a_lambda_sns_event(moto_server: AwsServer, tmp_path: Path,
                                                      closing: list[Any]) -> None:
    """A function subscribed to an SNS topic that EventBridge publishes to gets Records[].Sns."""
    out = moto_server.queue()
    handler = make_eventbridge_handler(moto_server.uri("sqs", out.name), outbox=tmp_path / "outbox.db")
    closing.append(handler)
    event = {"Records": [{
        "EventVersion": "1.0", "EventSource": "aws:sns",
        "EventSubscriptionArn": "arn:aws:sns:us-east-1:123456789012:batch:2bcfbf39",
        "Sns": {"Type": "Notification", "MessageId": "95df01b4", "TopicArn": "arn:aws:sns:us-east-1:123456789012:batch",
                "Subject": None, "Message": json.dumps(SUCCEEDED), "Timestamp": "2022-01-11T23:45:32.000Z",
                "MessageAttributes": {}},
    }]}
    assert handler(event, LambdaContext(30))["deliveries"] == 1
    [got] = _events(moto_server, out, 1)
    assert got == normalize(SUCCEEDED)[0]
