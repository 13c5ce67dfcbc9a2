"""Input and output helpers shared by the subcommands."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path

from ..errors import ConfigError


def samples_dir() -> Path:
    return Path(str(files("batchbridge.core") / "samples"))


def read_inputs(source: str | None) -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, bytes)`` for ``-``/stdin, a file, a directory (every file in it, sorted), or the
    word ``samples`` (the bundled vendor samples) when no such path exists."""
    if source in (None, "-"):
        yield "stdin", sys.stdin.buffer.read()
        return
    path = Path(source)
    if not path.exists() and source == "samples":
        path = samples_dir()
    if path.is_dir():
        for child in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
            yield child.name, child.read_bytes()
    elif path.is_file():
        yield path.name, path.read_bytes()
    else:
        raise ConfigError(f"no such file or directory: {source}", where="input")
