"""What the conformance suite does not cover for ``sqs://`` and ``sns://``: broker-side filters, FIFO
group ids and de-duplication, the services' own size rules, per-entry failures, throttling, outages,
missing entities, secrets and configuration. Real HTTP to moto's server (and LocalStack where the
test is marked so); faults are injected with botocore's own event hooks, never by mocking the SDK."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from batchbridge.adapters import aws as aws_adapter
from batchbridge.core import binding
from batchbridge.core.backends import open_publisher, open_subscriber
from batchbridge.core.driver import Message
from batchbridge.core.errors import (
    BackendError,
    ConfigError,
    EntityNotFoundError,
    MessageTooLargeError,
    MissingDependencyError,
)
from batchbridge.core.publisher import Publisher
from batchbridge.core.registry import options_table, parse_uri
from batchbridge.core.secrets import redact
from botocore.awsrequest import AWSResponse
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from conformance import drain, make_event, quiet

if TYPE_CHECKING:  # imported by pytest as a plugin (below), so that it is not imported twice
    from aws_servers import AwsServer, RestartableMoto

pytest_plugins = ["aws_servers"]


@pytest.fixture(params=["moto", pytest.param("localstack", marks=pytest.mark.localstack)])
def aws(request: pytest.FixtureRequest) -> AwsServer:
    """Each test so parametrised runs on moto and on LocalStack."""
    server: AwsServer = request.getfixturevalue(f"{request.param}_server")
    return server


def _event(job: str | None, n: int, *, state: str = "running", env: str | None = None,
           pad: str = "") -> dict[str, Any]:
    event = make_event(job or "x", n, state=state)
    data = event["data"]
    data["job"] = {"id": job, "name": "demo"} if job else None
    data["environment"] = {"id": env} if env else None
    if pad:
        data["vars"] = {"pad": pad}
    return event


def _ids(received: list[Any]) -> list[str]:
    return [r.event["id"] for r in received if r.event]


# --- routing and FIFO ------------------------------------------------------------------------------------


def test_sns_filter_policy_on_ce_type_routes(aws: AwsServer) -> None:
    topic = aws.topic()
    everything, exact, suffix = aws.queue(), aws.queue(), aws.queue()
    aws.subscribe(topic, everything, raw=False)
    aws.subscribe(topic, exact, raw=True, filter_policy={"ce-type": ["batch.job.failed"]})
    aws.subscribe(topic, suffix, raw=False, filter_policy={"ce-type": [{"suffix": ".failed"}]})
    events = [_event(f"job-{i}", i, state=s) for i, s in enumerate(
        ["running", "failed", "succeeded", "failed", "running", "failed"])]
    failed = sorted(e["id"] for e in events if e["type"] == "batch.job.failed")
    with open_publisher(aws.uri("sns", topic.name)) as pub:
        assert all(r.ok for r in pub.publish(events))
    for queue, want in ((exact, failed), (suffix, failed), (everything, sorted(e["id"] for e in events))):
        with open_subscriber(aws.uri("sqs", queue.name)) as sub:
            got = drain(sub, len(want))
            got += quiet(sub, 1.0)
        assert sorted(_ids(got)) == want, queue.name
        assert all(r.event and r.message.attributes["ce-type"] == r.event["type"] for r in got)


def test_fifo_group_id_is_job_then_environment_then_subject(aws: AwsServer) -> None:
    q = aws.queue(fifo=True)
    odd = "job with spaces/and-ünïcode"
    events = [
        _event("job-42", 1),
        _event(None, 2, env="env-7"),
        _event("job-42", 3, env="env-7"),  # the job wins over the environment
        _event(None, 4),  # neither: the subject
        _event(odd, 5),  # not a valid MessageGroupId: hashed, stably
    ]
    events[3]["subject"] = "environments/none"
    with open_publisher(aws.uri("sqs", q.name)) as pub:
        assert all(r.ok for r in pub.publish(events))
    got = aws.receive_all(q, len(events))
    by_id = {json.loads(m["Body"])["id"]: m["Attributes"] for m in got}
    assert len(by_id) == len(events)
    expected = ["job-42", "env-7", "job-42", "environments/none", aws_adapter.aws_id(odd)]
    for event, group in zip(events, expected, strict=False):
        assert by_id[event["id"]]["MessageGroupId"] == group
        assert by_id[event["id"]]["MessageDeduplicationId"] == event["id"]
    assert expected[4].startswith("h-") and len(expected[4]) <= 128


def test_fifo_subscriber_reports_group_as_ordering_key(aws: AwsServer) -> None:
    q = aws.queue(fifo=True)
    with open_publisher(aws.uri("sqs", q.name)) as pub, open_subscriber(aws.uri("sqs", q.name)) as sub:
        assert pub.publish_one(_event("job-9", 1)).ok
        [got] = drain(sub, 1)
    assert got.message.ordering_key == "job-9"
    assert got.message.delivery_count == 1


def test_fifo_publishing_the_same_input_twice_delivers_each_event_once(aws: AwsServer) -> None:
    q = aws.queue(fifo=True)
    events = [_event(f"job-{i % 4}", i) for i in range(25)]
    with open_publisher(aws.uri("sqs", q.name)) as pub:
        assert all(r.ok for r in pub.publish(events))
        assert all(r.ok for r in pub.publish(events))  # e.g. a bridge restarted and replayed its input
    with open_subscriber(aws.uri("sqs", q.name)) as sub:
        got = drain(sub, len(events))
        got += quiet(sub, 1.0)  # a second copy of any event would arrive now
    assert sorted(_ids(got)) == sorted(e["id"] for e in events)


# --- sizes and bodies ------------------------------------------------------------------------------------


def _size(event: dict[str, Any]) -> int:
    """``Message.size`` as the portable layer binds the event for SQS/SNS (``content-type`` included)."""
    return binding.to_message(event, max_attributes=aws_adapter.SqsPublisher.max_attributes,
                              content_type_attribute=aws_adapter.SqsPublisher.content_type_attribute).size


def test_sns_limit_counts_utf8_bytes_including_attributes(aws: AwsServer) -> None:
    topic, q = aws.topic(), aws.queue()
    aws.subscribe(topic, q, raw=True)
    limit = 256 * 1024
    base = _size(_event("job-mb", 0))
    # "é" is one character and two UTF-8 bytes: this event has fewer than 256 Ki characters, more bytes
    too_big = _event("job-mb", 1, pad="é" * ((limit - base) // 2 + 100))
    body_chars = len(binding.to_message(too_big).body.decode())
    assert body_chars < limit < _size(too_big)
    fits = _event("job-mb", 2, pad="é" * ((limit - base) // 2 - 200))
    # fits by Message.size, but not once the attributes' data types are counted too
    edge = _event("job-mb", 3, pad="x" * (limit - base - 20))
    assert _size(edge) <= limit
    with open_publisher(aws.uri("sns", topic.name)) as pub:
        r_big, r_fits, r_edge = pub.publish([too_big, fits, edge])
    assert isinstance(r_big.error, MessageTooLargeError) and str(limit) in r_big.error.reason
    assert r_fits.ok, r_fits.error
    assert isinstance(r_edge.error, MessageTooLargeError) and "as SNS counts it" in r_edge.error.reason
    with open_subscriber(aws.uri("sqs", q.name)) as sub:
        got = drain(sub, 1)
        got += quiet(sub, 1.0)
    assert [r.event for r in got] == [fits]  # the multi-byte text arrives intact


def test_sqs_limit_is_the_queues_maximum_message_size(aws: AwsServer) -> None:
    q = aws.queue(MaximumMessageSize="2048")
    backend, uri = parse_uri(aws.uri("sqs", q.name))
    driver = backend.open_publisher(uri)
    assert driver.max_message_bytes == 2048
    assert driver.max_batch_bytes < 256 * 1024  # a small queue is not a reason for 1 MiB requests
    driver.close()
    default_q = aws.queue()
    default_driver = backend.open_publisher(parse_uri(aws.uri("sqs", default_q.name))[1])
    assert default_driver.max_message_bytes == 1024 * 1024
    assert 1000 * 1024 < default_driver.max_batch_bytes < 1024 * 1024
    default_driver.close()
    small, big = _event("job-s", 1), _event("job-s", 2, pad="x" * 1500)
    assert _size(small) < 2048 < _size(big)
    with open_publisher(aws.uri("sqs", q.name)) as pub, open_subscriber(aws.uri("sqs", q.name)) as sub:
        ok, refused = pub.publish([small, big])
        assert ok.ok
        assert isinstance(refused.error, MessageTooLargeError) and "2048" in refused.error.reason
        assert _ids(drain(sub, 1) + quiet(sub, 1.0)) == [small["id"]]


@pytest.mark.parametrize("scheme", ["sqs", "sns"])
def test_bodies_that_are_not_unicode_text_are_refused_per_message(aws: AwsServer, scheme: str) -> None:
    topic, q = aws.topic(), aws.queue()
    aws.subscribe(topic, q, raw=True)
    backend, uri = parse_uri(aws.uri(scheme, topic.name if scheme == "sns" else q.name))
    driver = backend.open_publisher(uri)
    good = binding.to_message(_event("job-b", 1), max_attributes=9)
    messages = [
        good,
        Message(b"\xff\xfe not utf-8", {"ce-id": "bad-1"}, "application/octet-stream"),
        Message(b"valid UTF-8 with a NUL \x00", {"ce-id": "bad-2"}, "text/plain"),
        Message(b"{}", {"ce-id": "bad-3", "ce-subject": "bell \x07"}, "application/json"),
    ]
    try:
        results = driver.send_batch(messages)
    finally:
        driver.close()
    assert results[0] is None
    for r in results[1:]:
        assert isinstance(r, aws_adapter.InvalidBodyError), r
        assert r.retryable is False
    assert "UTF-8" in str(results[1]) and "U+0000" in str(results[2]) and "U+0007" in str(results[3])
    with open_subscriber(aws.uri("sqs", q.name)) as sub:
        got = drain(sub, 1) + quiet(sub, 1.0)
    assert _ids(got) == [_event("job-b", 1)["id"]]


# --- per-entry failures, throttling, outages -------------------------------------------------------------


def test_partial_batch_failure_is_reported_per_message(aws: AwsServer) -> None:
    q = aws.queue()
    backend, uri = parse_uri(aws.uri("sqs", q.name))
    driver = backend.open_publisher(uri)
    calls: list[list[str]] = []

    def corrupt_entry_2(params: dict[str, Any], **_: Any) -> None:
        ids = [json.loads(e["MessageBody"])["id"] for e in params["Entries"]]
        calls.append(ids)
        if len(calls) == 1:  # the server itself refuses this entry (moto: the delay; LocalStack: the value)
            params["Entries"][2]["DelaySeconds"] = 901
            params["Entries"][2].setdefault("MessageAttributes", {})["bad"] = {"DataType": "String",
                                                                                "StringValue": ""}

    def fail_entries_1_and_3(parsed: dict[str, Any], **_: Any) -> None:
        if len(calls) != 1:
            return
        ok = {s["Id"]: s for s in parsed.get("Successful", [])}
        ok.pop("3", None)  # an entry the service answered for in neither list
        ok.pop("1", None)
        parsed["Successful"] = list(ok.values())
        parsed.setdefault("Failed", []).append(
            {"Id": "1", "SenderFault": False, "Code": "InternalError", "Message": "try again"})

    driver.client.meta.events.register("before-parameter-build.sqs.SendMessageBatch", corrupt_entry_2)
    driver.client.meta.events.register("after-call.sqs.SendMessageBatch", fail_entries_1_and_3)
    events = [_event(f"job-p{i}", i) for i in range(5)]
    with Publisher(driver, uri, {"concurrency": 1}) as pub:
        results = pub.publish(events)
    assert [r.ok for r in results] == [True, True, False, True, True]
    refused = results[2].error
    assert isinstance(refused, BackendError) and refused.retryable is False
    assert "InvalidParameterValue" in refused.reason
    # only the retryable failures were sent again
    assert calls[1:] == [[events[1]["id"], events[3]["id"]]]
    received = {json.loads(m["Body"])["id"] for m in aws.receive_all(q, 6, deadline=4.0)}
    assert events[2]["id"] not in received
    assert received == {e["id"] for i, e in enumerate(events) if i != 2}


def test_a_failed_entry_is_never_reported_as_success_when_retries_run_out(moto_server: AwsServer) -> None:
    q = moto_server.queue()
    backend, uri = parse_uri(moto_server.uri("sqs", q.name, retries=2, retry_max_wait=0.1))
    driver = backend.open_publisher(uri)

    def always_throttle_entry_0(parsed: dict[str, Any], **_: Any) -> None:
        parsed["Successful"] = [s for s in parsed.get("Successful", []) if s["Id"] != "0"]
        parsed.setdefault("Failed", []).append(
            {"Id": "0", "SenderFault": True, "Code": "ThrottlingException", "Message": "slow down"})

    driver.client.meta.events.register("after-call.sqs.SendMessageBatch", always_throttle_entry_0)
    with Publisher(driver, uri, {"concurrency": 1}) as pub:
        first, second = pub.publish([_event("job-t", 1), _event("job-t", 2)])
    assert second.ok
    assert isinstance(first.error, BackendError) and first.error.retryable


class _Raw:
    """The raw body of an HTTP response a ``before-send`` hook answers with."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def _throttled(service: str, url: str) -> AWSResponse:
    if service == "sqs":  # JSON protocol, query-compatible: the code travels in x-amzn-query-error
        headers = {"x-amzn-query-error": "RequestThrottled;Sender", "Content-Type": "application/x-amz-json-1.0"}
        body = b'{"__type": "com.amazonaws.sqs#RequestThrottled", "message": "Rate exceeded"}'
    else:
        headers = {"Content-Type": "text/xml"}
        body = (b"<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded"
                b"</Message></Error><RequestId>x</RequestId></ErrorResponse>")
    return AWSResponse(url, 400, headers, _Raw(body))


