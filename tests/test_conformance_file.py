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


def _ids(path: Path) -> list[str]:
    import json

    return [json.loads(line)["id"] for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("how", ["deleted", "renamed", "replaced"])
def test_the_publisher_follows_rotation_and_deletion(tmp_path: Path, how: str) -> None:
    """As log shippers do: once the path names another file, or none, the next batch goes to the file
    the path names (created when missing), never through the old descriptor."""
    import os

    from batchbridge.core.backends import open_publisher
    from conformance import make_event

    path = tmp_path / "events.jsonl"
    before = [make_event("job-r", i) for i in range(3)]
    after = [make_event("job-r", i) for i in range(3, 8)]
    with open_publisher(f"file://{path}") as pub:
        assert all(r.ok for r in pub.publish(before))
        rotated = tmp_path / "events.jsonl.1"
        if how == "deleted":
            path.unlink()
        elif how == "renamed":
            os.rename(path, rotated)
        else:
            other = tmp_path / "new.jsonl"
            other.write_text("")
            os.replace(other, path)
        assert all(r.ok for r in pub.publish(after))
    assert _ids(path) == [e["id"] for e in after]
    if how == "renamed":
        assert _ids(rotated) == [e["id"] for e in before]


def test_a_file_deleted_between_batches_of_a_running_serve_loses_nothing_confirmed(tmp_path: Path) -> None:
    """The bridge's own publisher (one long-lived descriptor), with the file removed under it."""
    from batchbridge.core.bridge import Bridge
    from batchbridge.core.config import config_from_dict
    from conformance import make_trusted_event as make_event

    out = tmp_path / "out.jsonl"
    config = config_from_dict({"routes": [{"to": f"file://{out}"}], "outbox": {"path": str(tmp_path / "o.db")}})
    with Bridge(config) as bridge:
        for i in range(50):
            assert bridge.handle(make_event("job-d", i)).ok
        assert bridge.drain(10)
        out.unlink()
        late = [make_event("job-d", i) for i in range(50, 350)]
        for e in late:
            assert bridge.handle(e).ok
        assert bridge.drain(10)
    assert sorted(_ids(out)) == sorted(e["id"] for e in late)
