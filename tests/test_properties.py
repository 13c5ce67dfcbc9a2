"""Property-based robustness: whatever arrives, only InputError subclasses leave the normaliser, every
event that does come out is schema-valid and serialisable, and bad lines never cost good events."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import orjson
from batchbridge.core.envelopes import is_xml_document
from batchbridge.core.errors import InputError
from batchbridge.core.normalizing import dumps, normalize, normalize_stream
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from vendor_payloads import (
    SAMPLE_FILES,
    azure_task_record,
    cmq_push,
    compact,
    corpus,
    gcp_message,
    mns_xml,
    pubsub_data,
    pubsub_push,
    sample_bytes,
    tencent_element,
    tencent_message,
    validate_event,
)

CORPUS = [payload for _, payload in corpus()]
# single-line forms of every good payload (JSON compacted; Base64 and XML bodies re-encoded as Base64)
GOOD_LINES = [compact(json.loads(p)) if p.lstrip()[:1] == b"{" else base64.b64encode(p.strip()) for p in CORPUS]

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

# keys the decoders look at, so random objects reach deep code paths instead of failing detection
VOCABULARY = [
    "Events", "EventName", "EventTime", "Region", "Batch", "EventVars", "JobId", "TaskName",
    "TaskInstanceIndex", "EnvId", "ComputeNodeId", "Category", "Event", "State", "InstanceId",
    "ClusterId", "From", "To", "ExitCode", "source", "detail-type", "detail", "status", "jobId",
    "time", "region", "attributes", "data", "Type", "JobUID", "JobName", "NewJobState", "TaskUID",
    "message", "subscription", "records", "operationName", "properties", "category", "resourceId",
    "executionInfo", "msgBody", "msgId", "Message", "MessageId", "TopicName", "TopicArn", "name", "value",
]  # fmt: skip

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["", "0", "JOB_FAILED", "OnJobFailed", "aws.batch", "Batch Job State Change", "Job",
                     "Cluster", "ServiceLog", "TaskFailEvent", "JOB_STATE_CHANGED", "2018-06-15T14:43:17Z"]),
)  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(VOCABULARY), st.text(max_size=8)), inner, max_size=5),
    ),
    max_leaves=20,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            out.extend(_paths(child, (*prefix, key)))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            out.extend(_paths(child, (*prefix, index)))
    return out


def _mutate(data: st.DataObject, doc: Any) -> Any:
    """Drop a key, replace a value (often with a wrong type), or nest a value deeper, at a random path."""
    paths = _paths(doc)
    path = data.draw(st.sampled_from(paths))
    op = data.draw(st.sampled_from(["drop", "replace", "stringify", "nest"]))
    if not path:
        return data.draw(json_values) if op in ("drop", "replace") else [doc]
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    key = path[-1]
    if op == "drop":
        del parent[key]
    elif op == "replace":
        parent[key] = data.draw(json_values)
    elif op == "stringify":
        parent[key] = json.dumps(parent[key])
    else:
        depth = data.draw(st.integers(min_value=1, max_value=80))
        nested = parent[key]
        for _ in range(depth):
            nested = data.draw(st.sampled_from([[nested], {"x": nested}]))
        parent[key] = nested
    return doc


def _check(payload: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """The property: success gives valid, serialisable events; failure is an InputError, nothing else."""
    try:
        events = normalize(payload, **kwargs)
    except InputError as exc:
        assert isinstance(exc.reason, str) and exc.reason
        return []
    for event in events:
        validate_event(event)
        assert orjson.loads(dumps(event)) == event
    return events


WRONG_VALUES: list[Any] = [None, True, 1.5, -1, 2**64 - 1, "", "x", "-1", [], {}, [[]], {"a": {}}, ["Events"]]


def _sweep_documents() -> list[bytes]:
    docs = []
    for name in SAMPLE_FILES:
        try:
            json.loads(sample_bytes(name))
        except ValueError:
            continue
        docs.append(sample_bytes(name))
    rich_tencent = tencent_element(
        "TASK_INSTANCE_FAILED", ExitCode=1, RetryCount=0, StateReason="x", EndTime="2018-06-15T15:00:00Z",
        RedirectInfo={"StdoutRedirectPath": "cos://o", "StderrRedirectPath": "cos://e"}, Cpu=1, Mem=2,
    )  # fmt: skip
    docs.append(compact(tencent_message(rich_tencent)))
    docs.append(compact(gcp_message("task", "RUNNING")))
    docs.append(compact(azure_task_record("TaskStartEvent", startTime="2024-03-05T10:16:02Z")))
    return docs


def test_every_field_of_every_sample_with_every_wrong_type() -> None:
    """An exhaustive sweep beside the random search: each path dropped, then set to each wrong type."""
    for raw in _sweep_documents():
        doc = json.loads(raw)
        for path in _paths(doc)[1:]:
            for replacement in [_DROP, *WRONG_VALUES]:
                mutated = json.loads(raw)
                parent = mutated
                for step in path[:-1]:
                    parent = parent[step]
                if replacement is _DROP:
                    del parent[path[-1]]
                else:
                    parent[path[-1]] = replacement
                _check(mutated)


_DROP = object()


@SETTINGS
@given(data=st.data(), seed=st.sampled_from(CORPUS), rounds=st.integers(min_value=1, max_value=4))
def test_structurally_mutated_payloads(data: st.DataObject, seed: bytes, rounds: int) -> None:
    try:
        doc = json.loads(seed)
    except ValueError:  # XML and Base64 seeds: mutate what they carry
        return
    for _ in range(rounds):
        doc = _mutate(data, doc)
    _check(json.dumps(doc).encode())
    if isinstance(doc, dict):
        _check(doc)


@SETTINGS
@given(data=st.data(), seed=st.sampled_from(CORPUS))
def test_byte_level_damage(data: st.DataObject, seed: bytes) -> None:
    damaged = bytearray(seed)
    for _ in range(data.draw(st.integers(min_value=1, max_value=6))):
        op = data.draw(st.sampled_from(["truncate", "flip", "insert", "delete"]))
        if not damaged:
            break
        at = data.draw(st.integers(min_value=0, max_value=len(damaged) - 1))
        if op == "truncate":
            del damaged[at:]
        elif op == "flip":
            damaged[at] ^= data.draw(st.integers(min_value=1, max_value=255))
        elif op == "insert":
            damaged[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del damaged[at]
    _check(bytes(damaged))
    _check(bytes(damaged), provider=data.draw(st.sampled_from(["tencent", "alibaba", "aws", "gcp", "azure"])))


@SETTINGS
@given(payload=st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_random_bytes_and_text(payload: bytes | str) -> None:
    _check(payload)


@SETTINGS
@given(value=json_values, provider=st.sampled_from([None, "tencent", "alibaba", "aws", "gcp", "azure"]))
def test_random_json_documents(value: Any, provider: str | None) -> None:
    _check(json.dumps(value).encode(), provider=provider)
    if isinstance(value, dict):
        _check(value, provider=provider)


@SETTINGS
@given(data=st.data(), seed=st.sampled_from(CORPUS))
def test_random_envelope_nesting(data: st.DataObject, seed: bytes) -> None:
    """Good payloads wrapped in random envelope stacks: within the depth bound nothing is lost."""
    expected = [e["id"] for e in normalize(seed)]
    payload = seed
    layers = data.draw(st.integers(min_value=0, max_value=10))
    for _ in range(layers):
        wrap = data.draw(st.sampled_from(["base64", "string", "cmq", "pubsub", "mns"]))
        if wrap == "base64":
            payload = base64.b64encode(payload)
        elif wrap == "string":
            payload = json.dumps(payload.decode()).encode()
        elif wrap == "cmq":
            payload = compact(cmq_push(payload.decode()))
        elif wrap == "pubsub":
            payload = compact(pubsub_push(pubsub_data(payload)))
        else:
            payload = mns_xml(payload.decode())
    events = _check(payload)
    if events:
        assert [e["id"] for e in events] == expected


def _bad_line(data: st.DataObject) -> bytes:
    kind = data.draw(st.sampled_from(["truncated", "flipped", "text", "json"]))
    if kind == "truncated":
        line = data.draw(st.sampled_from(GOOD_LINES))
        return line[: data.draw(st.integers(min_value=1, max_value=len(line) - 1))]
    if kind == "flipped":
        line = bytearray(data.draw(st.sampled_from(GOOD_LINES)))
        at = data.draw(st.integers(min_value=0, max_value=len(line) - 1))
        line[at] ^= data.draw(st.integers(min_value=1, max_value=255))
        return bytes(line)
    if kind == "text":
        return data.draw(st.text(min_size=1, max_size=60)).encode("utf-8", "replace")
    return json.dumps(data.draw(json_values)).encode()


@settings(SETTINGS, max_examples=100)
@given(data=st.data())
def test_a_mixed_stream_loses_no_good_event(data: st.DataObject) -> None:
    lines: list[tuple[bool, bytes]] = []
    for _ in range(data.draw(st.integers(min_value=2, max_value=8))):
        if data.draw(st.booleans()):
            lines.append((True, data.draw(st.sampled_from(GOOD_LINES))))
        else:
            bad = _bad_line(data).replace(b"\n", b" ").replace(b"\r", b" ").strip()
            if bad:
                lines.append((False, bad))
    assume(any(good for good, _ in lines) and len(lines) >= 2)
    stream = b"\n".join(line for _, line in lines)
    # the only inputs read as ONE document rather than as lines (see iter_payloads): valid JSON or XML
    # as a whole, or a broken pretty-printed one (first line "{"/"[" and last "}"/"]", or first line an
    # XML declaration alone)
    try:
        orjson.loads(stream)
        assume(False)
    except orjson.JSONDecodeError:
        pass
    assume(not is_xml_document(stream))
    assume(not (lines[0][1] in (b"{", b"[") and lines[-1][1] in (b"}", b"]")))
    assume(not re.fullmatch(rb"<\?xml[^>]*\?>", lines[0][1]))

    results = dict(normalize_stream(stream))
    assert len(results) == len(lines)
    for number, (good, line) in enumerate(lines, start=1):
        outcome = results[f"line {number}"]
        if good:
            assert isinstance(outcome, list)
            assert [e["id"] for e in outcome] == [e["id"] for e in normalize(line)]
        elif isinstance(outcome, InputError):
            assert outcome.where is not None and outcome.where.startswith(f"line {number}")
    good_count = sum(len(normalize(line)) for good, line in lines if good)
    produced = sum(
        len(outcome) for where, outcome in results.items() if isinstance(outcome, list) and lines[int(where[5:]) - 1][0]
    )
    assert produced == good_count