@pytest.mark.parametrize("scheme", ["sqs", "sns"])
@pytest.mark.parametrize("throttled_calls", [2, 4])
def test_throttling_is_retried_and_succeeds(moto_server: AwsServer, scheme: str, throttled_calls: int) -> None:
    topic, q = moto_server.topic(), moto_server.queue()
    moto_server.subscribe(topic, q, raw=True)
    backend, uri = parse_uri(moto_server.uri(scheme, topic.name if scheme == "sns" else q.name))
    driver = backend.open_publisher(uri)
    op = "SendMessageBatch" if scheme == "sqs" else "PublishBatch"
    attempts: list[float] = []

    def throttle(request: Any, **_: Any) -> AWSResponse | None:
        attempts.append(time.monotonic())
        return _throttled(scheme, request.url) if len(attempts) <= throttled_calls else None

    driver.client.meta.events.register(f"before-send.{scheme}.{op}", throttle)
    events = [_event("job-th", i) for i in range(3)]
    with Publisher(driver, uri, {"concurrency": 1}) as pub:
        results = pub.publish(events)
    assert all(r.ok for r in results), [r.error for r in results]
    # 2: botocore's own retries absorb it; 4: botocore gives up after 3 tries and the portable layer retries
    assert len(attempts) == throttled_calls + 1
    got = moto_server.receive_all(q, 3)
    assert sorted(json.loads(m["Body"])["id"] for m in got) == sorted(e["id"] for e in events)


