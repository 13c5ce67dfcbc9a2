"""``batchbridge state``: the latest event of every resource, from the bridge's subject-state store."""

from __future__ import annotations

import argparse
import contextlib
import sys

import orjson

from ..errors import ConfigError
from ._io import OUTBOX_HELP

#: rows printed at most unless ``--limit`` says otherwise
DEFAULT_LIMIT = 10_000
_COLUMNS = ("subject", "type", "state", "time", "sequence", "id", "provider")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("state", help="the latest event per subject (resource), as the bridge has seen them")
    p.add_argument("subject", nargs="?", metavar="SUBJECT-GLOB",
                   help="only subjects matching this glob, e.g. 'jobs/job-1*' ('*' also crosses '/')")
    p.add_argument("--config", help="bridge config file (its outbox)")
    p.add_argument("--outbox", metavar="PATH|URL", help=OUTBOX_HELP)
    p.add_argument("--json", action="store_true", help="one JSON object per line: " + ", ".join(_COLUMNS))
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help=f"at most this many (default {DEFAULT_LIMIT})")
    p.set_defaults(func=run_state)


def run_state(args: argparse.Namespace) -> int:
    from ..config import BridgeConfig, load_config
    from ..stores import open_store, state_of

    config = load_config(args.config) if args.config else BridgeConfig(source="<command line>")
    if args.outbox:
        config = config.with_outbox(args.outbox)
    if args.limit < 1:
        raise ConfigError(f"must be at least 1, got {args.limit}", where="--limit")
    with contextlib.closing(open_store(config.outbox, must_exist=True)) as ob:
        rows = state_of(ob).query(args.subject, limit=args.limit + 1)
    more = len(rows) > args.limit
    rows = rows[:args.limit]
    out = sys.stdout
    if args.json:
        for r in rows:
            out.write(orjson.dumps(r.as_dict()).decode() + "\n")
    else:
        table = [list(_COLUMNS)] + [[str(v) if v is not None else "-" for v in r.as_dict().values()] for r in rows]
        widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS))]
        for line in table:
            out.write("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() + "\n")
    if more:
        print(f"batchbridge: more than {args.limit} subjects match; showing the first {args.limit} (--limit)",
              file=sys.stderr)
    return 0
