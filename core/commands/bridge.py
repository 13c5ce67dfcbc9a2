"""``batchbridge serve | relay | dlq | demo``: the bridge from the command line."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from ..config import BridgeConfig, catch_all, load_config
from ..errors import BatchBridgeError, ConfigError
from ..secrets import redact, redact_uri
from ..vendors import providers
from ._io import OUTBOX_HELP, read_inputs, samples_dir


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="receive vendor pushes over HTTP and publish them through the outbox")
    p.add_argument("--config", required=True, help="bridge config file (TOML)")
    p.add_argument("--host", help="address to bind (default: serve.host, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: serve.port, else 8080)")
    p.add_argument("--outbox", help=OUTBOX_HELP)
    p.add_argument("--check", action="store_true",
                   help="before binding, open every destination (as `batchbridge check` does) and refuse to "
                        "start unless all are usable")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="run N worker processes on the one port and the one outbox, and restart any that dies "
                        "(default: one process, no supervisor)")
    p.add_argument("--worker-socket", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=run_serve)

    p = sub.add_parser("relay", help="consume from one backend, normalise, route and publish via the outbox")
    p.add_argument("--from", dest="source", required=True, metavar="URI", help="backend to consume from")
    p.add_argument("--to", nargs="+", default=[], metavar="URI",
                   help="send every event here (besides the routes of --config)")
    p.add_argument("--config", help="bridge config file (TOML): routes, outbox")
    p.add_argument("--outbox", help=OUTBOX_HELP)
    p.add_argument("--provider", choices=providers(), help="skip detection and decode as this vendor")
    p.add_argument("--batch", type=int, default=10, help="messages per receive (default 10)")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="on SIGTERM/SIGINT, seconds to keep publishing what is in the outbox (default 30)")
    p.set_defaults(func=run_relay)

    p = sub.add_parser("dlq", help="inspect, replay or purge the dead-letter store")
    p.add_argument("action", choices=("list", "replay", "purge"))
    p.add_argument("--config", help="bridge config file (its outbox, and routes for replay)")
    p.add_argument("--outbox", help=OUTBOX_HELP)
    p.add_argument("--to", nargs="+", default=[], metavar="URI",
                   help="replay: send an event a destination refused here instead of to that destination; a "
                        "payload that failed at intake is routed by the config and also sent here")
    p.add_argument("--id", type=int, action="append", dest="ids", metavar="N",
                   help="only this dead letter (repeatable); default: all")
    p.add_argument("--json", action="store_true", help="list: one JSON object per line")
    p.add_argument("--payload", action="store_true", help="list: include the payload (text, or Base64)")
    p.add_argument("--limit", type=int, default=1000, help="list: at most this many (default 1000)")
    p.set_defaults(func=run_dlq)

    p = sub.add_parser("demo", help="run the bridge on the bundled samples into a file:// backend and show "
                                    "what came out (no cloud, no Docker)")
    p.add_argument("--out", default="out/events.jsonl", help="the file:// backend's file (default: out/events.jsonl)")
    p.add_argument("--show", type=int, default=3, help="how many CloudEvents to print (default 3)")
    p.set_defaults(func=run_demo)


def _config(args: argparse.Namespace, *, to: list[str] | None = None, secrets: bool = True) -> BridgeConfig:
    config = load_config(args.config, secrets=secrets) if getattr(args, "config", None) \
        else BridgeConfig(source="<command line>")
    if to:
        config = config.with_routes(catch_all(to))
    if getattr(args, "outbox", None):
        config = config.with_outbox(args.outbox)
    return config


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by the first SIGTERM/SIGINT; a second SIGINT interrupts for real."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        print(f"batchbridge: {signal.Signals(signum).name}: finishing the batch in flight and draining the "
              "outbox", file=sys.stderr)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# --- serve ------------------------------------------------------------------------------------------

#: how ``serve --workers N`` passes ``--outbox`` to its workers (an environment variable: a command line
#: is readable by every user of the host, and a PostgreSQL URL may hold a password)
WORKER_OUTBOX_ENV = "BATCHBRIDGE_SERVE_OUTBOX"


def run_serve(args: argparse.Namespace) -> int:
    from ..serve import require_serve_extra, serve

    require_serve_extra()
    if args.worker_socket is not None and os.environ.get(WORKER_OUTBOX_ENV):
        args.outbox = os.environ[WORKER_OUTBOX_ENV]  # not on the command line: it may hold a password
    config = _config(args)
    host = args.host or config.serve.host
    port = config.serve.port if args.port is None else args.port
    if not config.routes and config.unrouted == "drop":
        print(f"batchbridge serve: warning: {config.source} has no routes and unrouted = \"drop\": every event "
              "is accepted and then dropped", file=sys.stderr)
    if args.check:
        from .ops import preflight

        if not preflight(config, None):
            print("batchbridge serve: not started: a destination is not usable (see above)", file=sys.stderr)
            return 1

    def bound() -> None:
        print(f"batchbridge serve: http://{host}:{port}/events  outbox {config.outbox.where}  "
              f"{len(config.routes)} routes", file=sys.stderr, flush=True)

    if args.workers is not None and args.worker_socket is None:
        from ..serve_workers import supervise

        argv = [*(["-v"] * args.verbose), "--log-format", args.log_format, "serve", "--config", args.config]
        env = {WORKER_OUTBOX_ENV: args.outbox} if args.outbox else {}
        return supervise(config, argv, workers=args.workers, host=host, port=port, on_bound=bound, env=env)
    if args.worker_socket is not None:
        from ..serve_workers import stop_with_supervisor

        stop_with_supervisor()
    serve(config, host=host, port=port, log_level="info" if args.verbose else "warning",
          on_bound=None if args.worker_socket is not None else bound, worker_socket=args.worker_socket)
    return 0


# --- relay ------------------------------------------------------------------------------------------


def run_relay(args: argparse.Namespace) -> int:
    from ..bridge import Bridge
    from ..registry import check_uri
    from ..relay import relay

    if not args.to and not args.config:
        raise ConfigError("say where events go: --to URI... and/or --config FILE with routes", where="relay")
    config = _config(args, to=args.to)
    try:
        check_uri(args.source, "subscriber")
    except ConfigError as exc:
        raise exc.located("--from") from None
    bridge = Bridge(config)
    try:
        with _stop_on_signals() as stop:
            print(f"batchbridge relay: {redact_uri(args.source)} -> {len(config.destinations())} destination(s); "
                  "Ctrl-C or SIGTERM to stop", file=sys.stderr)
            report, drained = relay(bridge, args.source, stop, drain_timeout=args.drain_timeout,
                                    batch=args.batch, provider=args.provider)
    finally:
        bridge.stop()
    left = "" if drained else "; some events are still in the outbox and go out on the next start"
    print(f"batchbridge relay: {report.messages} messages, {report.events} events, "
          f"{report.dead_lettered} dead-lettered{left}", file=sys.stderr)
    return 0


# --- dlq --------------------------------------------------------------------------------------------


def _payload_text(data: bytes) -> dict[str, str]:
    """A stored payload for showing, its secrets redacted (a payload may quote a URI, credentials and all)."""
    try:
        return {"payload": redact(data.decode("utf-8"))}
    except UnicodeDecodeError:
        import base64

        return {"payload_base64": base64.b64encode(data).decode()}


def _register_destinations(*groups: Iterable[str | None]) -> None:
    """Parse the destination URIs an outbox names, so that their credentials are known secrets even when
    no config was given (``--outbox``): whatever quotes them is then redacted."""
    from ..registry import parse_uri

    for uri in {u for group in groups for u in group if u}:
        with contextlib.suppress(BatchBridgeError):
            parse_uri(uri)


def run_dlq(args: argparse.Namespace) -> int:
    from ..bridge import Bridge
    from ..stores import open_store

    config = _config(args, to=args.to, secrets=False)
    if args.action == "list":
        with contextlib.closing(open_store(config.outbox, must_exist=True)) as ob:
            records = ob.dead_letters(limit=args.limit)
            _register_destinations(ob.destinations(), (r.destination for r in records))
            wanted = set(args.ids or [])
            shown = 0
            for rec in records:
                if wanted and rec.id not in wanted:
                    continue
                shown += 1
                row: dict[str, Any] = rec.summary()
                if args.payload:
                    row.update(_payload_text(rec.payload))
                if args.json:
                    sys.stdout.write(orjson.dumps(row).decode() + "\n")
                else:
                    where = f" at {row['where']}" if row["where"] else ""
                    dest = f" -> {row['destination']}" if row["destination"] else ""
                    print(f"#{rec.id} [{rec.stage}] {rec.code}: {redact(rec.reason)}{where}{dest} "
                          f"({len(rec.payload)} bytes from {rec.source}, {rec.attempts} attempt(s))")
                    if args.payload:
                        print("    " + redact(next(iter(_payload_text(rec.payload).values())))[:2000])
            total = ob.dead_letter_count()
        if not args.json:
            print(f"{shown} shown, {total} in the dead-letter store ({config.outbox.where})", file=sys.stderr)
        return 0
    if args.action == "purge":
        with contextlib.closing(open_store(config.outbox, must_exist=True)) as ob:
            missing = [i for i in args.ids or [] if ob.dead_letter(i) is None]
            n = ob.purge(args.ids)
        print(f"purged {n} dead letter(s)", file=sys.stderr)
        if missing:
            print(f"batchbridge: error: no dead letter with id {', '.join(map(str, missing))} in "
                  f"{config.outbox.where}", file=sys.stderr)
            return 2
        return 0
    bridge = Bridge(config, outbox=open_store(config.outbox, routes=config.routes, must_exist=True))
    try:
        ids = args.ids or [r.id for r in bridge.outbox.dead_letters(limit=1_000_000)]
        ok = failed = 0
        for dl_id in ids:
            result = bridge.replay(dl_id, to=args.to)
            if result.error is not None or (result.unrouted and not result.deliveries):
                failed += 1
                why = result.error or "still unrouted"
                print(f"#{dl_id}: still failing: {redact(str(why))}", file=sys.stderr)
            else:
                ok += 1
                print(f"#{dl_id}: {result.events} event(s) back in the outbox ({result.deliveries} deliveries)",
                      file=sys.stderr)
        drained = _publish_if_free(bridge)
    finally:
        bridge.stop()
    print(f"replayed {ok}, {failed} still failing{drained}", file=sys.stderr)
    return 0 if failed == 0 else 1


def _publish_if_free(bridge: Any) -> str:
    """Publish the replayed rows now unless a running serve/relay owns the outbox (then it will)."""
    try:
        bridge.start()
    except ConfigError:
        return "; the running bridge publishes them"
    return "; published" if bridge.drain(30.0) else "; some wait in the outbox for their backend"


# --- demo -------------------------------------------------------------------------------------------


def run_demo(args: argparse.Namespace) -> int:
    from ..bridge import Bridge
    from ..normalizing import iter_payloads

    out = Path(args.out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    start = out.stat().st_size if out.exists() else 0
    uri = out.as_uri()
    with tempfile.TemporaryDirectory(prefix="batchbridge-demo-") as tmp:
        config = BridgeConfig(source="<demo>").with_routes(catch_all([uri], where="demo")).with_outbox(
            Path(tmp) / "outbox.db")
        bridge = Bridge(config)
        payloads = events = 0
        bad: list[str] = []
        try:
            for name, data in read_inputs("samples"):
                for where, payload in iter_payloads(data):
                    payloads += 1
                    result = bridge.handle(payload, source=f"demo {name}")
                    events += result.events
                    if result.error is not None:
                        bad.append(f"{name} ({where}): {result.error.code}: {result.error}")
            drained = bridge.drain(30.0)
            stats = bridge.stats.snapshot()
        finally:
            bridge.stop()
    with open(out, "rb") as fh:
        fh.seek(start)
        lines = [orjson.loads(line) for line in fh if line.strip()]
    print(f"batchbridge demo: {payloads} sample payloads from {samples_dir()}")
    print(f"  -> {events} canonical CloudEvents through the outbox -> {uri}")
    print(f"  published {sum(stats['published'].values())}, dead-lettered {len(bad)}, outbox "
          f"{'drained' if drained else 'NOT drained'}")
    for b in bad:
        print(f"  dead letter: {b}")
    print(f"\n{len(lines)} events in {out} from this run, per type:")
    for t, n in sorted(Counter(str(e.get('type')) for e in lines).items()):
        print(f"  {n:4d}  {t}")
    for e in lines[: max(0, args.show)]:
        print()
        print(orjson.dumps(e, option=orjson.OPT_INDENT_2).decode())
    print(f"\nall of them: {out}   (each line is one CloudEvent; try: jq -c '{{type, subject}}' {out})")
    return 0 if drained and len(lines) == events else 1
