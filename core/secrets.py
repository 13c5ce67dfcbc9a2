"""Keeping secrets out of logs, errors, reprs and metrics.

URIs and connection strings carry keys and tokens. Everything batchbridge shows a human passes
through :func:`redact` first; the adapters register the secret values they hold with
:func:`remember` so that even an SDK's own exception text is scrubbed before it reaches a user.

Once a secret has been remembered, every log record created in the process -- the SDKs' own too,
e.g. botocore's DEBUG wire log with its ``X-Amz-Security-Token`` header -- is scrubbed when it is
created (a LogRecord factory), whatever handler or formatter writes it later.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"

#: query options and connection-string keys whose values are secrets
SECRET_KEYS = frozenset(
    {
        "password",
        "secret",
        "token",
        "key",
        "sharedaccesskey",
        "sharedaccesssignature",
        "signature",
        "sig",
        "aws_secret_access_key",
        "aws_access_key_id",
        "access_key_id",
        "aws_session_token",
        "secret_access_key",
        "session_token",
        "access_key",
        "connection_string",
        "connectionstring",
        "credentials_json",
        "auth_token",
        "api_key",
    }
)

_known: set[str] = set()
_known_lock = threading.Lock()
# a value shorter than this is too likely to collide with ordinary text ("x", "k")
_MIN_REMEMBERED = 4


def is_secret_key(name: str) -> bool:
    n = name.lower().replace("-", "_")
    return n in SECRET_KEYS or n.endswith(("_secret", "_token", "_password", "_key", "accesskey"))


def remember(*values: str | None) -> None:
    """Register secret values so :func:`redact` scrubs them from any text, wherever they appear
    (log records included, from then on)."""
    added = False
    with _known_lock:
        for v in values:
            if v and len(v) >= _MIN_REMEMBERED:
                _known.add(v)
                added = True
    if added:
        _scrub_log_records()


_factory_installed = False


def _scrub_log_records() -> None:
    """Install (once) a LogRecord factory that redacts each record's message and traceback.

    A handler-level filter would only cover handlers batchbridge installs; an application's own
    handlers (or pytest's) would still write an SDK's DEBUG line with a token in it.
    """
    global _factory_installed
    with _known_lock:
        if _factory_installed:
            return
        _factory_installed = True
        previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _scrub(record)
        return record

    logging.setLogRecordFactory(factory)


def _scrub(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: logging reports it itself when the record is written
        return
    clean = redact(message)
    if clean != message:
        # the arguments scrubbed one by one where that suffices: a formatter that reads them itself
        # (uvicorn's access log unpacks its five) must still find them -- else the message, collapsed
        if isinstance(record.args, tuple) and isinstance(record.msg, str):
            args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
            try:
                scrubbed = redact(record.msg) % args if args else redact(record.msg)
            except (TypeError, ValueError):
                scrubbed = None
            if scrubbed == clean:
                record.msg, record.args = redact(record.msg), args
                return _scrub_traceback(record)
        record.msg, record.args = clean, ()
    _scrub_traceback(record)


def _scrub_traceback(record: logging.LogRecord) -> None:
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        clean = redact(text)
        if clean != text:
            # Formatter.format uses exc_text as it is when set: the traceback is written redacted
            record.exc_text = clean


_CONN_KV = re.compile(r"(?i)\b(SharedAccessKey|SharedAccessSignature|AccountKey|Password|sig)=([^;&\s\"']+)")
# Every group that must be followed by a literal is bounded, and a scheme must start where a run of
# scheme characters starts: redact() runs on text an attacker controls (an error quoting a 200 KB JSON
# key), and unbounded groups there backtrack quadratically -- 13 s of CPU for one 50 KB key.
_USERINFO = re.compile(r"(?i)(?<![a-z0-9+.-])([a-z][a-z0-9+.-]{0,31}://)([^/@\s:]{0,256}):([^/@\s]{1,1024})@")
# the name must *end* in a secret word: SharedAccessKeyName is not a secret, SharedAccessKey is
_QUERY_SECRET = re.compile(r"(?i)([?&;])([a-z_\-]{0,64}(?:secret|token|password|key|sig))=([^&;\s\"']+)")


def redact(text: str) -> str:
    """Return ``text`` with every secret it contains replaced by ``***``."""
    if not text:
        return text
    with _known_lock:
        known = sorted(_known, key=len, reverse=True)
    for v in known:
        if v in text:
            text = text.replace(v, MASK)
    text = _CONN_KV.sub(lambda m: f"{m.group(1)}={MASK}", text)
    text = _USERINFO.sub(lambda m: f"{m.group(1)}{m.group(2)}:{MASK}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}={MASK}", text)


def redact_uri(uri: str) -> str:
    """Structural redaction of a URI: the password in userinfo and every secret-named query value."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return redact(uri)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{host}" if ":" in userinfo else f"{userinfo}@{host}"
    query = urlencode(
        [(k, MASK if is_secret_key(k) else _inner_uri(v)) for k, v in parse_qsl(parts.query, keep_blank_values=True)],
        safe="*/:@?=",
    )
    shown = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    if not netloc and uri.startswith(f"{parts.scheme}://") and not shown.startswith(f"{parts.scheme}://"):
        # urlunsplit drops an empty authority: keep servicebus:///queue as the user wrote it
        shown = f"{parts.scheme}://{shown[len(parts.scheme) + 1:]}"
    return redact(shown)


def _inner_uri(value: str) -> str:
    """A URI-valued option (``endpoint_url``) with its userinfo and every query value masked: either
    may carry a credential (a proxy password, a pre-signed ``X-Amz-Signature``)."""
    if "://" not in value:
        return value
    try:
        parts = urlsplit(value)
    except ValueError:
        return redact(value)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(f"{k}={MASK}" for k, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def remember_uri_option(value: str) -> None:
    """Register the credential-bearing parts of a URI-valued option: its userinfo (user and password)
    and every value of its query string."""
    if "://" not in value:
        return
    try:
        parts = urlsplit(value)
    except ValueError:
        return
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        remember(userinfo, *userinfo.split(":", 1))
    remember(*(v for _, v in parse_qsl(parts.query, keep_blank_values=True)))
