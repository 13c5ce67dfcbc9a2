"""The conformance suite on the embedded ``memory://`` backend."""

from __future__ import annotations

import uuid

import pytest
from conformance import Caps, Conformance, Target


class TestMemory(Conformance):
    @pytest.fixture
    def target(self) -> Target:
        name = f"q-{uuid.uuid4().hex[:8]}"
        return Target(
            publish_uri=f"memory://{name}",
            subscribe_uri=f"memory://{name}?visibility_timeout=5",
            missing_subscribe_uri=f"memory://missing-{name}",
            caps=Caps(dedup=False),
        )


class TestMemoryDedup(Conformance):
    @pytest.fixture
    def target(self) -> Target:
        name = f"q-{uuid.uuid4().hex[:8]}"
        return Target(
            publish_uri=f"memory://{name}?dedup_window=300",
            subscribe_uri=f"memory://{name}",
            missing_subscribe_uri=f"memory://missing-{name}",
            caps=Caps(dedup=True),
        )