def test_server_down_fails_retryably_in_bounded_time_then_recovers(moto_restartable: RestartableMoto) -> None:
    aws = moto_restartable.server
    q = aws.queue()
    with open_publisher(aws.uri("sqs", q.name)) as pub:  # the default retry settings
        assert pub.publish_one(_event("job-o", 1)).ok
        moto_restartable.stop()
        start = time.monotonic()
        down = pub.publish_one(_event("job-o", 2))
        elapsed = time.monotonic() - start
        assert isinstance(down.error, BackendError) and down.error.retryable, down.error
        assert elapsed < 40, elapsed
        moto_restartable.start()
        assert pub.publish_one(_event("job-o", 3)).ok
    got = {json.loads(m["Body"])["id"] for m in aws.receive_all(q, 2)}
    assert got == {_event("job-o", 1)["id"], _event("job-o", 3)["id"]}


# --- missing entities, create, subscriber options --------------------------------------------------------


def test_missing_queue_and_topic(aws: AwsServer) -> None:
    for uri in (aws.uri("sqs", aws.name("nope")), aws.uri("sns", aws.name("nope")),
                aws.uri("sns", f"arn:aws:sns:{aws.region}:000000000000:{aws.name('nope')}")):
        with pytest.raises(EntityNotFoundError) as info:
            open_publisher(uri)
        assert info.value.retryable is False
        assert "does not exist" in info.value.reason
    with pytest.raises(EntityNotFoundError):
        open_subscriber(aws.uri("sqs", aws.name("nope", fifo=True)))


