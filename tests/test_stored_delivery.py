"""Big bodies never become event objects in ``serve`` (``core/intake_process.py`` sends their rows back as
the bytes the outbox stores), and ``file://`` delivery writes those bytes as they are
(``Publisher.publish_stored``): on real outbox files, a real file destination and a real decoding
process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from batchbridge.core import tracing
from batchbridge.core.backends import open_publisher
from batchbridge.core.bridge import _Intake, decode_payload
from batchbridge.core.config import OutboxSettings, load_config
from batchbridge.core.delivery import Delivery
from batchbridge.core.errors import MalformedPayloadError
from batchbridge.core.intake_process import DecodingProcess
from batchbridge.core.metrics import Stats
from batchbridge.core.outbox import Outbox, OutboxRow
from batchbridge.core.outbox_rows import row_key
from batchbridge.core.publisher import Stored
from vendor_payloads import compact, tencent_element, tencent_message


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def event(job: str, n: int) -> dict[str, Any]:
    return {"specversion": "1.0", "id": f"{job}-{n}", "type": "batch.job.succeeded", "source": "t",
            "data": {"provider": "aws", "kind": "job", "job": {"id": job}, "n": n}}


def test_file_delivery_writes_the_stored_bytes_as_they_are_and_dead_letters_what_is_no_object(
        tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    dest = f"file://{out}"
    # valid JSON objects serialised otherwise than orjson would (spaces, key order): a publisher that
    # parsed and serialised again would write other bytes
    odd = [b'{"id": "odd-%d",  "specversion": "1.0", "type": "t", "source": "s", "data": {"job": {"id": "j"}}}' % n
           for n in range(3)]
    with Outbox(tmp_path / "o.db") as store:
        d = Delivery(store, OutboxSettings(batch_size=4, backoff_initial=0.01, backoff_max=0.05), Stats())
        store.on_commit(d.offer)
        d.start([dest])
        store.put([OutboxRow(dest, f"odd-{n}", "t", body) for n, body in enumerate(odd)])
        store.put([OutboxRow(dest, "bad", None, b"{not json"), OutboxRow(dest, "list", None, b"[1, 2]")])
        committed = [OutboxRow.of(dest, event(f"j{n % 3}", n)) for n in range(40)]  # handed over in memory
        for r in committed:
            store.put([r])
        wait_for(lambda: store.depth() == 0, what="delivery")
        worker = d.worker(dest)
        assert d.stop()
        assert not worker._cache  # nothing parsed is kept for a destination that takes the stored bytes
        dead = store.dead_letters()
    assert out.read_bytes().splitlines() == odd + [r.body for r in committed]
    assert sorted((dl.event_id, dl.code) for dl in dead) == [("bad", MalformedPayloadError.code),
                                                             ("list", MalformedPayloadError.code)]


def test_only_a_structured_body_only_publisher_takes_stored_events(tmp_path: Path) -> None:
    with open_publisher(f"file://{tmp_path / 'e.jsonl'}") as file_pub, open_publisher("memory://stored-t") as mem:
        assert file_pub.takes_stored() and not mem.takes_stored()
        results = file_pub.publish_stored([Stored("a", b'{"id": "a"}'), Stored("b", b'{"id":\n"b"}')])
        assert results[0].ok and not results[1].ok  # the driver's own checks still hold: one object per line
        try:
            tracing.enable()
        except Exception as exc:  # the tracing extra missing: the rest is still shown
            pytest.skip(f"tracing cannot be enabled here: {exc}")
        try:
            # with tracing the publish span's context is added to each event: the stored bytes lack it
            assert not file_pub.takes_stored()
        finally:
            tracing.disable()
    assert (tmp_path / "e.jsonl").read_bytes() == b'{"id": "a"}\n'


def test_the_decoding_process_sends_rows_as_stored_bytes_with_their_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(f'[outbox]\npath = "{tmp_path / "o.db"}"\n\n[[routes]]\nto = ["file://{tmp_path}/e.jsonl"]\n')
    body = compact(tencent_message(*(tencent_element("JOB_RUNNING", JobId=f"job-{i}") for i in range(450))))
    decoder = DecodingProcess(load_config(cfg))
    assert decoder.start()
    try:
        planned = asyncio.run(decoder.plan(body, source="http", provider=None, attributes=None, max_events=None))
    finally:
        decoder.close()
    assert isinstance(planned, _Intake) and planned.gated is not None
    events = decode_payload(body)
    assert len(planned.gated) == len(events) == 450  # more than one piece (PIECE events each)
    for (observation, candidates), e in zip(planned.gated, events, strict=True):
        (c,) = candidates
        assert c.row.event is None  # no event object crossed
        assert c.row.body == orjson.dumps(e) and c.row.key == row_key(OutboxRow.of(c.row.destination, e))
        assert observation is not None and observation.event_id == e["id"] and observation.subject == e["subject"]
