"""``batchbridge check`` and ``status``: what an operator asks before starting a bridge and while it runs."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Any

import orjson

from ..errors import ConfigError
from ._io import OUTBOX_HELP


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("check", help="preflight: open every destination of a config (and a relay's source) and "
                                     "say per URI whether it is usable; exit 0 only when all are",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="bridge config file (TOML)")
    p.add_argument("--from", dest="source", metavar="URI", help="also check this relay source, as a subscriber")
    p.add_argument("--to", nargs="+", default=[], metavar="URI", help="also check these destinations")
    p.add_argument("--json", action="store_true", help="one JSON object per URI")
    p.set_defaults(func=run_check)

    p = sub.add_parser("status", help="what waits in the outbox, per destination (rows, oldest age, attempts, last "
                                      "error), and the dead letters",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="bridge config file (its outbox)")
    p.add_argument("--outbox", help=OUTBOX_HELP)
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.set_defaults(func=run_status)


def preflight(config: Any, source: str | None, *, as_json: bool = False) -> bool:
    """Run the checks and print them; True when every URI is usable."""
    from ..preflight import check_all, report_lines

    checks = check_all(config, source)
    if as_json:
        for c in checks:
            sys.stdout.write(orjson.dumps(c.to_dict()).decode() + "\n")
    else:
        for line in report_lines(checks):
            print(line, file=sys.stderr)
    bad = [c for c in checks if not c.ok]
    if not as_json:
        print(f"batchbridge check: {len(checks) - len(bad)} of {len(checks)} URI(s) usable", file=sys.stderr)
    return not bad


def run_check(args: argparse.Namespace) -> int:
    from ..config import BridgeConfig, catch_all, load_config
    from ..registry import check_uri

    if not args.config and not args.source and not args.to:
        raise ConfigError("say what to check: --config FILE, --from URI and/or --to URI...", where="check")
    config = load_config(args.config, secrets=False) if args.config else BridgeConfig(source="<command line>")
    if args.to:
        config = config.with_routes(catch_all(args.to))
    if args.source:
        try:
            check_uri(args.source, "subscriber")
        except ConfigError as exc:
            raise exc.located("--from") from None
    return 0 if preflight(config, args.source, as_json=args.json) else 1


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def run_status(args: argparse.Namespace) -> int:
    from ..config import BridgeConfig, load_config
    from ..stores import destination_heads, open_store

    config = load_config(args.config, secrets=False) if args.config else BridgeConfig(source="<command line>")
    if args.outbox:
        config = config.with_outbox(args.outbox)
    path = config.outbox.where
    with contextlib.closing(open_store(config.outbox, must_exist=True)) as ob:
        backlog = destination_heads(ob)
        dead = ob.dead_letter_count()
    doc = {"outbox": path, "checked": time.time(), "pending": sum(b.rows for b in backlog),
           "dead_letters": dead, "destinations": [b.to_dict() for b in backlog]}
    if args.json:
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
        return 0
    print(f"outbox {path}: {doc['pending']} event(s) pending, {dead} dead letter(s)")
    for b in backlog:
        d = b.to_dict()
        error = f"; last error: {d['last_error']}" if d["last_error"] else ""
        print(f"  {d['destination']}: {b.rows} pending, oldest {_age(b.oldest_age)}, {b.attempts} attempt(s){error}")
    if dead:
        print("  see them with: batchbridge dlq list" + (f" --config {args.config}" if args.config else
                                                         f" --outbox {path}"))
    return 0
