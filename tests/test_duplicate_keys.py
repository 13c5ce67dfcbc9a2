"""Duplicate keys in a vendor payload are ``malformed_payload`` naming the key and its object's path --
never last-key-wins -- in every layer (a CMQ body, a Base64 inner message) and over real HTTP."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from batchbridge.core.bridge import Bridge
from batchbridge.core.config import config_from_dict
from batchbridge.core.envelopes import _may_repeat_keys
from batchbridge.core.errors import MalformedPayloadError
from batchbridge.core.normalizing import normalize
from batchbridge.core.serve import create_app
from hypothesis import given, settings
from hypothesis import strategies as st
from uvicorn_thread import run_uvicorn

FAILED_THEN_SUCCEEDED = (b'{"Events":[{"EventName":"JOB_FAILED","Batch":{"JobId":"job-1","JobName":"n"},'
                         b'"EventName":"JOB_SUCCEED"}]}')


@pytest.mark.parametrize("payload", [
    FAILED_THEN_SUCCEEDED,
    FAILED_THEN_SUCCEEDED.replace(b'"Batch"', b'"x":"\\u0022:","Batch"'),  # an escaped quote-colon beside it
    FAILED_THEN_SUCCEEDED.replace(b'"Batch"', b'"x":"\\":","Batch"'),
    FAILED_THEN_SUCCEEDED.replace(b",", b" ,\n  ").replace(b":", b" : "),  # pretty-printed
    # a colon written as an escape beside the repeat: the colon count alone would balance them
    FAILED_THEN_SUCCEEDED.replace(b'"Batch"', b'"x":"\\u003a","Batch"').replace(b'"n"}', b'"n","y":"\\u003A"}'),
    FAILED_THEN_SUCCEEDED.replace(b'"Batch"', b'"x":"a:b:c","Batch"'),  # colons inside a string
], ids=["compact", "unicode-escaped quote", "escaped quote", "whitespace", "unicode-escaped colon", "colons in text"])
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


# --- the cheap pre-test never clears a document that repeats a key ---------------------------------

# "§" stands for a colon that the text writes as an escape (\u003a) or as itself
_text = st.text(alphabet=st.sampled_from(['a', ':', '"', '\\', 'é', ' ', '\u2028', 'k', '§']), max_size=6)
_tree = st.recursive(
    st.one_of(st.integers(-5, 5), _text, st.none()),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.lists(st.tuples(_text, inner), max_size=4)),  # an object as its pairs
    max_leaves=12,
)


def _write(node: Any, ascii_: bool, pad: str) -> str:
    """JSON text of ``node`` (an object given as a list of pairs, so it may repeat a key), its
    strings escaped the stdlib's way or left as they are, with ``pad`` around every colon."""
    if isinstance(node, list) and node and all(isinstance(p, tuple) for p in node):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=ascii_)}{pad}:{pad}{_write(v, ascii_, pad)}"
                              for k, v in node) + "}"
    if isinstance(node, list):
        return "[" + ",".join(_write(v, ascii_, pad) for v in node) + "]"
    return json.dumps(node, ensure_ascii=ascii_)


def _repeats(node: Any) -> bool:
    if isinstance(node, list) and node and all(isinstance(p, tuple) for p in node):
        keys = [k for k, _ in node]
        return len(set(keys)) < len(keys) or any(_repeats(v) for _, v in node)
    return isinstance(node, list) and any(_repeats(v) for v in node)


@settings(max_examples=400, deadline=None)
@given(tree=_tree, ascii_=st.booleans(), pad=st.sampled_from(["", " ", "\n\t"]), colon_escape=st.booleans())
def test_the_pre_test_clears_only_documents_without_repeats(tree: Any, ascii_: bool, pad: str,
                                                            colon_escape: bool) -> None:
    text = _write(tree, ascii_, pad)
    text = text.replace("\\u00a7", "§").replace("§", "\\u003a" if colon_escape else ":")
    value = orjson.loads(text.encode())
    if _repeats(tree):
        assert _may_repeat_keys(text.encode(), value)
        assert _may_repeat_keys(text, value)
