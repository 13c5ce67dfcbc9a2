"""Logging: stdlib :mod:`logging` with a JSON formatter option, secrets scrubbed from every record.

batchbridge logs under the ``batchbridge`` logger hierarchy and never configures logging on import.
An application (or the CLI's ``--log-format json``) calls :func:`configure_logging` once::

    from batchbridge.core import configure_logging
    configure_logging(json=True, level="INFO")

Every record about a publish or a receive carries the event's id and type and the backend (its URI,
redacted) as ``extra`` fields -- ``event_id``, ``event_type``, ``backend`` and, when known,
``message_id``, ``error_code`` -- so a log pipeline can filter on them. The JSON formatter emits each
extra field as a top-level key; the text formatter appends them as ``key=value``.

Both formatters run every string -- the message, its arguments, the extra fields, the traceback --
through :func:`batchbridge.core.secrets.redact`, so a connection string or token that reaches a log
call is masked even when it came from an SDK's exception text.
"""

from __future__ import annotations

import datetime as _dt
import json as _json
import logging
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any

from .outcomes import PublishResult, Received
from .secrets import redact

__all__ = ["EVENT_FIELDS", "JsonFormatter", "TextFormatter", "configure_logging"]

#: the ``extra`` keys batchbridge puts on publish/consume records, in the order the text format shows them
EVENT_FIELDS = ("event_id", "event_type", "backend", "message_id", "error_code", "retryable")

#: attributes every LogRecord has; anything else on a record came from ``extra=``
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

publish_log = logging.getLogger("batchbridge.publisher")
consume_log = logging.getLogger("batchbridge.subscriber")


def _scrub(value: Any) -> Any:
    """Redact strings, recursively through the JSON-able containers an ``extra`` value may be."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {redact(str(k)): _scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_scrub(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return redact(str(value))


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (RFC 3339, UTC), ``level``, ``logger``, ``message``, every
    ``extra`` field, and ``exception`` / ``stack`` when present. All strings redacted."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in _extras(record).items():
            out.setdefault(key, _scrub(value))
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exception"] = redact(record.exc_text)
        if record.stack_info:
            out["stack"] = redact(self.formatStack(record.stack_info))
        return _json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The CLI's classic line (``time LEVEL logger: message``) with the event fields appended as
    ``key=value``; redacted like :class:`JsonFormatter`."""

    def __init__(self, fmt: str = TEXT_FORMAT, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)

    def format(self, record: logging.LogRecord) -> str:
        line = redact(super().format(record))
        extras = _extras(record)
        # each value redacted on its own: a secret's pattern would run on into the closing bracket
        fields = [f"{k}={_scrub(extras[k])}" for k in EVENT_FIELDS if extras.get(k) is not None]
        if fields:
            # the traceback, if any, follows the first line; the fields belong to the message
            head, sep, tail = line.partition("\n")
            line = f"{head} [{' '.join(fields)}]{sep}{tail}"
        return line


class _BatchbridgeHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler :func:`configure_logging` installed, so a second call replaces it."""


def configure_logging(*, json: bool = False, level: int | str = "INFO", stream: IO[str] | None = None,
                      force: bool = True) -> logging.Handler | None:
    """Send log records to ``stream`` (default: ``sys.stderr``) as JSON lines or text, at ``level``.

    Installs one handler on the root logger, replacing the one a previous call installed. With
    ``force=True`` (the default) every other root handler is removed too (a serverless runtime's
    default handler, say), so each record is written once; with ``force=False`` nothing is changed
    when the root logger already has a handler of someone else's (``logging.basicConfig``'s rule),
    and None is returned.

    >>> import io, logging
    >>> out = io.StringIO()
    >>> handler = configure_logging(json=True, level="INFO", stream=out)
    >>> logging.getLogger("batchbridge.demo").info("published", extra={"event_id": "e1", "backend": "memory://q"})
    >>> import json; record = json.loads(out.getvalue())
    >>> record["message"], record["event_id"], record["backend"]
    ('published', 'e1', 'memory://q')
    >>> logging.getLogger().removeHandler(handler)
    """
    root = logging.getLogger()
    foreign = [h for h in root.handlers if not isinstance(h, _BatchbridgeHandler)]
    if foreign and not force:
        return None
    for h in list(root.handlers):
        if force or isinstance(h, _BatchbridgeHandler):
            root.removeHandler(h)
            if isinstance(h, _BatchbridgeHandler):
                h.close()
    handler = _BatchbridgeHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler


# --- the records the publisher and the subscriber write ----------------------------------------------


def published(backend: str, events: Sequence[Mapping[str, Any]], results: Sequence[PublishResult]) -> None:
    """One record per event of a publish call: DEBUG when the backend confirmed it; WARNING when it
    refused it for good; INFO when it failed retryably (the bridge retries; a WARNING per event and
    attempt while a backend is down would drown everything else)."""
    debug = publish_log.isEnabledFor(logging.DEBUG)
    for event, result in zip(events, results, strict=False):
        err = result.error
        if err is None:
            if debug:
                publish_log.debug("published %s %s to %s", event.get("type"), result.event_id, backend,
                                  extra=_fields(event, backend))
            continue
        retryable = bool(getattr(err, "retryable", False))
        level = logging.INFO if retryable else logging.WARNING
        if publish_log.isEnabledFor(level):
            publish_log.log(level, "could not publish %s %s to %s: %s", event.get("type"), result.event_id,
                            backend, redact(str(err)),
                            extra=_fields(event, backend, error_code=err.code, retryable=retryable))


def received(backend: str, items: Sequence[Received], *, quiet: bool = False) -> None:
    """One record per received message: DEBUG with the event's fields, WARNING when the message is
    not a CloudEvent (the caller dead-letters it) -- DEBUG too when ``quiet``: a consumer of vendor
    payloads (relay) expects most messages not to be CloudEvents."""
    debug = consume_log.isEnabledFor(logging.DEBUG)
    bad_level = logging.DEBUG if quiet else logging.WARNING
    for r in items:
        message_id = r.message.message_id
        if r.event is not None:
            if debug:
                consume_log.debug("received %s %s from %s", r.event.get("type"), r.event.get("id"), backend,
                                  extra=_fields(r.event, backend, message_id=message_id))
        elif r.error is not None and consume_log.isEnabledFor(bad_level):
            consume_log.log(bad_level, "received a message that is not a CloudEvent from %s: %s", backend,
                                redact(str(r.error)),
                                extra={"event_id": None, "event_type": None, "backend": backend,
                                       "message_id": message_id, "error_code": r.error.code})


def _fields(event: Mapping[str, Any], backend: str, **more: Any) -> dict[str, Any]:
    fields = {"event_id": _text(event.get("id")), "event_type": _text(event.get("type")), "backend": backend}
    fields.update(more)
    return fields


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
