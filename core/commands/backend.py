"""``batchbridge publish``, ``consume`` and ``backends``: move canonical events to and from a backend URI."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from typing import Any

from ..errors import InputError
from ..event import PROVIDERS
from ..secrets import redact_uri
from ._io import read_inputs

#: events handed to the publisher at once: large enough to fill batches, small enough to stream
_CHUNK = 500


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("publish", help="decode, normalise and publish vendor payloads to a backend URI")
    p.add_argument("source", nargs="?", default="-",
                   help="a file, a directory, '-' for stdin (default), or 'samples' for the bundled ones")
    p.add_argument("--to", required=True, metavar="URI", help="backend URI, e.g. sqs://q?region=eu-west-1")
    p.add_argument("--provider", choices=PROVIDERS, help="skip detection and decode as this vendor")
    p.add_argument("--quiet", action="store_true", help="no progress line and no summary")
    p.set_defaults(func=run_publish)

    c = sub.add_parser("consume", help="receive CloudEvents from a backend URI, print them and ack them")
    c.add_argument("uri", metavar="URI")
    c.add_argument("--max", type=int, default=0, help="stop after N events (0: until interrupted or idle)")
    c.add_argument("--idle", type=float, default=5.0, help="stop after this many seconds with nothing received")
    c.add_argument("--no-ack", action="store_true", help="nack instead of ack (leave the messages)")
    c.set_defaults(func=run_consume)

    b = sub.add_parser("backends", help="list the backend URI schemes and their options")
    b.set_defaults(func=run_backends)


def _decoded(source: str, provider: str | None) -> Iterator[list[dict[str, Any]] | InputError]:
    """Every payload in ``source`` decoded as the bridge's intake does: a canonical CloudEvent (what
    ``normalize`` and ``consume`` print) is taken as it is under "Trust at intake", anything else is
    normalised -- so ``normalize x | publish -`` and ``consume | publish -`` work, byte for byte."""
    from ..bridge import decode
    from ..normalize import iter_payloads

    for name, data in read_inputs(source):
        for where, payload in iter_payloads(data):
            try:
                yield decode(payload, provider=provider)
            except InputError as exc:
                exc.located(where)
                if name != "stdin":
                    exc.located(name)
                yield exc


def _chunks(source: str, provider: str | None, bad: list[int]) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for outcome in _decoded(source, provider):
        if isinstance(outcome, InputError):
            bad[0] += 1
            print(f"batchbridge: {outcome.code}: {outcome}", file=sys.stderr)
            continue
        chunk.extend(outcome)
        if len(chunk) >= _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_publish(args: argparse.Namespace) -> int:
    from ..backends import open_publisher

    progress = sys.stderr.isatty() and not args.quiet
    published = failed = 0
    bad = [0]
    start = time.monotonic()
    with open_publisher(args.to) as pub:
        for chunk in _chunks(args.source, args.provider, bad):
            for result in pub.publish(chunk):
                if result.ok:
                    published += 1
                else:
                    failed += 1
                    print(f"batchbridge: failed {result.event_id}: {result.error}", file=sys.stderr)
            if progress:
                print(f"\r{published} published, {failed} failed", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    if not args.quiet:
        took = time.monotonic() - start
        print(f"published {published}, failed {failed}, bad input {bad[0]} to {redact_uri(args.to)} "
              f"in {took:.2f}s", file=sys.stderr)
    return 0 if not failed and not bad[0] else 1


def run_consume(args: argparse.Namespace) -> int:
    from ..backends import open_subscriber
    from ..normalize import dumps

    out = sys.stdout.buffer
    seen = undecodable = 0
    idle_since = time.monotonic()
    with open_subscriber(args.uri) as sub:
        while not args.max or seen < args.max:
            want = min(10, args.max - seen) if args.max else 10
            batch = sub.receive(max_messages=want, timeout=min(1.0, args.idle))
            if not batch:
                if time.monotonic() - idle_since >= args.idle:
                    break
                continue
            idle_since = time.monotonic()
            good = [item for item in batch if item.event is not None]
            bad = [item for item in batch if item.event is None]
            for item in good:
                assert item.event is not None
                out.write(dumps(item.event) + b"\n")
            out.flush()
            seen += len(good)
            (sub.nack if args.no_ack else sub.ack)(good)
            for item in bad:
                # never acked: a native dead-letter queue gets it with the reason, else it stays put
                undecodable += 1
                where = "dead-lettered" if sub.can_dead_letter else "left on the queue"
                print(f"batchbridge: undecodable message {item.message.message_id} ({where}): {item.error}",
                      file=sys.stderr)
            if bad and sub.can_dead_letter:
                sub.dead_letter(bad, "undecodable", str(bad[0].error))
            elif bad:
                sub.nack(bad)
    return 1 if undecodable else 0


def run_backends(args: argparse.Namespace) -> int:
    from ..registry import options_table

    print(options_table())
    return 0
