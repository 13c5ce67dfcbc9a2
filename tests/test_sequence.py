"""The ``sequence`` and ``partitionkey`` extensions, on real events from every vendor's samples."""

from __future__ import annotations

from datetime import datetime
from importlib.resources import files

import pytest
from batchbridge.core.event import as_time
from batchbridge.core.normalizing import normalize
from batchbridge.core.sequence import STATE_RANK, partition_key, sequence, sequence_for, time_micros
from jsonschema import Draft202012Validator


def _samples() -> list[dict]:  # type: ignore[type-arg]
    out = []
    for path in sorted((files("batchbridge.core") / "samples").iterdir(), key=lambda p: p.name):
        out += normalize(path.read_bytes())
    return out


def test_every_sample_has_the_contract_extensions() -> None:
    events = _samples()
    assert len(events) >= 16
    for e in events:
        if "time" in e:
            micros = int(datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp() * 1_000_000)
            assert e["sequence"] == f"{micros:017d}.{STATE_RANK[e['data']['state']]:02d}", e["time"]
        else:
            assert "sequence" not in e
        ref = e["data"]["environment"] if e["data"]["kind"] in ("environment", "node") else e["data"]["job"]
        assert e["partitionkey"] == ref["id"] == partition_key(e)
        assert e["partitionkey"] == e["subject"].split("/")[1].replace("%2F", "/").replace("%25", "%")


@pytest.mark.parametrize(("earlier", "later"), [
    (("2024-01-01T00:00:00Z", "running"), ("2024-01-01T00:00:00Z", "succeeded")),   # same second, rank decides
    (("2024-01-01T00:00:00.5Z", "running"), ("2024-01-01T00:00:00.500001Z", "pending")),
    (("2024-01-01T00:00:59Z", "succeeded"), ("2024-01-01T00:01:00Z", "pending")),   # a re-run is newer
    (("1999-12-31T23:59:59.999999Z", "deleted"), ("2000-01-01T00:00:00Z", "created")),
])
def test_sequences_order_as_text(earlier: tuple[str, str], later: tuple[str, str]) -> None:
    a, b = sequence(*earlier), sequence(*later)
    assert a is not None and b is not None and len(a) == len(b) == 20
    assert a < b


def test_ranks_are_the_contracts() -> None:
    assert STATE_RANK == {"pending": 10, "starting": 20, "running": 30, "created": 10, "abnormal": 40,
                          "creation_failed": 50, "deleting": 60, "deleted": 70, "succeeded": 90, "failed": 90,
                          "stopped": 90, "interrupted": 90}


@pytest.mark.parametrize("raw", ["2024-02-29T12:34:56Z", "2024-02-29T12:34:56.1Z", "2024-02-29T12:34:56.123456789Z",
                                 "2024-02-29 20:34:56+08:00", "0999-01-01T00:00:00Z"])
def test_fast_and_general_paths_agree(raw: str) -> None:
    time = as_time(raw, "$")
    assert time is not None
    assert sequence(time, "running") == sequence_for({"time": time, "data": {"state": "running"}})


def test_times_outside_seventeen_digits_are_clamped_and_bad_input_is_none() -> None:
    assert sequence("1960-01-01T00:00:00Z", "pending") == "00000000000000000.10"
    assert sequence("9999-12-31T23:59:59Z", "pending") == "99999999999999999.10"
    assert sequence(None, "pending") is None
    assert sequence("2024-01-01T00:00:00Z", "no-such-state") is None
    assert time_micros("2024-13-01T00:00:00Z") is None
    assert time_micros("yesterday") is None
    assert sequence_for({"time": "2024-01-01T00:00:00+01:00", "data": {"state": "running"}}) is None


def test_the_schema_checks_the_extensions() -> None:
    import json

    schema = json.loads((files("batchbridge.core") / "schema" / "cloudevent-v1.json").read_text())
    batch = json.loads((files("batchbridge.core") / "schema" / "batch-event-v1.json").read_text())
    from referencing import Registry, Resource

    registry = Registry().with_resource(batch["$id"], Resource.from_contents(batch))
    validator = Draft202012Validator(schema, registry=registry)
    event = next(e for e in _samples() if "time" in e)
    assert not list(validator.iter_errors(event))
    assert list(validator.iter_errors({**event, "sequence": "123.45"}))
    assert list(validator.iter_errors({**event, "partitionkey": ""}))
    no_time = {k: v for k, v in event.items() if k != "time"}
    assert list(validator.iter_errors(no_time))  # a sequence needs its time
