"""CLI input: splitting into payloads, streaming with per-payload errors, and serialising events."""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson
import pytest
from batchbridge.core.errors import ConfigError, InputError, MalformedPayloadError, UnrecognizedFormatError
from batchbridge.core.event import ordering_key
from batchbridge.core.normalizing import dumps, iter_payloads, normalize, normalize_lines, normalize_stream
from vendor_payloads import SAMPLE_FILES, alibaba_job, compact, mns_xml, sample_bytes, sample_json

NODE = sample_bytes("tencent-cmq-node-created.json")
NODE_LINE = compact(json.loads(NODE))
ALIBABA_LINE = compact(alibaba_job("OnJobRunning"))


# --- iter_payloads ---------------------------------------------------------------------------------------


def test_pretty_printed_document_is_one_payload() -> None:
    pretty = json.dumps(json.loads(NODE), indent=4).encode()
    assert pretty.count(b"\n") > 5
    assert list(iter_payloads(pretty)) == [("input", pretty)]


def test_pretty_document_with_one_line_objects_inside_is_still_one_payload() -> None:
    doc = b'{\n  "Events": [\n    ' + compact(json.loads(NODE)["Events"][0]) + b"\n  ]\n}\n"
    assert [where for where, _ in iter_payloads(doc)] == ["input"]
    assert len(normalize(doc)) == 1


def test_json_lines_are_numbered_and_blank_lines_skipped() -> None:
    data = NODE_LINE + b"\n\n" + ALIBABA_LINE + b"\r\n" + NODE_LINE + b"\n"
    assert list(iter_payloads(data)) == [("line 1", NODE_LINE), ("line 3", ALIBABA_LINE), ("line 4", NODE_LINE)]


def test_a_single_line_is_named_by_its_line() -> None:
    assert list(iter_payloads(b"\n" + NODE_LINE)) == [("line 2", NODE_LINE)]


def test_empty_input_has_no_payloads() -> None:
    assert list(iter_payloads(b"")) == []
    assert list(iter_payloads(b"\n  \n")) == []


def test_multi_line_xml_is_one_payload() -> None:
    xml = mns_xml(ALIBABA_LINE.decode())
    assert [where for where, _ in iter_payloads(xml)] == ["input"]


def test_broken_pretty_xml_fails_once_as_input() -> None:
    xml = mns_xml(ALIBABA_LINE.decode()).replace(b"</TopicName>", b"</TopicNam>")
    results = list(normalize_stream(xml))
    assert [where for where, _ in results] == ["input"]
    assert isinstance(results[0][1], MalformedPayloadError)


def test_one_line_xml_documents_are_lines() -> None:
    line = mns_xml(ALIBABA_LINE.decode()).replace(b"\n", b"")
    assert line.count(b"<?xml") == 1
    results = list(normalize_stream(line + b"\n" + line))
    assert [where for where, _ in results] == ["line 1", "line 2"]
    assert all(isinstance(outcome, list) for _, outcome in results)


def test_a_bad_first_line_does_not_swallow_the_rest() -> None:
    for first in (b"<", b"{", b'{"Events": [', b"<Notification>"):
        results = list(normalize_stream(first + b"\n" + NODE_LINE))
        assert [where for where, _ in results] == ["line 1", "line 2"]
        assert isinstance(results[0][1], InputError)
        assert isinstance(results[1][1], list)


def test_line_wrapped_base64_is_one_payload() -> None:
    wrapped = base64.encodebytes(NODE)
    assert wrapped.count(b"\n") > 2
    assert [where for where, _ in iter_payloads(wrapped)] == ["input"]


def test_base64_payload_per_line_are_lines() -> None:
    data = base64.b64encode(NODE_LINE) + b"\n" + base64.b64encode(ALIBABA_LINE) + b"\n"
    assert [where for where, _ in iter_payloads(data)] == ["line 1", "line 2"]


