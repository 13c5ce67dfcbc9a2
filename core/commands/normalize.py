"""``batchbridge normalize``: vendor payloads in, canonical CloudEvents out (one JSON object per line)."""

from __future__ import annotations

import argparse
import sys

import orjson

from ..errors import InputError
from ..vendors import providers
from ._io import normalized_stream, note, open_inputs


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("normalize", help="decode vendor payloads and print canonical CloudEvents as JSON Lines")
    p.add_argument("source", nargs="?", default="-",
                   help="a file, a directory, '-' for stdin (default), or 'samples' for the bundled ones")
    p.add_argument("--provider", choices=providers(), help="skip detection and decode as this vendor")
    p.set_defaults(func=run)


#: events serialised before one write: big writes (not one per event) at a bounded memory cost. Kept
#: under malloc's trim threshold (~50 KB a join): 256 events' joins of ~380 KB made glibc give the top
#: of the heap back and fault it in again at every write -- 114,000 page faults on 200,000 lines
#: against 4,500 (and half the system time), the same writes otherwise
_WRITE_EVERY = 32


def run(args: argparse.Namespace) -> int:
    """Every payload of every input: its events on stdout, or its typed error on stderr with the file
    and line in ``where``. One loop from the input to the output: a stream of a million lines pays
    for every generator in between a million times over."""
    out = sys.stdout.buffer
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE  # no copy to append b"\n"
    bad = 0
    chunk: list[bytes] = []
    append = chunk.append
    for name, fh in open_inputs(args.source):
        payloads = 0
        for _, outcome in normalized_stream(fh, args.provider):
            payloads += 1
            if isinstance(outcome, InputError):
                bad += 1
                if name != "stdin":
                    outcome.located(name)
                print(f"batchbridge: {outcome.code}: {outcome}", file=sys.stderr)
                continue
            for event in outcome:  # a vendor's sequence of events (a third party's need not be a list)
                append(dumps(event, option=newline))
            if len(chunk) >= _WRITE_EVERY:
                out.write(b"".join(chunk))
                chunk.clear()
        if not payloads:
            note(f"{name} holds no payloads (it is empty or blank)")
    out.write(b"".join(chunk))
    out.flush()
    return 1 if bad else 0