def test_queue_deleted_after_open(moto_server: AwsServer) -> None:
    q = moto_server.queue()
    with open_publisher(moto_server.uri("sqs", q.name)) as pub, \
            open_subscriber(moto_server.uri("sqs", q.name)) as sub:
        moto_server.client("sqs").delete_queue(QueueUrl=q.url)
        result = pub.publish_one(_event("job-d", 1))
        assert isinstance(result.error, EntityNotFoundError) and not result.error.retryable
        with pytest.raises(EntityNotFoundError):
            sub.receive(timeout=0.5)


@pytest.mark.parametrize("fifo", [False, True])
def test_create_option(aws: AwsServer, fifo: bool) -> None:
    queue, topic = aws.name("created", fifo), aws.name("created", fifo)
    with open_publisher(aws.uri("sqs", queue, create="true")) as pub:
        assert pub.publish_one(_event("job-c", 1)).ok
    with open_subscriber(aws.uri("sqs", queue)) as sub:
        assert _ids(drain(sub, 1)) == [_event("job-c", 1)["id"]]
    with open_publisher(aws.uri("sns", topic, create="true")) as pub:
        assert pub.publish_one(_event("job-c", 2)).ok
    attrs = aws.client("sns").get_topic_attributes(
        TopicArn=f"arn:aws:sns:{aws.region}:{_account(aws)}:{topic}")["Attributes"]
    assert (attrs.get("FifoTopic") == "true") is fifo


