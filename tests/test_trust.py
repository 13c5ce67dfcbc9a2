"""Trust at intake: an already-canonical CloudEvent is taken only when it is schema-valid, names a type a
vendor mapping produces, and its id recomputes from its content -- at ``serve`` (real HTTP), in the
bridge, and in ``publish -`` (the installed CLI in a subprocess)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from batchbridge.core.bridge import Bridge, decode_payload
from batchbridge.core.config import config_from_dict
from batchbridge.core.errors import UnrecognizedFormatError
from batchbridge.core.event import DATASCHEMA
from batchbridge.core.normalizing import dumps, normalize
from batchbridge.core.serve import create_app
from batchbridge.core.trust import InvalidEventError, trusted_event
from test_schema import BREAKAGES
from uvicorn_thread import run_uvicorn
from vendor_payloads import corpus

CORPUS = corpus()
CLI = str(Path(sys.executable).parent / "batchbridge")


def _event() -> dict[str, Any]:
    return copy.deepcopy(normalize(CORPUS[0][1])[0])


def test_every_normalized_event_is_trusted_as_it_is() -> None:
    for _name, payload in CORPUS:
        for event in normalize(payload):
            assert trusted_event(event) is event


FORGERIES: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    *BREAKAGES,
    ("chosen id", lambda e: e.update(id="0123456789abcdef0123456789abcdef")),
    ("another event's id", lambda e: e.update(id=normalize(CORPUS[1][1])[0]["id"])),
    ("invented type", lambda e: e.update(type="batch.job.exploded") or e["data"].update(transition="exploded")),
    ("100 KB type", lambda e: e.update(type="batch.job." + "x" * 100_000)),
    ("type disagrees with data", lambda e: e.update(type="batch.job.succeeded" if e["type"] != "batch.job.succeeded"
                                                    else "batch.job.failed")),
    ("source disagrees with data", lambda e: e.update(source="batch://aws/us-east-1")),
    ("edited raw", lambda e: e.update(time=None) or e.pop("time") or e["data"]["raw"].update(x=1)),
    ("edited subject", lambda e: e.update(subject=e["subject"] + "x")),
    ("boolean for an integer", lambda e: e["data"].update(exit_code=True)),
    ("a day that does not exist", lambda e: e["data"]["times"].update(created="2024-02-30T00:00:00Z")),
    ("specversion 0.3", lambda e: e.update(specversion="0.3")),
]


@pytest.mark.parametrize("mutate", [m for _, m in FORGERIES], ids=[n for n, _ in FORGERIES])
def test_forged_or_broken_canonical_events_are_invalid_event(mutate: Callable[[dict[str, Any]], None]) -> None:
    event = _event()
    mutate(event)
    with pytest.raises(InvalidEventError) as info:
        trusted_event(event)
    assert info.value.code == "invalid_event" and info.value.where and info.value.where.startswith("$")
    # the bridge's decode refuses it too, as bytes; one with another dataschema is no event of ours at all
    with pytest.raises(UnrecognizedFormatError if event.get("dataschema") != DATASCHEMA else InvalidEventError):
        decode_payload(orjson.dumps(event))


# --- at serve, over real HTTP -------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Bridge, httpx.Client, Path]]:
    out = tmp_path / "events.jsonl"
    cfg = config_from_dict({"routes": [{"to": [out.as_uri()]}], "outbox": {"path": str(tmp_path / "outbox.db")}})
    bridge = Bridge(cfg)
    url, stop = run_uvicorn(create_app(bridge))
    client = httpx.Client(base_url=url, timeout=10)
    try:
        yield bridge, client, out
    finally:
        client.close()
        stop()
        bridge.stop()


def test_serve_refuses_forged_ids_and_invented_types_and_keeps_them(served: tuple[Bridge, httpx.Client, Path]) -> None:
    bridge, client, out = served
    genuine = _event()
    forged = copy.deepcopy(genuine)
    forged["id"] = "f" * 32  # pre-empting a real id
    invented = copy.deepcopy(genuine)
    invented["type"] = "batch.job." + "z" * 100_000
    for bad in (forged, invented):
        r = client.post("/events", content=orjson.dumps(bad), headers={"Content-Type": "application/cloudevents+json"})
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "invalid_event"
    assert r.json()["where"] == "$.type"
    assert bridge.outbox.dead_letter_count() == 2  # kept, with the reason
    assert {d.code for d in bridge.outbox.dead_letters()} == {"invalid_event"}
    r = client.post("/events", content=dumps(genuine), headers={"Content-Type": "application/cloudevents+json"})
    assert r.status_code == 204, r.text
    metrics = client.get("/metrics").text
    assert "zzzz" not in metrics and len(metrics) < 20_000  # labels come from closed sets only
    assert 'batchbridge_payloads_rejected_total{error="invalid_event"} 2.0' in metrics
    bridge.drain(10)
    assert [orjson.loads(line)["id"] for line in out.read_bytes().splitlines()] == [genuine["id"]]


# --- publish - (the installed CLI) ------------------------------------------------------------------------


def cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([CLI, *args], input=stdin, capture_output=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_normalize_pipe_publish_and_consume_pipe_publish_are_byte_identical(tmp_path: Path) -> None:
    normalized = cli("normalize", "samples")
    assert normalized.returncode == 0, normalized.stderr
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    done = cli("publish", "-", "--to", first.as_uri(), stdin=normalized.stdout)
    assert done.returncode == 0, done.stderr
    assert first.read_bytes() == normalized.stdout
    consumed = cli("consume", first.as_uri(), "--idle", "0.5")
    assert consumed.returncode == 0, consumed.stderr
    assert consumed.stdout == normalized.stdout
    done = cli("publish", "-", "--to", second.as_uri(), stdin=consumed.stdout)
    assert done.returncode == 0, done.stderr
    assert second.read_bytes() == first.read_bytes()


def test_publish_refuses_a_forged_canonical_event_and_names_the_line(tmp_path: Path) -> None:
    good = _event()
    forged = copy.deepcopy(good)
    forged["id"] = "0" * 32
    out = tmp_path / "out.jsonl"
    done = cli("publish", "-", "--to", out.as_uri(), stdin=dumps(good) + b"\n" + dumps(forged) + b"\n")
    assert done.returncode == 1
    assert b"invalid_event: [at line 2: $.id]" in done.stderr
    assert out.read_bytes() == dumps(good) + b"\n"



def test_a_sequence_without_its_time_is_refused_by_the_schema() -> None:
    event = next(copy.deepcopy(e) for _, payload in CORPUS for e in normalize(payload) if "sequence" in e)
    del event["time"]
    with pytest.raises(InvalidEventError, match="sequence needs time"):
        trusted_event(event)
