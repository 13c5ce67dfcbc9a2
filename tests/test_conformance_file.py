"""The conformance suite on the embedded ``file://`` backend."""

from __future__ import annotations

from pathlib import Path

import pytest
from conformance import Caps, Conformance, Target


class TestFile(Conformance):
    @pytest.fixture
    def target(self, tmp_path: Path) -> Target:
        path = tmp_path / "events.jsonl"
        return Target(
            publish_uri=f"file://{path}",
            subscribe_uri=f"file://{path}?create=true&visibility_timeout=5",
            missing_subscribe_uri=f"file://{tmp_path}/missing.jsonl",
            # one structured event per line: no attributes, no binary mode, text only
            caps=Caps(attributes=False, dedup=False, binary_bodies=False, binary_mode=False),
        )