def test_broken_pretty_document_fails_once_as_input() -> None:
    pretty = json.dumps(json.loads(NODE), indent=2).encode().replace(b'"Cpu"', b"Cpu")
    results = list(normalize_stream(pretty))
    assert len(results) == 1
    where, outcome = results[0]
    assert where == "input"
    assert isinstance(outcome, MalformedPayloadError)


# --- normalize_stream ------------------------------------------------------------------------------------


def test_stream_reports_each_bad_line_and_keeps_going() -> None:
    data = b"\n".join([NODE_LINE, b"{broken", ALIBABA_LINE, b"hello there", NODE_LINE])
    results = list(normalize_stream(data))
    assert [where for where, _ in results] == ["line 1", "line 2", "line 3", "line 4", "line 5"]
    good = [outcome for _, outcome in results if isinstance(outcome, list)]
    bad = [outcome for _, outcome in results if isinstance(outcome, InputError)]
    assert [len(events) for events in good] == [1, 1, 1]
    assert isinstance(bad[0], MalformedPayloadError)
    assert bad[0].where is not None and bad[0].where.startswith("line 2")
    assert isinstance(bad[1], UnrecognizedFormatError)
    assert bad[1].where == "line 4: $"


def test_stream_errors_carry_the_line_and_inner_path() -> None:
    broken = json.loads(NODE)
    del broken["Events"][0]["Batch"]["EnvId"]
    data = NODE_LINE + b"\n" + compact(broken)
    (_, first), (_, second) = normalize_stream(data)
    assert isinstance(first, list)
    assert isinstance(second, MalformedPayloadError)
    assert second.where == "line 2: $.Events[0]"
    assert "line 2" in str(second)


def test_stream_with_forced_provider() -> None:
    results = list(normalize_stream(NODE_LINE + b"\n" + ALIBABA_LINE, provider="tencent"))
    assert isinstance(results[0][1], list)
    assert isinstance(results[1][1], InputError)


def test_unknown_provider_fails_before_reading_input() -> None:
    with pytest.raises(ConfigError):
        normalize_stream(NODE_LINE, provider="nope")


@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_every_sample_streams_without_error(name: str) -> None:
    results = list(normalize_stream(sample_bytes(name)))
    assert len(results) == 1
    assert isinstance(results[0][1], list) and results[0][1]


# --- dumps and ordering_key -------------------------------------------------------------------------------


def test_dumps_is_compact_json_of_the_event() -> None:
    event = normalize(NODE)[0]
    encoded = dumps(event)
    assert isinstance(encoded, bytes)
    assert orjson.loads(encoded) == event
    assert b"\n" not in encoded and b'", "' not in encoded
    assert encoded.startswith(b'{"specversion":"1.0","id":"')


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("tencent-cmq-node-created.json", "env-ptoxdb1t"),
        ("alibaba-mns-instance-waiting.json", "job-0000000058524720000077E900007257"),
        ("aws-eventbridge-array-child-failed.json", "7b5d3c40-3e9b-4f3c-bc36-0c4d2a9a1f10"),
        ("azure-records-pool-events.json", "render-pool"),
        ("azure-records-task-failed-pair.json", "render-job"),
    ],
)
def test_ordering_key_is_the_job_else_the_environment(name: str, key: str) -> None:
    assert {ordering_key(event) for event in normalize(sample_bytes(name))} == {key}


@pytest.mark.parametrize("event", [{}, {"data": None}, {"data": {"job": None, "environment": None}}])
def test_ordering_key_of_something_without_ids(event: dict[str, Any]) -> None:
    assert ordering_key(event) is None


def test_mapping_input_is_copied_not_shared() -> None:
    message = json.loads(NODE)
    event = normalize(message)[0]
    message["Events"][0]["Region"] = "changed"
    assert event["data"]["raw"]["Region"] == "ap-guangzhou"
    assert event["id"] == normalize(NODE)[0]["id"]


