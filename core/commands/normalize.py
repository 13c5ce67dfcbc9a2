"""``batchbridge normalize``: vendor payloads in, canonical CloudEvents out (one JSON object per line)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

from ..errors import InputError
from ..vendors import providers
from ._io import read_inputs


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("normalize", help="decode vendor payloads and print canonical CloudEvents as JSON Lines")
    p.add_argument("source", nargs="?", default="-",
                   help="a file, a directory, '-' for stdin (default), or 'samples' for the bundled ones")
    p.add_argument("--provider", choices=providers(), help="skip detection and decode as this vendor")
    p.set_defaults(func=run)


def normalized(source: str | None, provider: str | None) -> Iterator[tuple[str, list[dict[str, Any]] | InputError]]:
    """Every payload in ``source``: its events, or its typed error with the file and line in ``where``."""
    from ..normalizing import normalize_stream

    for name, data in read_inputs(source):
        for where, outcome in normalize_stream(data, provider=provider):
            if isinstance(outcome, InputError) and name != "stdin":
                outcome.located(name)
            yield where, outcome


def run(args: argparse.Namespace) -> int:
    from ..normalizing import dumps

    out = sys.stdout.buffer
    bad = 0
    for _, outcome in normalized(args.source, args.provider):
        if isinstance(outcome, InputError):
            bad += 1
            print(f"batchbridge: {outcome.code}: {outcome}", file=sys.stderr)
            continue
        for event in outcome:
            out.write(dumps(event) + b"\n")
    out.flush()
    return 1 if bad else 0
