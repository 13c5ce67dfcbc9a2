"""The conformance suite on Service Bus: the unmodified azure-servicebus SDK over real AMQP 1.0 to the
stand-in broker (``servicebus_broker.py``), or to the official emulator when
``BATCHBRIDGE_SERVICEBUS_CONNECTION_STRING`` names one (see localstack/SERVICEBUS.md)."""

from __future__ import annotations

import pytest
from conformance import Caps, Conformance, Target
from servicebus_broker import ServiceBusEnv, servicebus_broker  # noqa: F401  (the session fixture)

pytest.importorskip("azure.servicebus")


def _target(sb: ServiceBusEnv, publish: str, subscribe: str, caps: Caps, **options: object) -> Target:
    return Target(
        publish_uri=sb.uri(publish, **options),
        subscribe_uri=sb.uri(subscribe, **options),
        missing_subscribe_uri=sb.uri("no-such-queue", **options),
        caps=caps,
    )


class TestServiceBusQueue(Conformance):
    @pytest.fixture
    def target(self, servicebus_broker: ServiceBusEnv) -> Target:  # noqa: F811
        q = servicebus_broker.queue()
        return _target(servicebus_broker, q, q, Caps(dedup=False))


class TestServiceBusQueueDedup(Conformance):
    """Duplicate detection on the entity drops the second message with the same message_id (= event id)."""

    @pytest.fixture
    def target(self, servicebus_broker: ServiceBusEnv) -> Target:  # noqa: F811
        q = servicebus_broker.queue(duplicate_detection=True)
        return _target(servicebus_broker, q, q, Caps(dedup=True))


class TestServiceBusTopic(Conformance):
    @pytest.fixture
    def target(self, servicebus_broker: ServiceBusEnv) -> Target:  # noqa: F811
        topic = servicebus_broker.topic("all")
        return _target(servicebus_broker, topic, f"{topic}/subscriptions/all", Caps(dedup=False))


class TestServiceBusSessions(Conformance):
    """A session queue: session_id = job id, so per-job order holds across sessions."""

    @pytest.fixture
    def target(self, servicebus_broker: ServiceBusEnv) -> Target:  # noqa: F811
        q = servicebus_broker.queue(requires_session=True)
        return _target(servicebus_broker, q, q, Caps(dedup=False, ordering=True), sessions="true")