def test_normalize_lines_matches_normalize_stream_on_json_lines() -> None:
    from batchbridge.core.commands._io import samples_dir
    from batchbridge.core.normalizing import normalize_lines, normalize_stream

    lines = [p.read_bytes().replace(b"\n", b"") for p in sorted(samples_dir().glob("*.json"))]
    lines.insert(3, b'{"not": "a batch event"}')
    data = b"\n".join(lines) + b"\n"

    def flat(stream: object) -> list[object]:
        return [(w, o if isinstance(o, list) else (type(o), o.reason)) for w, o in stream]  # type: ignore[attr-defined]

    expected = flat(normalize_stream(data))
    assert flat(normalize_lines(iter(data.splitlines(keepends=True)))) == expected
    assert sum(isinstance(o, list) for _, o in expected) == len(lines) - 1


# --- the CLI streams its input ------------------------------------------------------------------------


def _peak_rss_mib(args: list[str], stdout: Any) -> float:
    """Run the CLI to completion; its peak resident set (ru_maxrss of that child alone), MiB."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    cli = str(Path(sys.executable).parent / "batchbridge")
    proc = subprocess.Popen([cli, *args], stdout=stdout, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, args
    return usage.ru_maxrss / 1024


def _jsonl(path: Any, megabytes: int) -> int:
    line = NODE_LINE + b"\n"
    n = megabytes * 1024 * 1024 // len(line)
    with open(path, "wb") as fh:
        for _ in range(n // 1000):
            fh.write(line * 1000)
    return n // 1000 * 1000


@pytest.mark.parametrize(("command", "small", "large"), [("normalize", 4, 32), ("publish", 2, 16)])
def test_cli_peak_memory_does_not_grow_with_the_input(tmp_path: Any, command: str, small: int, large: int) -> None:
    """Reading the input whole would add its size (and more) to the peak; streamed, the peaks match."""
    peaks = []
    for mb in (small, large):
        src = tmp_path / f"in-{mb}.jsonl"
        n = _jsonl(src, mb)
        out = tmp_path / f"out-{mb}.jsonl"
        if command == "normalize":
            with open(out, "wb") as fh:
                peaks.append(_peak_rss_mib(["normalize", str(src)], fh))
        else:
            peaks.append(_peak_rss_mib(["publish", str(src), "--quiet", "--to", f"file://{out}?fsync=false"], None))
        with open(out, "rb") as fh:
            assert sum(1 for _ in fh) == n
        src.unlink()
    assert peaks[1] - peaks[0] < (large - small) / 4, f"peak RSS {peaks[0]:.1f} MiB for {small} MB, " \
                                                      f"{peaks[1]:.1f} MiB for {large} MB"


def test_cli_says_when_there_is_nothing_to_read(tmp_path: Any) -> None:
    import subprocess
    import sys
    from pathlib import Path

    cli = str(Path(sys.executable).parent / "batchbridge")
    (tmp_path / "empty.jsonl").write_bytes(b"\n\n")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "sub").mkdir()
    done = subprocess.run([cli, "normalize", str(tmp_path / "empty.jsonl")], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0 and "empty.jsonl holds no payloads" in done.stderr
    done = subprocess.run([cli, "normalize", str(tmp_path / "dir")], capture_output=True, text=True, check=False)
    assert "skipped the subdirectory" in done.stderr and "holds no files" in done.stderr
    done = subprocess.run([cli, "normalize", "-"], input="", capture_output=True, text=True, check=False)
    assert "stdin holds no payloads" in done.stderr


@pytest.mark.parametrize("form", [bytes, bytearray, memoryview])
def test_lines_may_be_any_bytes_like_object(form: Any) -> None:
    """A reader's lines are bytes; a caller's may be a bytearray or a view of one -- which the compiled
    decoders, typed for bytes, would refuse with a TypeError rather than read."""
    line = compact(sample_json("aws-eventbridge-job-succeeded.json"))
    [(where, events)] = list(normalize_lines([form(line)]))
    assert where == "line 1" and isinstance(events, list) and events == normalize(line)