def _account(aws: AwsServer) -> str:
    return str(aws.queue().arn.split(":")[4])


def test_sns_has_no_subscriber(moto_server: AwsServer) -> None:
    with pytest.raises(ConfigError, match="subscribe an SQS queue"):
        open_subscriber(moto_server.uri("sns", moto_server.topic().name))


def test_envelope_unwrapped_unless_raw(moto_server: AwsServer) -> None:
    topic, q = moto_server.topic(), moto_server.queue()
    moto_server.subscribe(topic, q, raw=False)
    event = _event("job-e", 1)
    with open_publisher(moto_server.uri("sns", topic.name)) as pub:
        assert pub.publish_one(event).ok
        assert pub.publish_one(_event("job-e", 2)).ok
    with open_subscriber(moto_server.uri("sqs", q.name, visibility_timeout=0)) as sub:
        [got] = drain(sub, 1, ack=False)
        assert got.event is not None and got.message.extra["sns"]["TopicArn"] == topic.arn
    with open_subscriber(moto_server.uri("sqs", q.name, raw="true")) as sub:
        [raw] = drain(sub, 1)
        assert json.loads(raw.message.body)["Type"] == "Notification"
        assert raw.event is None and raw.error is not None


def test_visibility_timeout_and_delivery_count(moto_server: AwsServer) -> None:
    q = moto_server.queue()
    with open_publisher(moto_server.uri("sqs", q.name)) as pub, \
            open_subscriber(moto_server.uri("sqs", q.name, visibility_timeout=1, wait_time_seconds=1)) as sub:
        assert pub.publish_one(_event("job-v", 1)).ok
        [first] = drain(sub, 1, ack=False)
        assert first.message.delivery_count == 1
        start = time.monotonic()
        [again] = drain(sub, 1, deadline=10)  # not acked: back after the visibility timeout
        assert time.monotonic() - start >= 0.5
        assert again.message.delivery_count == 2 and again.event == first.event


