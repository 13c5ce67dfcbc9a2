"""Duplicate keys in a vendor payload are ``malformed_payload`` naming the key and its object's path --
never last-key-wins -- in every layer (a CMQ body, a Base64 inner message) and over real HTTP."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest
from batchbridge.core.bridge import Bridge
from batchbridge.core.config import config_from_dict
from batchbridge.core.errors import MalformedPayloadError
from batchbridge.core.normalizing import normalize
from batchbridge.core.serve import create_app
from uvicorn_thread import run_uvicorn

FAILED_THEN_SUCCEEDED = (b'{"Events":[{"EventName":"JOB_FAILED","Batch":{"JobId":"job-1","JobName":"n"},'
                         b'"EventName":"JOB_SUCCEED"}]}')


@pytest.mark.parametrize("payload", [
    FAILED_THEN_SUCCEEDED,
    FAILED_THEN_SUCCEEDED.replace(b'"Batch"', b'"x":"\\u0022:","Batch"'),  # an escaped quote-colon beside it
    FAILED_THEN_SUCCEEDED.replace(b'"Batch"', b'"x":"\\":","Batch"'),
    FAILED_THEN_SUCCEEDED.replace(b",", b" ,\n  ").replace(b":", b" : "),  # pretty-printed
], ids=["compact", "unicode-escaped quote", "escaped quote", "whitespace"])
def test_duplicate_keys_are_malformed_and_named(payload: bytes) -> None:
    with pytest.raises(MalformedPayloadError) as info:
        normalize(payload)
    assert "'EventName' appears more than once" in info.value.reason
    assert info.value.where == "$.Events[0]"


def test_duplicate_keys_inside_a_base64_layer() -> None:
    inner = base64.b64encode(FAILED_THEN_SUCCEEDED).decode()
    with pytest.raises(MalformedPayloadError, match="EventName"):
        normalize(('{"msgBody":"' + inner + '","msgId":"1","msgTag":[],"publishTime":1}').encode())


def test_the_same_key_in_different_objects_is_fine() -> None:
    ok = b'{"Events":[{"EventName":"JOB_FAILED","Batch":{"JobId":"job-1","JobName":"n"}},' \
         b'{"EventName":"JOB_RUNNING","Batch":{"JobId":"job-2","JobName":"n"}}]}'
    assert [e["type"] for e in normalize(ok)] == ["batch.job.failed", "batch.job.running"]


def test_serve_answers_400_naming_the_key(tmp_path: Path) -> None:
    bridge = Bridge(config_from_dict({"outbox": {"path": str(tmp_path / "outbox.db")}}))
    url, stop = run_uvicorn(create_app(bridge))
    try:
        r = httpx.post(url + "/events", content=FAILED_THEN_SUCCEEDED, timeout=10)
        assert r.status_code == 400
        assert r.json()["error"] == "malformed_payload" and "EventName" in r.json()["reason"]
        assert r.json()["where"] == "$.Events[0]"
        assert bridge.stats.snapshot()["received"] == 0
    finally:
        stop()
        bridge.stop()
