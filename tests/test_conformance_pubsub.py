"""The conformance suite on Google Cloud Pub/Sub: the official emulator when it is installed, else the
in-repo fake (see ``tests/pubsub_servers.py``; ``BATCHBRIDGE_PUBSUB=fake`` forces the fake).

Each test gets a fresh topic and subscription, created with the plain generated clients. Pub/Sub has
no broker-side de-duplication, so duplicates arrive with equal ids (``dedup=False``); without
ordering keys the per-key order is not guaranteed (``ordering=False``), with ``ordering=true`` and
an ordered subscription it is.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from conformance import Caps, Conformance, Target
from pubsub_servers import PubSubServer, admin, pubsub_emulator  # noqa: F401  (the fixture)

PROJECT = "batchbridge-test"


def _target(server: PubSubServer, ordering: bool) -> Iterator[Target]:
    suffix = uuid.uuid4().hex[:10]
    topic, sub = f"conf-{suffix}", f"conf-{suffix}-sub"
    clients = admin(server.host, PROJECT)
    try:
        clients.create_topic(topic)
        clients.create_subscription(sub, topic, enable_message_ordering=ordering)
        query = f"emulator_host={server.host}&timeout=10" + ("&ordering=true" if ordering else "")
        yield Target(
            publish_uri=f"pubsub://{PROJECT}/{topic}?{query}",
            subscribe_uri=f"pubsub://{PROJECT}/subscriptions/{sub}?{query}",
            missing_subscribe_uri=f"pubsub://{PROJECT}/subscriptions/missing-{suffix}?{query}",
            caps=Caps(attributes=True, ordering=ordering, dedup=False, binary_bodies=True, binary_mode=True,
                      redelivery=True),
        )
    finally:
        clients.delete(topic, sub)
        clients.close()


class TestPubSub(Conformance):
    @pytest.fixture
    def target(self, pubsub_emulator: PubSubServer) -> Iterator[Target]:  # noqa: F811
        yield from _target(pubsub_emulator, ordering=False)


class TestPubSubOrdered(Conformance):
    """``ordering=true``: ordering_key = the job id, on a subscription with message ordering."""

    @pytest.fixture
    def target(self, pubsub_emulator: PubSubServer) -> Iterator[Target]:  # noqa: F811
        yield from _target(pubsub_emulator, ordering=True)
