"""``batchbridge publish``, ``consume`` and ``backends``: move canonical events to and from a backend URI."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import DecodeMessageError, InputError
from ..secrets import redact_uri
from ..vendors import providers
from ._io import note, open_inputs, payloads

if TYPE_CHECKING:
    from ..outcomes import Received

#: events handed to the publisher at once: large enough to fill batches, small enough to stream
_CHUNK = 500


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("publish", help="decode, normalise and publish vendor payloads to a backend URI")
    p.add_argument("source", nargs="?", default="-",
                   help="a file, a directory, '-' for stdin (default), or 'samples' for the bundled ones")
    p.add_argument("--to", required=True, metavar="URI", help="backend URI, e.g. sqs://q?region=eu-west-1")
    p.add_argument("--provider", choices=providers(), help="skip detection and decode as this vendor")
    p.add_argument("--quiet", action="store_true", help="no progress line and no summary")
    p.set_defaults(func=run_publish)

    c = sub.add_parser("consume", help="receive CloudEvents from a backend URI, print them and ack them")
    c.add_argument("uri", metavar="URI")
    c.add_argument("--max", type=int, default=0, help="stop after N events (0: until interrupted or idle)")
    c.add_argument("--idle", type=float, default=5.0,
                   help="stop after this many seconds without a new event (default: %(default)s)")
    c.add_argument("--no-ack", action="store_true", help="nack instead of ack (leave the messages)")
    c.add_argument("--dead-letters", metavar="OUTBOX",
                   help="outbox file whose dead-letter store takes messages that are not CloudEvents once "
                        "they reach the URI's max_deliveries (on a backend without its own dead-letter queue)")
    c.set_defaults(func=run_consume)

    b = sub.add_parser("backends", help="list the backend URI schemes and their options")
    b.set_defaults(func=run_backends)


def _decoded(source: str, provider: str | None) -> Iterator[list[dict[str, Any]] | InputError]:
    """Every payload in ``source`` decoded as the bridge's intake does: a canonical CloudEvent (what
    ``normalize`` and ``consume`` print) is taken as it is under "Trust at intake", anything else is
    normalised -- so ``normalize x | publish -`` and ``consume | publish -`` work, byte for byte. JSON
    Lines are read a line at a time."""
    from ..bridge import decode_payload

    for name, fh in open_inputs(source):
        count = 0
        for where, payload in payloads(fh):
            count += 1
            try:
                yield decode_payload(payload, provider=provider)
            except InputError as exc:
                exc.located(where)
                if name != "stdin":
                    exc.located(name)
                yield exc
        if not count:
            note(f"{name} holds no payloads (it is empty or blank)")


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

    if args.to.lower().startswith("memory:"):
        print("batchbridge: note: a memory:// queue lives inside one process: what this command publishes is "
              "gone when it exits (use file:// or a broker to pass events between commands)", file=sys.stderr)
    progress = sys.stderr.isatty() and not args.quiet
    if not getattr(args, "verbose", 0):
        # the publisher logs each failed event; here one line per cause says it (-v: every event too)
        logging.getLogger("batchbridge.publisher").setLevel(logging.ERROR)
    published = failed = 0
    causes: dict[str, list[str]] = {}
    bad = [0]
    start = time.monotonic()
    with open_publisher(args.to) as pub:
        for chunk in _chunks(args.source, args.provider, bad):
            for result in pub.publish(chunk):
                if result.ok:
                    published += 1
                    continue
                failed += 1
                why = f"{result.error.code}: {result.error}" if result.error is not None else "unknown error"
                ids = causes.setdefault(why, [])
                if not ids:
                    print(f"batchbridge: failed {result.event_id}: {why}", file=sys.stderr)
                ids.append(str(result.event_id))
            if progress:
                print(f"\r{published} published, {failed} failed", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    for why, ids in causes.items():
        if len(ids) > 1:
            print(f"batchbridge: {len(ids) - 1} more event(s) failed the same way ({why.split(':', 1)[0]})",
                  file=sys.stderr)
    if not args.quiet:
        took = time.monotonic() - start
        print(f"published {published}, failed {failed}, bad input {bad[0]} to {redact_uri(args.to)} "
              f"in {took:.2f}s", file=sys.stderr)
    return 0 if not failed and not bad[0] else 1


def run_consume(args: argparse.Namespace) -> int:
    from ..backends import open_subscriber
    from ..normalizing import dumps

    out = sys.stdout.buffer
    seen = undecodable = 0
    store = _dead_letter_store(args)
    # --idle counts from the last *event*: a queue that only redelivers what cannot be decoded is idle
    idle_since = time.monotonic()
    with open_subscriber(args.uri) as sub:
        while not args.max or seen < args.max:
            if time.monotonic() - idle_since >= args.idle:
                break
            want = min(10, args.max - seen) if args.max else 10
            batch = sub.receive(max_messages=want, timeout=max(0.01, min(1.0, args.idle)))
            good = [item for item in batch if item.event is not None]
            bad = [item for item in batch if item.event is None]
            if good:
                idle_since = time.monotonic()
            for item in good:
                assert item.event is not None
                out.write(dumps(item.event) + b"\n")
            out.flush()
            seen += len(good)
            if good:
                (sub.nack if args.no_ack else sub.ack)(good)
            if bad:
                undecodable += len(bad)
                done = sub.reject(bad, "undecodable", store)
                for item in bad:
                    print(f"batchbridge: undecodable message {item.message.message_id}: {item.error}",
                          file=sys.stderr)
                print(f"batchbridge: {done.deferred} backed off, {done.dead_lettered} dead-lettered, "
                      f"{done.kept} left on the queue after max_deliveries={sub.max_deliveries}", file=sys.stderr)
    return 1 if undecodable else 0


def _dead_letter_store(args: argparse.Namespace) -> Callable[[Sequence[Received]], None] | None:
    """``--dead-letters OUTBOX`` as the sink :meth:`Subscriber.reject` hands exhausted messages to."""
    if not args.dead_letters:
        return None
    from ..outbox import INTAKE, DeadLetter, Outbox

    source = f"consume {redact_uri(args.uri)}"

    def keep(items: Sequence[Received]) -> None:
        with Outbox(args.dead_letters) as box:
            box.put([], [DeadLetter.of(INTAKE, source, r.body, r.error or DecodeMessageError("undecodable"))
                         for r in items])

    return keep


def run_backends(args: argparse.Namespace) -> int:
    from ..registry import options_table

    print(options_table())
    return 0
