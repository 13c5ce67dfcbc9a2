"""What every serverless handler shares: one bridge per handler, kept across warm invocations, and
flushed before the invocation returns (a frozen or recycled instance runs no background thread)."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import orjson
from batchbridge.core.binding import PREFIXES
from batchbridge.core.bridge import Bridge, IntakeResult, Payload
from batchbridge.core.config import DEFAULT_OUTBOX, BridgeConfig, catch_all, config_from_dict, load_config
from batchbridge.core.driver import ReceivedMessage
from batchbridge.core.errors import BackendError, ConfigError
from batchbridge.core.event import DATASCHEMA
from batchbridge.core.secrets import redact, redact_uri
from batchbridge.core.subscriber import decode_message

log = logging.getLogger("batchbridge.contrib")

#: a backend URI (``"sqs://jobs?region=eu-west-1"``), several, a config file path, a parsed config
#: document, a :class:`BridgeConfig`, or a ready :class:`Bridge`
Target: TypeAlias = str | Path | Sequence[str] | Mapping[str, Any] | BridgeConfig | Bridge

#: where a handler's outbox goes when neither ``outbox=`` nor the config names one
OUTBOX_DIR_ENV = "BATCHBRIDGE_OUTBOX_DIR"


def _config(target: str | Path | Sequence[str] | Mapping[str, Any] | BridgeConfig) -> BridgeConfig:
    if isinstance(target, BridgeConfig):
        return target
    if isinstance(target, Mapping):
        return config_from_dict(target, source="<handler config>")
    if isinstance(target, str) and "://" in target:
        return BridgeConfig(source="<handler>").with_routes(catch_all([target], where="handler"))
    if isinstance(target, (str, Path)):
        return load_config(target)
    uris = list(target)
    if not uris or not all(isinstance(u, str) and "://" in u for u in uris):
        raise ConfigError("a handler needs a backend URI, a list of them, a config file, or a BridgeConfig",
                          where="handler")
    return BridgeConfig(source="<handler>").with_routes(catch_all(uris, where="handler"))


def _default_outbox(config: BridgeConfig, kind: str) -> Path:
    """Serverless code directories are read-only, and /tmp is the only writable place: one file per
    handler kind and config, so two handlers in one process never contend for one outbox lock."""
    directory = Path(os.environ.get(OUTBOX_DIR_ENV) or tempfile.gettempdir())
    digest = hashlib.sha256("\n".join([kind, config.source, *config.destinations()]).encode()).hexdigest()[:12]
    return directory / f"batchbridge-{kind}-{digest}.db"


def make_bridge(target: Target, *, outbox: str | Path | None, serverless: str | None) -> Bridge:
    """The bridge a handler uses; ``serverless`` (the handler kind) moves a default outbox to the
    temp directory, as a long-running server keeps it where the config says."""
    if isinstance(target, Bridge):
        return target
    config = _config(target)
    if outbox is None and serverless and config.outbox.path == Path(DEFAULT_OUTBOX):
        outbox = _default_outbox(config, serverless)
    return Bridge(config, outbox=outbox)


class Runtime:
    """A bridge and the flush every invocation ends with."""

    def __init__(self, target: Target, *, outbox: str | Path | None, drain_timeout: float, kind: str) -> None:
        self.bridge = make_bridge(target, outbox=outbox, serverless=kind)
        self.drain_timeout = drain_timeout
        self.source = kind

    def handle(self, items: Sequence[tuple[Payload, Mapping[str, Any] | None]]) -> list[IntakeResult]:
        """Commit every item to the outbox in one transaction (raises OutboxError when it cannot)."""
        results: list[IntakeResult] = self.bridge.handle_many(items, source=self.source)
        for r in results:
            if r.error is not None:
                log.error("%s: dead-lettered a payload that cannot be decoded: %s", self.source, redact(str(r.error)),
                          extra={"error_code": r.error.code, "dead_letter_ids": r.dead_letter_ids})
        return results

    def flush(self, budget: float | None = None) -> bool:
        """Publish until the outbox is empty, for at most ``drain_timeout`` (and ``budget``) seconds."""
        timeout = self.drain_timeout if budget is None else max(0.0, min(self.drain_timeout, budget))
        started = time.monotonic()
        drained: bool = self.bridge.drain(timeout)
        if not drained:
            depths = {redact_uri(d): n for d, n in self.bridge.outbox.depths().items()}
            log.warning("%s: events still in the outbox after %.1fs (a destination is failing)", self.source,
                        time.monotonic() - started, extra={"outbox_depth": depths})
        return drained

    def pending_ids(self) -> set[str]:
        """Ids of the events some destination has not confirmed yet."""
        outbox = self.bridge.outbox
        ids: set[str] = set()
        for destination, depth in outbox.depths().items():
            ids.update(p.event_id for p in outbox.fetch(destination, depth) if p.event_id)
        return ids

    def not_delivered(self) -> BackendError:
        return BackendError(f"{self.bridge.outbox.depth()} events are not published yet; failing the invocation "
                            "so the platform delivers it again", where=self.source, retryable=True)

    def close(self) -> None:
        self.bridge.stop()


def intake(body: bytes, attributes: Mapping[str, str], *, original: Payload | None = None,
           meta: Mapping[str, Any] | None = None) -> tuple[Payload, dict[str, Any]]:
    """What to hand the bridge for one transport message: the CloudEvent when the message is one of
    ours in either binding mode (binary mode keeps its attributes outside the body), else the vendor
    payload (``original``, or the body) with the vendor's own attributes beside it."""
    info: dict[str, Any] = dict(meta or {})
    vendor = {k: v for k, v in attributes.items() if not k.startswith(PREFIXES) and k != "content-type"}
    if vendor:
        info["attributes"] = vendor
    if any(k.startswith(PREFIXES) for k in attributes) or DATASCHEMA.encode() in body:
        got = decode_message(ReceivedMessage(body, dict(attributes), None, attributes.get("content-type")))
        if got.event is not None and got.event.get("dataschema") == DATASCHEMA:
            return got.event, info
    return (body if original is None else original), info


def as_bytes(body: Any) -> bytes:
    """A message body as the platform hands it: bytes, text, or (already parsed) JSON."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8", "surrogatepass")
    try:
        return orjson.dumps(body)
    except TypeError as exc:
        raise ConfigError(f"cannot read a message body of type {type(body).__name__}: {exc}",
                          where="handler") from None


def b64(data: Any) -> bytes:
    if not isinstance(data, (str, bytes)):
        return b""
    try:
        return base64.b64decode(data, validate=False)
    except ValueError:
        return b""


def summary(results: Iterable[IntakeResult]) -> dict[str, int]:
    results = list(results)
    return {
        "events": sum(r.events for r in results),
        "deliveries": sum(r.deliveries for r in results),
        "unrouted": sum(r.unrouted for r in results),
        "dead_lettered": sum(1 for r in results if r.error is not None),
    }
