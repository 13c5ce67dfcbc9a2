"""Every produced event validates against the shipped JSON Schemas, and the schemas reject bad events."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from importlib import resources
from typing import Any

import pytest
from batchbridge.core import vendors
from batchbridge.core.event import DATASCHEMA, KINDS, STATES
from batchbridge.core.normalizing import normalize
from jsonschema import Draft202012Validator
from vendor_payloads import BATCH_EVENT_SCHEMA, CLOUDEVENT_SCHEMA, CLOUDEVENT_VALIDATOR, corpus, validate_event

CORPUS = corpus()


def test_schemas_are_valid_draft_2020_12() -> None:
    Draft202012Validator.check_schema(BATCH_EVENT_SCHEMA)
    Draft202012Validator.check_schema(CLOUDEVENT_SCHEMA)
    assert BATCH_EVENT_SCHEMA["$id"] == DATASCHEMA


def test_schemas_ship_as_package_data() -> None:
    root = resources.files("batchbridge.core") / "schema"
    assert json.loads((root / "batch-event-v1.json").read_text()) == BATCH_EVENT_SCHEMA
    assert json.loads((root / "cloudevent-v1.json").read_text()) == CLOUDEVENT_SCHEMA


def test_schema_enumerations_match_the_code() -> None:
    props = BATCH_EVENT_SCHEMA["properties"]
    # the shipped files name the built-in vendors: exactly those the registry holds here
    assert props["provider"]["enum"] == list(vendors.providers())
    assert CLOUDEVENT_SCHEMA["properties"]["source"]["pattern"].startswith(
        "^batch://(" + "|".join(vendors.providers()) + ")/")
    assert vendors.schema() == BATCH_EVENT_SCHEMA and vendors.schema("cloudevent-v1.json") == CLOUDEVENT_SCHEMA
    assert props["kind"]["enum"] == list(KINDS)
    assert props["state"]["enum"] == list(STATES)
    assert BATCH_EVENT_SCHEMA["required"] == list(props)


@pytest.mark.parametrize(("name", "payload"), CORPUS, ids=[name for name, _ in CORPUS])
def test_every_event_validates(name: str, payload: bytes) -> None:
    events = normalize(payload)
    assert events
    for event in events:
        validate_event(event)
        assert list(event["data"]) == BATCH_EVENT_SCHEMA["required"]


def _event() -> dict[str, Any]:
    return copy.deepcopy(normalize(CORPUS[0][1])[0])


BREAKAGES: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("uppercase id", lambda e: e.update(id=e["id"].upper())),
    ("short id", lambda e: e.update(id=e["id"][:31])),
    ("no subject", lambda e: e.pop("subject")),
    ("offset time", lambda e: e.update(time="2016-11-01T15:25:02+08:00")),
    ("bad source", lambda e: e.update(source="batch://ibm/-")),
    ("bad type", lambda e: e.update(type="job.failed")),
    ("bad subject", lambda e: e.update(subject="queues/q")),
    ("wrong dataschema", lambda e: e.update(dataschema="urn:other")),
    ("extra attribute", lambda e: e.update(extra=1)),
    ("missing data field", lambda e: e["data"].pop("vars")),
    ("unknown state", lambda e: e["data"].update(state="exploded")),
    ("unknown kind", lambda e: e["data"].update(kind="cluster")),
    ("string exit code", lambda e: e["data"].update(exit_code="0")),
    ("null times", lambda e: e["data"].update(times=None)),
    ("bad time in times", lambda e: e["data"]["times"].update(created="yesterday")),
    ("null vars", lambda e: e["data"].update(vars=None)),
    ("partial priority", lambda e: e["data"].update(priority={"from": 1})),
    ("job event without job", lambda e: e["data"].update(kind="job", job=None)),
    (
        "node without node id",
        lambda e: e["data"].update(kind="node", node={"id": None, "instance_id": "i", "address": None}),
    ),
]


@pytest.mark.parametrize("mutate", [m for _, m in BREAKAGES], ids=[n for n, _ in BREAKAGES])
def test_the_schema_rejects_broken_events(mutate: Callable[[dict[str, Any]], None]) -> None:
    event = _event()
    assert CLOUDEVENT_VALIDATOR.is_valid(event)
    mutate(event)
    assert not CLOUDEVENT_VALIDATOR.is_valid(event)
