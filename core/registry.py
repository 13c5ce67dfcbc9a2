"""URI registry: scheme -> backend adapter (as in fsspec).

Built-in schemes are listed in ``_BUILTIN`` as import paths, so an adapter's SDK is imported only
when a URI with its scheme is opened. Third-party packages add schemes through the entry-point group
``batchbridge.backends`` (name = scheme, value = ``"package.module:BACKEND"``), or at run time with
:func:`register`.

Every backend declares its query options (:class:`Option`); unknown options are an error naming the
option and the valid ones, and :func:`options_table` renders the one table of schemes and options
that the README shows.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from .errors import ConfigError, MissingDependencyError, UnknownSchemeError
from .secrets import is_secret_key, redact_uri, remember, remember_uri_option

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Option:
    name: str
    type: type = str
    default: Any = None
    help: str = ""
    choices: tuple[str, ...] | None = None
    secret: bool = False

    def parse(self, raw: str, uri: str) -> Any:
        try:
            if self.type is bool:
                low = raw.lower()
                if low in _TRUE:
                    return True
                if low in _FALSE:
                    return False
                raise ValueError(raw)
            value = self.type(raw)
        except ValueError:
            raise ConfigError(
                f"option {self.name!r} must be {self.type.__name__}, got {raw!r}", where=redact_uri(uri)
            ) from None
        if self.choices and value not in self.choices:
            raise ConfigError(
                f"option {self.name!r} must be one of {', '.join(self.choices)}, got {raw!r}",
                where=redact_uri(uri),
            )
        return value


#: options the portable layer reads for every backend
COMMON_OPTIONS: tuple[Option, ...] = (
    Option("mode", str, "structured", "CloudEvents binding: whole event in the body, or attributes in metadata",
           choices=("structured", "binary")),
    Option("concurrency", int, 4, "batches in flight at once (ordering is kept per ordering key)"),
    Option("batch_size", int, 0, "cap on messages per batch; 0 = the backend's limit"),
    Option("retries", int, 5, "attempts per call on transient errors (core/retry.py: exponential backoff, "
           "jitter)"),
    Option("retry_max_wait", float, 5.0, "longest wait between attempts, seconds"),
    Option("max_deliveries", int, 5, "subscriber: deliveries of a message that cannot be processed (backed off "
           "1, 2, 4, ... s) before it is dead-lettered"),
)


@dataclass(frozen=True)
class BackendURI:
    """A parsed backend URI. ``str()``/``repr()`` never show secrets."""

    scheme: str
    netloc: str
    path: str
    options: Mapping[str, Any]
    raw: str = field(repr=False)

    @property
    def host(self) -> str:
        return self.netloc.rsplit("@", 1)[-1]

    @property
    def name(self) -> str:
        """``netloc`` + ``path`` without the leading slash: the entity the URI names."""
        return unquote(f"{self.host}{self.path}").strip("/")

    @property
    def redacted(self) -> str:
        return redact_uri(self.raw)

    def __str__(self) -> str:
        return self.redacted

    def __repr__(self) -> str:
        return f"BackendURI({self.redacted!r})"


class Backend(Protocol):
    """What an adapter module exposes as ``BACKEND``."""

    schemes: tuple[str, ...]
    #: the pip extra that installs its SDK ("aws", "gcp", "azure"; "" for none)
    extra: str
    #: how the URI is written, one line per form, for the README table
    forms: tuple[str, ...]
    options: tuple[Option, ...]

    def open_publisher(self, uri: BackendURI) -> Any: ...

    def open_subscriber(self, uri: BackendURI) -> Any: ...

    # optional: ``check_publisher(uri)`` / ``check_subscriber(uri)`` raise ConfigError for what opening
    # would refuse before any connection (the same checks the opener makes); see :func:`check_uri`


_BUILTIN: dict[str, str] = {
    "memory": "batchbridge.adapters.memory:BACKEND",
    "file": "batchbridge.adapters.file:BACKEND",
    "sqs": "batchbridge.adapters.aws:SQS_BACKEND",
    "sns": "batchbridge.adapters.aws:SNS_BACKEND",
    "pubsub": "batchbridge.adapters.gcp:BACKEND",
    "servicebus": "batchbridge.adapters.azure:BACKEND",
}

_registered: dict[str, Backend | str] = {}
_loaded: dict[str, Backend] = {}
_lock = threading.Lock()
_entry_points_read = False


def register(scheme: str, backend: Backend | str, *, replace: bool = False) -> None:
    """Add a scheme at run time; ``backend`` is a Backend or ``"module:attr"``."""
    scheme = scheme.lower()
    with _lock:
        if not replace and (scheme in _registered or scheme in _BUILTIN):
            raise ConfigError(f"scheme {scheme!r} is already registered; pass replace=True to override it")
        _registered[scheme] = backend
        _loaded.pop(scheme, None)


def _read_entry_points() -> None:
    global _entry_points_read
    if _entry_points_read:
        return
    _entry_points_read = True
    for ep in entry_points(group="batchbridge.backends"):
        _registered.setdefault(ep.name.lower(), ep.value)


def schemes() -> list[str]:
    with _lock:
        _read_entry_points()
        return sorted(set(_BUILTIN) | set(_registered))


def _load(target: str, scheme: str) -> Backend:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MissingDependencyError(f"backend {scheme!r} could not be imported: {exc}") from None
    backend: Backend = getattr(module, attr)
    return backend


def get_backend(scheme: str) -> Backend:
    scheme = scheme.lower()
    with _lock:
        _read_entry_points()
        if scheme in _loaded:
            return _loaded[scheme]
        target = _registered.get(scheme) or _BUILTIN.get(scheme)
        if target is None:
            known = ", ".join(sorted(set(_BUILTIN) | set(_registered)))
            raise UnknownSchemeError(f"no backend for scheme {scheme!r} (known: {known})")
        backend = _load(target, scheme) if isinstance(target, str) else target
        _loaded[scheme] = backend
        return backend


def parse_uri(uri: str, backend: Backend | None = None) -> tuple[Backend, BackendURI]:
    """Resolve ``uri`` to its backend and a :class:`BackendURI` with typed, validated options."""
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise ConfigError(f"not a valid URI: {exc}", where=redact_uri(uri)) from None
    if not parts.scheme:
        raise ConfigError("a backend URI needs a scheme, e.g. file:///tmp/events.jsonl or sqs://queue",
                          where=redact_uri(uri))
    backend = backend or get_backend(parts.scheme)
    declared = {o.name: o for o in (*COMMON_OPTIONS, *backend.options)}
    options: dict[str, Any] = {o.name: o.default for o in declared.values()}
    for key, raw in parse_qsl(parts.query, keep_blank_values=True):
        opt = declared.get(key)
        if opt is None:
            valid = ", ".join(sorted(declared))
            raise ConfigError(f"unknown option {key!r} for {parts.scheme}:// (valid: {valid})",
                              where=redact_uri(uri))
        if opt.secret or is_secret_key(key):
            remember(raw)
        remember_uri_option(raw)
        options[key] = opt.parse(raw, uri)
    if parts.password:
        remember(parts.password)
    return backend, BackendURI(parts.scheme.lower(), parts.netloc, parts.path, options, uri)


ROLES = ("publisher", "subscriber")


def check_uri(uri: str, role: str = "publisher") -> tuple[Backend, BackendURI]:
    """Everything opening ``uri`` as a ``publisher`` or ``subscriber`` refuses without connecting: the
    scheme, the options, and the adapter's own checks of the path and options (the same functions its
    opener calls). ``publish --to``, ``open_publisher`` and a config at load time all go through here."""
    backend, parsed = parse_uri(uri)
    if getattr(backend, f"open_{role}", None) is None:
        raise ConfigError(f"{parsed.scheme}:// has no {role}", where=parsed.redacted)
    check = getattr(backend, f"check_{role}", None)
    if check is not None:
        check(parsed)
    return backend, parsed


def _refuses(scheme: str) -> tuple[str, ...]:
    """The common options a backend does not take (``refuses`` on the backend, e.g. file:// and ``mode``)."""
    try:
        return tuple(getattr(get_backend(scheme), "refuses", ()))
    except MissingDependencyError:
        return ()


def options_table() -> str:
    """The Markdown table of every scheme, its URI forms and its query options."""
    rows = ["| scheme | URI forms | option | type | default | meaning |", "| --- | --- | --- | --- | --- | --- |"]
    for o in COMMON_OPTIONS:
        refused = [f"{s}://" for s in schemes() if o.name in _refuses(s)]
        scope = f"*(all but {', '.join(refused)})*" if refused else "*(all)*"
        rows.append(f"| {scope} | | `{o.name}` | {o.type.__name__} | `{o.default}` | {o.help} |")
    for scheme in schemes():
        try:
            backend = get_backend(scheme)
        except MissingDependencyError:
            rows.append(f"| `{scheme}` | *(install its extra to list options)* | | | | |")
            continue
        if scheme != backend.schemes[0]:
            continue
        forms = "<br>".join(f"`{f}`" for f in backend.forms)
        extra = f" (extra `[{backend.extra}]`)" if backend.extra else ""
        label = ", ".join(f"`{s}`" for s in backend.schemes) + extra
        if not backend.options:
            rows.append(f"| {label} | {forms} | | | | |")
        for i, o in enumerate(backend.options):
            first = (label, forms) if i == 0 else ("", "")
            default = "" if o.default is None else f"`{o.default}`"
            rows.append(f"| {first[0]} | {first[1]} | `{o.name}` | {o.type.__name__} | {default} | {o.help} |")
    return "\n".join(rows)
