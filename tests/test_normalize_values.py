"""Typed value coercion and times (batchbridge.core.event)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from batchbridge.core.errors import MalformedPayloadError
from batchbridge.core.event import (
    _DRAFT_FIELDS,
    Draft,
    as_int,
    as_number,
    as_str,
    as_time,
    build_event,
    epoch_millis_time,
)


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


def test_a_draft_holds_exactly_the_fields_its_constructor_takes() -> None:
    """``_DRAFT_FIELDS`` (its slots and repr) is written beside ``__init__``'s parameters: read from the
    source, so it holds for the compiled class too, whose signature cannot be inspected."""
    tree = ast.parse((Path(__file__).resolve().parent.parent / "core" / "event.py").read_text())
    draft = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Draft")
    init = next(n for n in draft.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    params = init.args.args[1:]
    assert tuple(a.arg for a in params) == _DRAFT_FIELDS
    # a distinct value of each parameter's type (the compiled class checks them)
    values: dict[str, Any] = {}
    for i, param in enumerate(params):
        annotation = ast.unparse(param.annotation) if param.annotation else ""
        values[param.arg] = ({"n": i} if annotation.startswith("dict") else i if "int" in annotation
                             else f"v{i}")
    built = Draft(**values)
    assert {name: getattr(built, name) for name in _DRAFT_FIELDS} == values
    assert all(f"{name}={value!r}" in repr(built) for name, value in values.items())
    assert Draft("aws", "job", "running", "x", {}).vars == {}


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