def test_bad_options_are_config_errors(moto_server: AwsServer) -> None:
    q = moto_server.queue()
    for opts in ({"wait_time_seconds": 21}, {"visibility_timeout": -1}):
        with pytest.raises(ConfigError):
            open_subscriber(moto_server.uri("sqs", q.name, **opts))
    with pytest.raises(ConfigError, match="not an SQS queue name"):
        open_publisher(moto_server.uri("sqs", "bad name!"))


# --- configuration and secrets ---------------------------------------------------------------------------


def test_aws_endpoint_url_from_the_environment(moto_server: AwsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    q = moto_server.queue()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.endpoint_url)
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION")  # with a local endpoint and no region, us-east-1 is assumed
    with open_publisher(f"sqs://{q.name}") as pub, open_subscriber(f"sqs://{q.name}") as sub:
        assert pub.publish_one(_event("job-env", 1)).ok
        assert _ids(drain(sub, 1)) == [_event("job-env", 1)["id"]]


def test_no_region_is_a_config_error(monkeypatch: pytest.MonkeyPatch, moto_server: AwsServer) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION")
    with pytest.raises(ConfigError, match="no AWS region"):
        open_publisher("sqs://anything")


SECRET = "S3cretAccessKeyValueNeverShown0123456789"
KEY_ID = "AKIABATCHBRIDGETEST1"


def test_secrets_in_the_uri_never_shown(moto_server: AwsServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="batchbridge")
    q = moto_server.queue()
    creds = {"aws_access_key_id": KEY_ID, "aws_secret_access_key": SECRET}
    uri = moto_server.uri("sqs", q.name, **creds)
    shown: list[str] = []
    with open_publisher(uri) as pub:
        assert pub.publish_one(_event("job-sec", 1)).ok  # the credentials are used
        shown += [repr(pub), str(pub.uri), repr(pub.uri), repr(pub._driver)]
    with pytest.raises(EntityNotFoundError) as missing:
        open_subscriber(moto_server.uri("sqs", "nope-" + q.name, **creds))
    shown += [str(missing.value), repr(missing.value), json.dumps(missing.value.to_dict())]
    # an endpoint that is not there: the error of the publish result
    dead = f"sqs://{q.name}?endpoint_url=http://127.0.0.1:9&region=us-east-1&aws_secret_access_key={SECRET}"
    with pytest.raises(BackendError) as down:
        open_publisher(f"{dead}&max_attempts=1&aws_access_key_id={KEY_ID}")
    assert down.value.retryable
    shown += [str(down.value), repr(down.value), caplog.text]
    for text in shown:
        assert SECRET not in text and KEY_ID not in text, text
    assert redact(f"x {SECRET} y") == "x *** y"


