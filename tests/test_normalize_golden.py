"""``batchbridge normalize`` writes, byte for byte, what it wrote before its speed work.

Two streams, run through the real command in its own process: the benchmark's mixed stream (all five
vendors, every envelope) and a hostile variant of it -- repeated keys, whitespace before colons,
``\\u`` escapes (of colons too), truncated lines, Base64, JSON strings and arrays, blank lines,
extra nesting. The SHA-256 of stdout and of stderr are those main's code (8b124f6, before the
duplicate-key pre-test, the fast path and the chunked writes) produced from the same input; a change
to the output of any one event or any one error fails here. When the output is *meant* to change,
recompute them with the old code and say so in the commit.

Both builds of the normalising path run against the same hashes: the pure-Python one and the one
``setup.py`` compiles with mypyc (``core/speedups.py``) -- where this checkout is compiled, else the
pure path twice.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from _common import payload_lines

PAYLOADS = 3000

GOLDEN = {
    "mixed.jsonl": ("ef38cda81027cc40de2af412f5389a56b13d54a8505c24f2666897cc26191b56",
                    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),  # nothing on stderr
    "hostile.jsonl": ("9484da4b8c69285390d6679d2848dbf5833ea96f971a63489943ae680bcfcbcd",
                      "5ac3edc908e96dfa442207020f3493f09d1118803b0b486a14ab656423d863f4"),
}


def mixed() -> Iterator[bytes]:
    yield from payload_lines(PAYLOADS, seed=8)


def _repeat_a_key(line: bytes, rng: random.Random) -> bytes:
    colon = line.find(b'":', rng.randrange(len(line)))
    start = line.rfind(b'"', 0, colon)
    start = line.rfind(b'"', 0, start) if start > 0 else -1
    if start > 0 and colon > 0 and line[start - 1:start] in (b"{", b","):
        return line[:start] + line[start:colon + 1] + b":1," + line[start:]
    return line[:-1] + b',"x":1,"x":2}'


def hostile() -> Iterator[bytes]:
    rng = random.Random(3)
    for line in mixed():
        r = rng.random()
        if line[:1] != b"{" or r < 0.55:
            yield line
        elif r < 0.60:
            yield _repeat_a_key(line, rng)
        elif r < 0.65:
            yield line.replace(b'":', b'" :')
        elif r < 0.70:
            yield line.replace(b"a", b"\\u0061", 3)
        elif r < 0.73:
            yield line.replace(b'":"', b'":"\\u003a', 2)
        elif r < 0.76:
            yield line[: len(line) // 2]
        elif r < 0.79:
            yield base64.b64encode(line)
        elif r < 0.82:
            yield orjson.dumps({"x": line.decode()})
        elif r < 0.85:
            yield line.replace(b":", b": ", 5)
        elif r < 0.88:
            yield line + b"   "
        elif r < 0.90:
            yield b"[" + line + b"]"
        elif r < 0.93:
            yield line.replace(b'"', b'\\"', 1)
        elif r < 0.95:
            yield b""
        else:
            yield line.replace(b"{", b'{"d":{"d":1},', 1)


STREAMS = {"mixed.jsonl": mixed, "hostile.jsonl": hostile}


BUILDS = {"compiled": {}, "pure": {"BATCHBRIDGE_PURE_PYTHON": "1"}}


def run_normalize(path: Path, build: str = "compiled") -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "BATCHBRIDGE_PURE_PYTHON"} | BUILDS[build]
    return subprocess.run([sys.executable, "-m", "batchbridge.core.cli", "normalize", path.name],
                          cwd=path.parent, capture_output=True, timeout=300, check=False, env=env)


def normalized(path: Path) -> tuple[str, str, int]:
    done = run_normalize(path)
    return hashlib.sha256(done.stdout).hexdigest(), hashlib.sha256(done.stderr).hexdigest(), done.returncode


@pytest.mark.parametrize("build", sorted(BUILDS))
@pytest.mark.parametrize("name", sorted(STREAMS))
def test_normalize_output_is_unchanged(tmp_path: Path, name: str, build: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\n".join(STREAMS[name]()) + b"\n")
    done = run_normalize(path, build)
    assert done.returncode == (1 if name == "hostile.jsonl" else 0)
    if name == "hostile.jsonl":  # the hashes are worth something only if the stream exercises the checks
        errors = done.stderr.decode().splitlines()
        assert sum("appears more than once in one object" in e for e in errors) >= 50
        assert any("invalid JSON" in e for e in errors) and len(done.stdout.splitlines()) >= PAYLOADS // 2
    got = hashlib.sha256(done.stdout).hexdigest(), hashlib.sha256(done.stderr).hexdigest()
    assert got == GOLDEN[name]


if __name__ == "__main__":  # print the hashes of the code on sys.path: how GOLDEN was made
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for stream_name, make in sorted(STREAMS.items()):
            target = Path(tmp) / stream_name
            target.write_bytes(b"\n".join(make()) + b"\n")
            print(stream_name, normalized(target))
