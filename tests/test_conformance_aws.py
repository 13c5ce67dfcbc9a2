"""The conformance suite on SQS and SNS: moto's HTTP server, and LocalStack (``-m localstack``).

Five shapes on each server, each test on fresh resources made with plain boto3:
SQS standard, SQS FIFO, SNS -> SQS with raw delivery, SNS -> SQS without raw delivery (the
subscriber unwraps SNS's envelope), SNS FIFO -> SQS FIFO.

SQS and SNS carry only Unicode text, so ``binary_bodies`` is off (the driver refuses such a body with
a typed, non-retryable error); standard queues and topics do not keep order; FIFO ones keep it per
group and drop a repeated de-duplication id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from conformance import Caps, Conformance, Target

if TYPE_CHECKING:  # imported by pytest as a plugin (below), so that it is not imported twice
    from aws_servers import AwsServer

pytest_plugins = ["aws_servers"]

STANDARD = Caps(ordering=False, dedup=False, binary_bodies=False)
FIFO = Caps(ordering=True, dedup=True, binary_bodies=False)


def _missing(aws: AwsServer, fifo: bool = False) -> str:
    return aws.uri("sqs", aws.name("missing", fifo))


class _SqsStandard(Conformance):
    @pytest.fixture
    def target(self, aws: AwsServer) -> Target:
        q = aws.queue()
        return Target(aws.uri("sqs", q.name), aws.uri("sqs", q.name), _missing(aws), STANDARD)


class _SqsFifo(Conformance):
    @pytest.fixture
    def target(self, aws: AwsServer) -> Target:
        q = aws.queue(fifo=True)
        return Target(aws.uri("sqs", q.name), aws.uri("sqs", q.name), _missing(aws, True), FIFO)


class _SnsRaw(Conformance):
    @pytest.fixture
    def target(self, aws: AwsServer) -> Target:
        topic, q = aws.topic(), aws.queue()
        aws.subscribe(topic, q, raw=True)
        return Target(aws.uri("sns", topic.name), aws.uri("sqs", q.name), _missing(aws), STANDARD)


class _SnsEnvelope(Conformance):
    @pytest.fixture
    def target(self, aws: AwsServer) -> Target:
        topic, q = aws.topic(), aws.queue()
        aws.subscribe(topic, q, raw=False)
        return Target(aws.uri("sns", topic.arn), aws.uri("sqs", q.name), _missing(aws), STANDARD)


class _SnsFifo(Conformance):
    @pytest.fixture
    def target(self, aws: AwsServer) -> Target:
        topic, q = aws.topic(fifo=True), aws.queue(fifo=True)
        aws.subscribe(topic, q, raw=True)
        return Target(aws.uri("sns", topic.name), aws.uri("sqs", q.name), _missing(aws, True), FIFO)


# --- moto's HTTP server -------------------------------------------------------------------------------


class _OnMoto:
    @pytest.fixture
    def aws(self, moto_server: AwsServer) -> AwsServer:
        return moto_server


class TestMotoSqs(_OnMoto, _SqsStandard):
    pass


class TestMotoSqsFifo(_OnMoto, _SqsFifo):
    pass


class TestMotoSnsRaw(_OnMoto, _SnsRaw):
    pass


class TestMotoSnsEnvelope(_OnMoto, _SnsEnvelope):
    pass


class TestMotoSnsFifo(_OnMoto, _SnsFifo):
    pass


# --- LocalStack (host mode, or BATCHBRIDGE_LOCALSTACK_URL) ----------------------------------------------


class _OnLocalStack:
    @pytest.fixture
    def aws(self, localstack_server: AwsServer) -> AwsServer:
        return localstack_server


@pytest.mark.localstack
class TestLocalStackSqs(_OnLocalStack, _SqsStandard):
    pass


@pytest.mark.localstack
class TestLocalStackSqsFifo(_OnLocalStack, _SqsFifo):
    pass


@pytest.mark.localstack
class TestLocalStackSnsRaw(_OnLocalStack, _SnsRaw):
    pass


@pytest.mark.localstack
class TestLocalStackSnsEnvelope(_OnLocalStack, _SnsEnvelope):
    pass


@pytest.mark.localstack
class TestLocalStackSnsFifo(_OnLocalStack, _SnsFifo):
    pass