def test_profile_credentials_never_shown(moto_server: AwsServer, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    profile_secret = "ProfileSecretKeyFromTheCredentialsFile42"
    (tmp_path / "credentials").write_text(
        f"[bbtest]\naws_access_key_id = AKIAPROFILE0000000001\naws_secret_access_key = {profile_secret}\n")
    (tmp_path / "config").write_text("[profile bbtest]\nregion = us-east-1\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    q = moto_server.queue()
    uri = f"sqs://{q.name}?profile=bbtest&endpoint_url={moto_server.endpoint_url}"
    with open_publisher(uri) as pub:
        assert pub.publish_one(_event("job-prof", 1)).ok
        assert profile_secret not in repr(pub)
    # the profile's secret is registered: whatever text carries it is scrubbed
    assert profile_secret not in redact(f"error: {profile_secret}")
    with pytest.raises(ConfigError) as info:
        open_publisher(f"sqs://{q.name}?profile=no-such-profile&endpoint_url={moto_server.endpoint_url}")
    assert "no-such-profile" in str(info.value)


def test_connections_share_the_parsed_service_model_and_keep_their_own_credentials(
        moto_server: AwsServer) -> None:
    """Re-opening a publisher (after every failed open, during an outage) must not parse botocore's
    service model again, nor grow the loader's search path, nor mix up two URIs' credentials."""
    q = moto_server.queue()
    loaders = []
    keys = []
    for n in range(6):
        uri = parse_uri(moto_server.uri("sqs", q.name, aws_access_key_id=f"AKIABATCHBRIDGE{n:05d}",
                                        aws_secret_access_key=f"secret-{n}"))[1]
        conn = aws_adapter._Connection("sqs", uri)
        loaders.append(conn.session._session.get_component("data_loader"))
        keys.append(conn.session.get_credentials().access_key)
        conn.client.close()
    assert all(loader is loaders[0] for loader in loaders)
    paths = loaders[0].search_paths
    assert len(paths) <= len(set(paths)) + 1  # boto3 appends its folder again per session; not more
    assert keys == [f"AKIABATCHBRIDGE{n:05d}" for n in range(6)]
    assert loaders[0].load_service_model("sqs", "service-2") is loaders[0].load_service_model("sqs", "service-2")


# --- classification, packaging -------------------------------------------------------------------------


def _client_error(code: str, status: int = 400, query_code: str | None = None) -> ClientError:
    error = {"Code": code, "Message": "m"}
    if query_code:
        error["QueryErrorCode"] = query_code
    return ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}, "SendMessageBatch")


@pytest.mark.parametrize(("exc", "retryable"), [
    (_client_error("RequestThrottled"), True),
    (_client_error("AWS.SimpleQueueService.RequestThrottled"), True),
    (_client_error("ThrottlingException"), True),
    (_client_error("InternalError", 500), True),
    (_client_error("ServiceUnavailable", 503), True),
    (_client_error("SomethingNew", 502), True),
    (_client_error("InvalidParameterValue"), False),
    (_client_error("AccessDenied", 403), False),
    (_client_error("AuthorizationError", 403), False),
    (EndpointConnectionError(endpoint_url="http://x"), True),
    (ConnectTimeoutError(endpoint_url="http://x"), True),
    (ReadTimeoutError(endpoint_url="http://x"), True),
    (NoCredentialsError(), False),
])
def test_classification(exc: Exception, retryable: bool) -> None:
    assert aws_adapter.is_retryable(exc) is retryable
    typed = aws_adapter.translate(exc, "sqs://q")
    assert getattr(typed, "retryable", False) is retryable


@pytest.mark.parametrize("code", ["AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NotFound"])
def test_not_found_codes(code: str) -> None:
    typed = aws_adapter.translate(_client_error(code), "sqs://q")
    assert isinstance(typed, EntityNotFoundError) and not typed.retryable


def test_entry_codes() -> None:
    assert aws_adapter.code_is_retryable("InternalError", True)
    assert aws_adapter.code_is_retryable("Unknown", False)  # server fault
    assert not aws_adapter.code_is_retryable("Unknown", True)
    assert not aws_adapter.code_is_retryable("InvalidMessageContents", False)  # LocalStack marks it so


def test_missing_boto3_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # "import boto3" now raises ImportError
    backend, uri = parse_uri("sqs://q?region=us-east-1")
    with pytest.raises(MissingDependencyError, match=r"pip install 'batchbridge\[aws\]'"):
        backend.open_publisher(uri)


def test_options_are_documented() -> None:
    table = options_table()
    for name in ("wait_time_seconds", "visibility_timeout", "endpoint_url", "profile", "raw", "create"):
        assert f"`{name}`" in table
    assert all(o.help for o in (*aws_adapter.SQS_BACKEND.options, *aws_adapter.SNS_BACKEND.options))
