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


def test_a_torn_last_line_is_cut_before_appending(tmp_path: Path) -> None:
    from batchbridge.core.backends import open_publisher, open_subscriber
    from conformance import drain, make_event

    path = tmp_path / "events.jsonl"
    first, second = make_event("job-t", 1), make_event("job-t", 2)
    with open_publisher(f"file://{path}") as pub:
        assert pub.publish_one(first).ok
    with open(path, "ab") as fh:  # what a writer killed mid-batch leaves behind
        fh.write(b'{"specversion":"1.0","id":"torn')
    with open_publisher(f"file://{path}") as pub:
        assert pub.publish_one(second).ok
    with open_subscriber(f"file://{path}") as sub:
        got = drain(sub, 2, deadline=3)
    assert [g.event["id"] for g in got if g.event] == [first["id"], second["id"]]
    assert all(g.error is None for g in got)
