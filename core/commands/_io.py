"""Input and output helpers shared by the subcommands.

Input is streamed: a file or stdin that is JSON Lines is read a line at a time, so ``normalize`` and
``publish`` hold one payload at a time, whatever the size of the input. Only input that is not JSON
Lines -- a single multi-line document (pretty-printed JSON, XML, wrapped Base64) -- is read whole,
because it has to be parsed whole.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import IO, Any

import orjson

from ..errors import ConfigError, InputError

#: the read buffer of an input file: JSON Lines are read a line at a time, and a buffer this size
#: turns a long file into a few hundred reads instead of one per 8 KiB
_READ_BUFFER = 1 << 20
#: most lines read ahead to tell JSON Lines from one multi-line document (only the first two non-blank
#: ones decide; blank lines before them are what this bounds)
_LOOKAHEAD = 1000


#: ``--outbox`` of every command that opens the outbox (``core/stores.py``)
OUTBOX_HELP = ("outbox: a file, or postgresql://USER@HOST:PORT/DB (default: outbox.url, else outbox.path, "
               "from the config)")

def samples_dir() -> Path:
    return Path(str(files("batchbridge.core") / "samples"))


def note(text: str) -> None:
    print(f"batchbridge: note: {text}", file=sys.stderr)


def open_inputs(source: str | None) -> Iterator[tuple[str, IO[bytes]]]:
    """Yield ``(name, binary file)`` for ``-``/stdin, a file, a directory (every file in it, sorted;
    subdirectories are named and skipped), or the word ``samples`` (the bundled vendor samples) when
    no such path exists. Each file is closed once the caller asks for the next."""
    if source in (None, "-"):
        yield "stdin", sys.stdin.buffer
        return
    path = Path(source)
    if not path.exists() and source == "samples":
        path = samples_dir()
    if path.is_dir():
        children = sorted(p for p in path.iterdir() if not p.name.startswith("."))
        for child in children:
            if child.is_dir():
                note(f"skipped the subdirectory {child} (directories are not read recursively)")
        regular = [c for c in children if c.is_file()]
        if not regular:
            note(f"{path} holds no files to read")
        for child in regular:
            with open(child, "rb", buffering=_READ_BUFFER) as fh:
                yield child.name, fh
    elif path.is_file():
        with open(path, "rb", buffering=_READ_BUFFER) as fh:
            yield path.name, fh
    else:
        raise ConfigError(f"no such file or directory: {source}", where="input")


def read_inputs(source: str | None) -> Iterator[tuple[str, bytes]]:
    """:func:`open_inputs`, each input read whole (the bundled samples, small documents)."""
    for name, fh in open_inputs(source):
        yield name, fh.read()


def _json_line(line: bytes) -> bool:
    from ..envelopes import looks_base64

    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return not looks_base64(line)


def _split(fh: IO[bytes]) -> tuple[bool, Iterator[bytes]]:
    """(whether the input is JSON Lines, its lines): a first non-blank line that is a JSON value by
    itself cannot open a multi-line document, so such input is read a line at a time, never held."""
    head: list[bytes] = []
    seen = 0
    first: bytes | None = None
    for line in fh:
        head.append(line)
        body = line.strip()
        if not head[1:] and body.startswith(b"\xef\xbb\xbf"):
            body = body[3:].strip()
        if body:
            seen += 1
            first = body if first is None else first
        if seen >= 2 or len(head) >= _LOOKAHEAD:
            break
    return seen >= 2 and first is not None and _json_line(first), itertools.chain(head, fh)


def normalized_stream(
    fh: IO[bytes], provider: str | None
) -> Iterator[tuple[int | str, list[dict[str, Any]] | InputError]]:
    """Every payload of one input with its events or its typed error (whose ``where`` starts with its
    line), as ``normalize_stream`` splits them -- but JSON Lines a line at a time (:func:`_split`),
    each payload then named by its line number alone."""
    from ..normalizing import check_provider, line_outcomes, normalize_stream

    forced = check_provider(provider)
    lines_, lines = _split(fh)
    if lines_:
        return line_outcomes(lines, forced)
    return normalize_stream(b"".join(lines), provider=provider)


def payloads(fh: IO[bytes]) -> Iterator[tuple[str, bytes]]:
    """Every payload of one input, named as :func:`normalized_stream` names them, JSON Lines a line at
    a time: for callers that decode otherwise than ``normalize`` (``publish`` takes canonical events too)."""
    from ..normalizing import iter_payloads, numbered_lines

    lines_, lines = _split(fh)
    return numbered_lines(lines) if lines_ else iter_payloads(b"".join(lines))
