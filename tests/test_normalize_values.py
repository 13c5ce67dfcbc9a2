"""Typed value coercion and times (batchbridge.core.event)."""

from __future__ import annotations

from typing import Any

import pytest
from batchbridge.core.errors import MalformedPayloadError
from batchbridge.core.event import Draft, as_int, as_number, as_str, as_time, build_event, epoch_millis_time


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0), ("137", 137), (" -1 ", -1), (7, 7), (3.0, 3), ("", None), ("  ", None), (None, None)],
)
def test_as_int(value: Any, expected: int | None) -> None:
    assert as_int(value, "$.x") == expected


@pytest.mark.parametrize("value", ["1.5", "abc", "0x10", True, [], {}, 1.5, "9" * 25, 2**64])
def test_as_int_refuses(value: Any) -> None:
    with pytest.raises(MalformedPayloadError) as info:
        as_int(value, "$.ExitCode")
    assert info.value.where == "$.ExitCode"


@pytest.mark.parametrize(("value", "expected"), [("8", 8), ("0.5", 0.5), (2.0, 2), (1.25, 1.25), ("", None)])
def test_as_number(value: Any, expected: float | None) -> None:
    assert as_number(value, "$") == expected


@pytest.mark.parametrize("value", ["1e5", "nan", float("nan"), float("inf"), "1.2.3"])
def test_as_number_refuses(value: Any) -> None:
    with pytest.raises(MalformedPayloadError):
        as_number(value, "$")


@pytest.mark.parametrize(("value", "expected"), [("x", "x"), ("", None), ("  ", None), (None, None), (12, "12")])
def test_as_str(value: Any, expected: str | None) -> None:
    assert as_str(value, "$") == expected


@pytest.mark.parametrize("value", [True, {}, [], 1.5])
def test_as_str_refuses(value: Any) -> None:
    with pytest.raises(MalformedPayloadError):
        as_str(value, "$")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2016-11-01T15:25:02.837728Z", "2016-11-01T15:25:02.837728Z"),
        ("2018-06-15T14:43:17Z", "2018-06-15T14:43:17Z"),
        ("2018-06-15T22:43:17+08:00", "2018-06-15T14:43:17Z"),
        ("2018-06-15T22:43:17.5+0800", "2018-06-15T14:43:17.5Z"),
        ("2018-06-15T00:30:00-02:30", "2018-06-15T03:00:00Z"),
        ("2018-06-15 14:43:17", "2018-06-15T14:43:17Z"),
        ("2024-03-05t10:18:45.7654321z", "2024-03-05T10:18:45.7654321Z"),
        ("2024-03-05T10:18:45.000Z", "2024-03-05T10:18:45.000Z"),
        ("2016-12-31T23:30:00-01:00", "2017-01-01T00:30:00Z"),
        ("", None),
        (None, None),
    ],
)
def test_as_time(value: Any, expected: str | None) -> None:
    assert as_time(value, "$") == expected


@pytest.mark.parametrize(
    "value",
    [
        "2016-13-01T00:00:00Z",
        "2016-02-30T00:00:00Z",
        "yesterday",
        "2016-11-01",
        1478013902,
        "0001-01-01T00:00:00+01:00",
        "2016-11-01T00:00:00+24:00",
        "2016-11-01T00:00:00+01:60",
        "2016-11-01T24:00:00Z",
        "2016-11-01T00:00:00.1234567890123Z",
    ],
)
def test_as_time_refuses(value: Any) -> None:
    with pytest.raises(MalformedPayloadError):
        as_time(value, "$.EventTime")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1641944200058, "2022-01-11T23:36:40.058Z"),
        ("1641944200000", "2022-01-11T23:36:40.000Z"),
        (0, "1970-01-01T00:00:00.000Z"),
        (None, None),
    ],
)
def test_epoch_millis(value: Any, expected: str | None) -> None:
    assert epoch_millis_time(value, "$") == expected


@pytest.mark.parametrize("value", [-1, 10**17, "soon", 1.5])
def test_epoch_millis_refuses(value: Any) -> None:
    with pytest.raises(MalformedPayloadError):
        epoch_millis_time(value, "$")


def _draft(**fields: Any) -> Draft:
    base: dict[str, Any] = {"provider": "aws", "kind": "job", "state": "running", "native_event": "x", "raw": {}}
    return Draft(**{**base, **fields})


def test_build_event_has_every_field_and_nulls() -> None:
    event = build_event(_draft(job_id="j1"))
    # no time: no sequence, but the partition key all the same
    assert list(event) == ["specversion", "id", "source", "type", "subject", "partitionkey", "datacontenttype",
                           "dataschema", "data"]
    assert event["partitionkey"] == "j1"
    data = event["data"]
    assert data["job"] == {"id": "j1", "name": None}
    for key in ("task", "instance", "environment", "node", "error", "logs", "resources", "priority"):
        assert data[key] is None
    assert data["times"] == {"created": None, "started": None, "ended": None}
    assert data["vars"] == {}
    assert event["source"] == "batch://aws/-"


def test_subject_segments_escape_slashes() -> None:
    event = build_event(_draft(kind="task", job_id="a/b", task_name="50%"))
    assert event["subject"] == "jobs/a%2Fb/tasks/50%25"


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "job"},
        {"kind": "task", "job_id": "j"},
        {"kind": "task_instance", "job_id": "j", "task_name": "t"},
        {"kind": "task_instance", "job_id": "j", "instance_index": -1},
        {"kind": "environment"},
        {"kind": "node", "environment_id": "e"},
    ],
)
def test_missing_subject_ids_are_malformed(fields: dict[str, Any]) -> None:
    with pytest.raises(MalformedPayloadError):
        build_event(_draft(**fields))
