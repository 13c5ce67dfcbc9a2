"""The bridge's configuration: routes, vendor notification blocks, outbox and HTTP settings.

A config is a TOML file (or JSON with the same shape). Every key is checked; a mistake raises a
:class:`~batchbridge.core.errors.ConfigError` whose ``where`` is ``FILE:key.path[index]``, so the
message points at the exact key to fix.

Routes come from three places, evaluated together (an event goes to every route it matches):

* ``[[routes]]`` -- ``match`` (event names in any spelling, or globs on canonical types),
  ``provider``, ``kind``, ``vars``, ``to``;
* the vendors' own blocks, pasted as they are: Tencent's ``notifications`` list and Alibaba's
  ``Notification.Topic``, whose topic names are mapped to backend URIs by ``[topics]``;
* ``vendor_configs = ["job.json"]`` -- the vendors' JSON files themselves (a SubmitJob request, a
  job description...): every notification block found in them is read the same way.

See ``docs/bridge.md`` for the reference.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from . import vendors
from .errors import ConfigError
from .event import KINDS
from .registry import check_uri
from .secrets import redact_uri, remember, remember_uri_option
from .store_kinds import POSTGRES_SCHEMES, kind_of, state_refusal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

UNROUTED_KEYWORDS = ("drop", "deadletter")
SYNC_MODES = ("full", "normal")

DEFAULT_OUTBOX = "batchbridge-outbox.db"
DEFAULT_MAX_BODY = 1024 * 1024
#: seven days: long enough to outlast a weekend outage, short enough that a dead destination is noticed
DEFAULT_MAX_PENDING_AGE = 7 * 24 * 3600.0
#: ``/readyz`` turns false once a destination has failed without a success for this long, seconds
DEFAULT_READY_MAX_FAILING = 300.0
#: ``state_retention`` of a route when it names none: a week
DEFAULT_STATE_RETENTION = 7 * 24 * 3600.0
#: where Alibaba MNS serves its signing certificates: its documented "mnstest" OSS bucket ("the
#: certificate URL in each push request is prefixed with https://mnstest.oss-cn-hangzhou.aliyuncs.com/")
DEFAULT_MNS_CERT_URLS = ("https://mnstest.oss-cn-hangzhou.aliyuncs.com/",)
#: extra certificate hosts (exactly, or their subdomains); none by default
DEFAULT_MNS_HOSTS: tuple[str, ...] = ()

_GLOB_CHARS = re.compile(r"[*?\[]")
_TYPE_GLOB = re.compile(r"^(\*|batch\.[a-z_*?\[\]!-]+(\.[a-z_*?\[\]!-]+)?)$")


# --- the resolved config ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteSpec:
    """One route, resolved: canonical types and globs to match, filters, variables, destinations."""

    where: str
    types: frozenset[str] = frozenset()
    globs: tuple[str, ...] = ()
    providers: frozenset[str] | None = None
    kinds: frozenset[str] | None = None
    vars: Mapping[str, Any] = field(default_factory=dict)
    to: tuple[str, ...] = ()
    name: str | None = None
    #: drop events that are stale for their subject instead of sending them to ``to``
    supersede: bool = False
    #: where stale events go instead (only with ``supersede``)
    stale_to: str | None = None
    #: seconds: a subject not seen for longer is unknown to this route (and forgotten by the store
    #: once no route remembers it)
    state_retention: float = DEFAULT_STATE_RETENTION

    def __repr__(self) -> str:
        return _redacted_repr(self, "to")

    @property
    def label(self) -> str:
        """The route in metrics and logs: its name, else where it is defined (no URI, so no secret)."""
        return self.name or self.where.rsplit(":", 1)[-1]

    @property
    def matches_every_type(self) -> bool:
        return not self.types and not self.globs

    def matches(self, event_type: str, provider: str | None, kind: str | None) -> bool:
        if self.providers is not None and provider not in self.providers:
            return False
        if self.kinds is not None and kind not in self.kinds:
            return False
        if self.matches_every_type:
            return True
        return event_type in self.types or any(fnmatch.fnmatchcase(event_type, g) for g in self.globs)


@dataclass(frozen=True)
class OutboxSettings:
    path: Path = Path(DEFAULT_OUTBOX)
    #: ``full`` syncs the WAL on every intake commit (survives power loss); ``normal`` only survives
    #: a crash of the process
    synchronous: str = "full"
    batch_size: int = 500
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    #: a row still undelivered after this many seconds moves to the dead-letter store with its
    #: destination and last error (``dlq replay`` sends it again); 0 = rows wait for ever
    max_pending_age: float = DEFAULT_MAX_PENDING_AGE
    #: bounds of the dead-letter store; when full, bad input is refused (400) without being kept
    dead_letter_max_rows: int = 10_000
    dead_letter_max_bytes: int = 64 * 1024 * 1024
    #: the outbox on PostgreSQL (``postgresql://USER@HOST:PORT/DB``), shared by replicas; None: the
    #: SQLite file at ``path``. Never shown as is (it may hold a password): see :attr:`where`
    url: str | None = field(default=None, repr=False)
    #: seconds a worker holds its ordering keys without renewing (``core/store.py``)
    lease: float = 30.0

    @property
    def where(self) -> str:
        """The store, for messages: the file, or the URL with its password redacted."""
        return redact_uri(self.url) if self.url else str(self.path)


@dataclass(frozen=True)
class MnsSettings:
    verify: bool = True
    #: certificate URLs must start with one of these (``https://host/path-prefix``, host compared exactly)
    allowed_cert_urls: tuple[str, ...] = DEFAULT_MNS_CERT_URLS
    allowed_hosts: tuple[str, ...] = DEFAULT_MNS_HOSTS
    #: offline certificates: a directory (``<sha256 of the URL>.pem``) or a mapping URL -> PEM file
    trust_store: Path | Mapping[str, Path] | None = None
    cert_timeout: float = 3.0
    cache_ttl: float = 3600.0
    #: reject pushes whose ``Date`` is further off than this, seconds; 0 = no check (replays then pass)
    max_skew: float = 900.0
    #: the signature covers Content-MD5, not the body: without it a captured push could carry any body
    require_content_md5: bool = True
    #: with ``serve.token`` set, MNS pushes must present it too (in the subscription endpoint's query)
    require_token: bool = True
    #: certificate fetches in flight at once; a push needing one more is refused at once (MNS retries)
    max_fetches: int = 4
    #: after a failed fetch, a host is not asked again for this long, doubling per failure up to 600 s
    failure_backoff: float = 30.0


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = DEFAULT_MAX_BODY
    token: str | None = field(default=None, repr=False)
    public_healthz: bool = True
    drain_timeout: float = 5.0
    mns: MnsSettings = field(default_factory=MnsSettings)
    #: ``/readyz`` is false while a destination has been failing for longer than this, seconds
    ready_max_failing: float = DEFAULT_READY_MAX_FAILING
    #: events one request may carry; above it 413 (a Tencent CMQ message holds a handful)
    max_events: int = 10_000
    #: open connections at once; past it the oldest still sending its headers is closed, else the new one
    max_connections: int = 512
    #: seconds from connect (or from the last response) to a complete request head
    header_timeout: float = 10.0
    #: seconds to receive a whole body once the head is in; then 408
    body_timeout: float = 30.0
    #: seconds an idle keep-alive connection is kept (uvicorn's timeout_keep_alive)
    keep_alive_timeout: float = 5.0
    #: the largest request head (uvicorn's h11_max_incomplete_event_size)
    max_header_bytes: int = 16 * 1024


@dataclass(frozen=True)
class BridgeConfig:
    routes: tuple[RouteSpec, ...] = ()
    #: ``"drop"``, ``"deadletter"`` or a backend URI
    unrouted: str = "drop"
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)
    source: str = "<defaults>"

    def __repr__(self) -> str:
        return _redacted_repr(self, "unrouted")

    def destinations(self) -> list[str]:
        """Every backend URI the config may send to, in first-mention order."""
        seen: dict[str, None] = {}
        for r in self.routes:
            for uri in r.to:
                seen.setdefault(uri, None)
            if r.stale_to is not None:
                seen.setdefault(r.stale_to, None)
        if self.unrouted not in UNROUTED_KEYWORDS:
            seen.setdefault(self.unrouted, None)
        return list(seen)

    def with_routes(self, *extra: RouteSpec) -> BridgeConfig:
        return BridgeConfig(self.routes + tuple(extra), self.unrouted, self.outbox, self.serve, self.source)

    def with_outbox(self, path: str | Path) -> BridgeConfig:
        """This config with another outbox: a file path, or a ``postgresql://`` URL (``--outbox``)."""
        o = self.outbox
        given = str(path)
        if given.startswith(POSTGRES_SCHEMES):
            remember_uri_option(given)
            settings = dataclasses.replace(o, url=given)
        else:
            settings = dataclasses.replace(o, path=Path(given.removeprefix("sqlite://")), url=None)
        return BridgeConfig(self.routes, self.unrouted, settings, self.serve, self.source)


def _redacted_repr(obj: Any, uri_field: str) -> str:
    """The dataclass repr with the backend URIs in ``uri_field`` redacted (they may carry credentials)."""
    parts = []
    for f in fields(obj):
        if not f.repr:
            continue
        value = getattr(obj, f.name)
        if f.name == uri_field:
            value = tuple(map(redact_uri, value)) if isinstance(value, tuple) else redact_uri(value)
        parts.append(f"{f.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"


def catch_all(to: Sequence[str], where: str = "--to") -> RouteSpec:
    """A route sending every event to ``to`` (the CLI's ``--to``); the URIs are validated."""
    return RouteSpec(where=where, to=tuple(_check_uri(u, f"{where}[{i}]") for i, u in enumerate(to)))


# --- event names --------------------------------------------------------------------------------------


def resolve_names(name: str) -> frozenset[str]:
    """Canonical type(s) a name in any spelling stands for; empty when it names no event."""
    from .names import canonical_type_for_name

    return canonical_type_for_name(name)


def _suggest(name: str) -> str:
    from .names import known_types

    close = difflib.get_close_matches(name.lower(), sorted(known_types()), n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


# --- validation helpers -------------------------------------------------------------------------------


class _Ctx:
    """Where we are in the file, for error messages."""

    def __init__(self, file: str, base_dir: Path, *, secrets: bool = True) -> None:
        self.file = file
        self.base_dir = base_dir
        #: read the shared token (serve); the commands that only open the outbox leave it unread
        self.secrets = secrets

    def error(self, path: str, reason: str) -> ConfigError:
        return ConfigError(reason, where=f"{self.file}:{path}" if path else self.file)

    def table(self, value: Any, path: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.error(path, f"must be a table, got {_kind(value)}")
        return value

    def keys(self, table: Mapping[str, Any], path: str, allowed: Sequence[str]) -> None:
        for key in table:
            if key not in allowed:
                raise self.error(_join(path, key), f"unknown key {key!r} (valid: {', '.join(allowed)})")

    def string(self, value: Any, path: str, *, empty: bool = False) -> str:
        if not isinstance(value, str):
            raise self.error(path, f"must be a string, got {_kind(value)}")
        if not empty and not value.strip():
            raise self.error(path, "must not be empty")
        return value

    def strings(self, value: Any, path: str) -> list[str]:
        """A string or a list of strings."""
        if isinstance(value, str):
            return [self.string(value, path)]
        if not isinstance(value, list):
            raise self.error(path, f"must be a string or a list of strings, got {_kind(value)}")
        return [self.string(v, f"{path}[{i}]") for i, v in enumerate(value)]

    def number(self, value: Any, path: str, *, integer: bool = False, minimum: float = 0.0) -> float:
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            raise self.error(path, f"must be {'an integer' if integer else 'a number'}, got {_kind(value)}")
        if value < minimum:
            raise self.error(path, f"must be at least {minimum:g}, got {value}")
        return float(value)

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(path, f"must be true or false, got {_kind(value)}")
        return value

    def choice(self, value: Any, path: str, choices: Sequence[str]) -> str:
        s = self.string(value, path).lower()
        if s not in choices:
            raise self.error(path, f"must be one of {', '.join(choices)}, got {value!r}")
        return s

    def path(self, value: Any, path: str) -> Path:
        p = Path(os.path.expanduser(self.string(value, path)))
        return p if p.is_absolute() else self.base_dir / p


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    names = {dict: "a table", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
             float: "a number"}
    for t, n in names.items():
        if isinstance(value, t):
            return n
    return type(value).__name__


def _check_uri(uri: str, where: str) -> str:
    """The checks ``publish --to`` makes before it connects (:func:`~batchbridge.core.registry.check_uri`)."""
    try:
        check_uri(uri, "publisher")
    except ConfigError as exc:
        raise exc.located(where) from None
    return uri


# --- routes -----------------------------------------------------------------------------------------


def _patterns(ctx: _Ctx, value: Any, path: str) -> tuple[frozenset[str], tuple[str, ...]]:
    types: set[str] = set()
    globs: list[str] = []
    for i, pattern in enumerate(ctx.strings(value, path)):
        where = f"{path}[{i}]" if isinstance(value, list) else path
        pattern = pattern.strip()
        if _GLOB_CHARS.search(pattern):
            if not _TYPE_GLOB.match(pattern):
                raise ctx.error(where, f"glob {pattern!r} must match canonical types, e.g. 'batch.node.*' or "
                                       "'batch.*.failed' (event names are written without wildcards)")
            if not resolve_names(pattern):  # a glob resolves to the known types it covers
                raise ctx.error(where, f"glob {pattern!r} matches no canonical type")
            globs.append(pattern)
            continue
        found = resolve_names(pattern)
        if not found:
            raise ctx.error(where, f"unknown event name {pattern!r}{_suggest(pattern)} (write a vendor "
                                   "name such as JobFailed, JOB_FAILED, OnJobFailed, or a canonical type "
                                   "such as batch.job.failed)")
        types |= found
    return frozenset(types), tuple(globs)


def _choices(ctx: _Ctx, value: Any, path: str, valid: Sequence[str]) -> frozenset[str]:
    out = set()
    for i, v in enumerate(ctx.strings(value, path)):
        where = f"{path}[{i}]" if isinstance(value, list) else path
        if v.lower() not in valid:
            raise ctx.error(where, f"must be one of {', '.join(valid)}, got {v!r}")
        out.add(v.lower())
    return frozenset(out)


def _vars(ctx: _Ctx, value: Any, path: str) -> dict[str, Any]:
    table = ctx.table(value, path)
    out: dict[str, Any] = {}
    for k, v in table.items():
        if isinstance(v, (str, bool, int, float)):
            out[str(k)] = v
        else:
            raise ctx.error(_join(path, k), f"a variable must be a string, number or boolean, got {_kind(v)}")
    return out


def _destinations(ctx: _Ctx, value: Any, path: str) -> tuple[str, ...]:
    uris = ctx.strings(value, path)
    if not uris:
        raise ctx.error(path, "needs at least one backend URI")
    return tuple(_check_uri(u, f"{ctx.file}:{path}[{i}]" if isinstance(value, list) else f"{ctx.file}:{path}")
                 for i, u in enumerate(uris))


_ROUTE_KEYS = ("name", "match", "provider", "kind", "vars", "to", "supersede", "stale_to", "state_retention")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNIT_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(ctx: _Ctx, value: Any, path: str) -> float:
    """Seconds, given as a number or as text with a unit: ``"90s"``, ``"30m"``, ``"12h"``, ``"7d"``."""
    if isinstance(value, str):
        m = _DURATION.fullmatch(value.strip().lower())
        if m is None:
            raise ctx.error(path, f"must be seconds or a duration such as '12h' or '7d', got {value!r}")
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        seconds = ctx.number(value, path)
    if seconds <= 0:
        raise ctx.error(path, "must be more than zero")
    return seconds


def _supersede(ctx: _Ctx, table: Mapping[str, Any], path: str) -> tuple[bool, str | None, float]:
    supersede = ctx.boolean(table["supersede"], _join(path, "supersede")) if "supersede" in table else False
    stale_to = None
    if "stale_to" in table:
        if not supersede:
            raise ctx.error(_join(path, "stale_to"), "only a route with supersede = true has stale events to send")
        stale_to = _check_uri(ctx.string(table["stale_to"], _join(path, "stale_to")),
                              f"{ctx.file}:{_join(path, 'stale_to')}")
    retention = _duration(ctx, table["state_retention"], _join(path, "state_retention")) \
        if "state_retention" in table else DEFAULT_STATE_RETENTION
    return supersede, stale_to, retention


def _route(ctx: _Ctx, value: Any, path: str) -> RouteSpec:
    table = ctx.table(value, path)
    ctx.keys(table, path, _ROUTE_KEYS)
    if "to" not in table:
        raise ctx.error(_join(path, "to"), "a route needs 'to': one backend URI or a list of them")
    types, globs = _patterns(ctx, table["match"], _join(path, "match")) if "match" in table else (frozenset(), ())
    supersede, stale_to, retention = _supersede(ctx, table, path)
    return RouteSpec(
        where=f"{ctx.file}:{path}",
        types=types,
        globs=globs,
        providers=_choices(ctx, table["provider"], _join(path, "provider"), vendors.providers()) if "provider" in table
        else None,
        kinds=_choices(ctx, table["kind"], _join(path, "kind"), KINDS) if "kind" in table else None,
        vars=_vars(ctx, table["vars"], _join(path, "vars")) if "vars" in table else {},
        to=_destinations(ctx, table["to"], _join(path, "to")),
        name=ctx.string(table["name"], _join(path, "name")) if "name" in table else None,
        supersede=supersede,
        stale_to=stale_to,
        state_retention=retention,
    )


# --- vendor blocks ----------------------------------------------------------------------------------


def _topic(ctx: _Ctx, topics: Mapping[str, tuple[str, ...]], name: str, path: str) -> tuple[str, ...]:
    to = topics.get(name)
    if to is None:
        raise ctx.error(path, f"topic {name!r} has no destination: map it under [topics], e.g. "
                              f'[topics] {_toml_key(name)} = "sqs://queue?region=..."')
    return to


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'


def _pick(table: Mapping[str, Any], *names: str) -> tuple[str, Any] | None:
    for n in names:
        if n in table:
            return n, table[n]
    return None


def _tencent_vars(ctx: _Ctx, value: Any, path: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return _vars(ctx, value, path)
    if not isinstance(value, list):
        raise ctx.error(path, f"must be a list of {{name, value}} tables, got {_kind(value)}")
    out: dict[str, Any] = {}
    for i, item in enumerate(value):
        p = f"{path}[{i}]"
        t = ctx.table(item, p)
        ctx.keys(t, p, ("name", "value", "Name", "Value"))
        name = _pick(t, "name", "Name")
        if name is None:
            raise ctx.error(_join(p, "name"), "an event variable needs a name")
        val = _pick(t, "value", "Value")
        v = "" if val is None else val[1]
        if not isinstance(v, (str, bool, int, float)):
            raise ctx.error(_join(p, val[0] if val else "value"), f"must be a string, got {_kind(v)}")
        out[ctx.string(name[1], _join(p, name[0]))] = v
    return out


_TENCENT_NOTIFICATION = ("topic_name", "event_configs", "TopicName", "EventConfigs")
_TENCENT_EVENT_CONFIG = ("event_name", "event_vars", "EventName", "EventVars")


def _tencent(ctx: _Ctx, value: Any, path: str, topics: Mapping[str, tuple[str, ...]]) -> list[RouteSpec]:
    """Tencent's ``notifications`` (CLI, snake_case) or ``Notifications`` (API, PascalCase)."""
    if not isinstance(value, list):
        raise ctx.error(path, f"must be a list of notifications, got {_kind(value)}")
    routes = []
    for i, item in enumerate(value):
        p = f"{path}[{i}]"
        t = ctx.table(item, p)
        ctx.keys(t, p, _TENCENT_NOTIFICATION)
        topic = _pick(t, "topic_name", "TopicName")
        if topic is None:
            raise ctx.error(_join(p, "topic_name"), "a notification needs topic_name")
        topic_name = ctx.string(topic[1], _join(p, topic[0]))
        to = _topic(ctx, topics, topic_name, _join(p, topic[0]))
        configs = _pick(t, "event_configs", "EventConfigs")
        if configs is None or not isinstance(configs[1], list) or not configs[1]:
            raise ctx.error(_join(p, configs[0] if configs else "event_configs"),
                            "needs a list of {event_name} tables")
        for j, ec in enumerate(configs[1]):
            ep = f"{p}.{configs[0]}[{j}]"
            et = ctx.table(ec, ep)
            ctx.keys(et, ep, _TENCENT_EVENT_CONFIG)
            name = _pick(et, "event_name", "EventName")
            if name is None:
                raise ctx.error(_join(ep, "event_name"), "an event config needs event_name")
            types, globs = _patterns(ctx, name[1], _join(ep, name[0]))
            ev = _pick(et, "event_vars", "EventVars")
            routes.append(RouteSpec(
                where=f"{ctx.file}:{ep}",
                types=types,
                globs=globs,
                providers=frozenset({"tencent"}),
                vars=_tencent_vars(ctx, ev[1], _join(ep, ev[0])) if ev else {},
                to=to,
                name=f"tencent topic {topic_name}",
            ))
    return routes


def _alibaba(ctx: _Ctx, value: Any, path: str, topics: Mapping[str, tuple[str, ...]]) -> list[RouteSpec]:
    """Alibaba's ``Notification`` with its ``Topic{Name, Endpoint, Events}``; a list of either is fine."""
    items = value if isinstance(value, list) else [value]
    routes = []
    for i, item in enumerate(items):
        p = f"{path}[{i}]" if isinstance(value, list) else path
        t = ctx.table(item, p)
        ctx.keys(t, p, ("Topic",))
        if "Topic" not in t:
            raise ctx.error(_join(p, "Topic"), "a Notification needs a Topic")
        raw_topics = t["Topic"]
        for j, topic_item in enumerate(raw_topics if isinstance(raw_topics, list) else [raw_topics]):
            tp = f"{p}.Topic[{j}]" if isinstance(raw_topics, list) else f"{p}.Topic"
            topic = ctx.table(topic_item, tp)
            ctx.keys(topic, tp, ("Name", "Endpoint", "Events"))
            if "Name" not in topic:
                raise ctx.error(_join(tp, "Name"), "a Topic needs a Name")
            if "Events" not in topic:
                raise ctx.error(_join(tp, "Events"), "a Topic needs its list of Events")
            if "Endpoint" in topic:
                ctx.string(topic["Endpoint"], _join(tp, "Endpoint"), empty=True)
            name = ctx.string(topic["Name"], _join(tp, "Name"))
            types, globs = _patterns(ctx, topic["Events"], _join(tp, "Events"))
            routes.append(RouteSpec(
                where=f"{ctx.file}:{tp}",
                types=types,
                globs=globs,
                providers=frozenset({"alibaba"}),
                to=_topic(ctx, topics, name, _join(tp, "Name")),
                name=f"alibaba topic {name}",
            ))
    return routes


def _is_tencent_block(value: Any) -> bool:
    return isinstance(value, list) and any(
        isinstance(v, Mapping) and ("topic_name" in v or "TopicName" in v) for v in value)


def _is_alibaba_block(value: Any) -> bool:
    items = value if isinstance(value, list) else [value]
    return any(isinstance(v, Mapping) and "Topic" in v for v in items)


def _vendor_file(ctx: _Ctx, file: Path, path: str, topics: Mapping[str, tuple[str, ...]]) -> list[RouteSpec]:
    """Every notification block inside one vendor JSON file, wherever it sits (a SubmitJob request,
    a job description, a bare block)."""
    try:
        doc = orjson.loads(file.read_bytes())
    except OSError as exc:
        raise ctx.error(path, f"cannot read {file}: {exc.strerror or exc}") from None
    except orjson.JSONDecodeError as exc:
        raise ctx.error(path, f"{file} is not JSON: {exc}") from None
    inner = _Ctx(str(file), file.parent)
    routes: list[RouteSpec] = []
    stack: list[tuple[Any, str]] = [(doc, "")]
    while stack:
        node, at = stack.pop()
        if isinstance(node, list):
            stack.extend((v, f"{at}[{i}]") for i, v in reversed(list(enumerate(node))))
            continue
        if not isinstance(node, Mapping):
            continue
        for key, v in node.items():
            kp = _join(at, key)
            if key in ("notifications", "Notifications") and _is_tencent_block(v):
                routes += _tencent(inner, v, kp, topics)
            elif key == "Notification" and _is_alibaba_block(v):
                routes += _alibaba(inner, v, kp, topics)
            else:
                stack.append((v, kp))
    if not routes:
        raise ctx.error(path, f"{file} holds no Tencent 'notifications' or Alibaba 'Notification' block")
    return routes


# --- sections -----------------------------------------------------------------------------------------


_TOP_KEYS = ("unrouted", "outbox", "serve", "topics", "routes", "vendor_configs", "notifications",
             "Notifications", "Notification")
_OUTBOX_KEYS = ("path", "url", "synchronous", "batch_size", "backoff_initial", "backoff_max", "max_pending_age",
                "dead_letter_max_rows", "dead_letter_max_bytes", "lease")

_SERVE_KEYS = ("host", "port", "max_body_bytes", "token", "token_env", "token_file", "public_healthz",
               "drain_timeout", "mns", "ready_max_failing", "max_events", "max_connections", "header_timeout",
               "body_timeout", "keep_alive_timeout", "max_header_bytes")
_MNS_KEYS = ("verify", "allowed_cert_urls", "allowed_hosts", "trust_store", "cert_timeout", "cache_ttl",
             "max_skew", "require_content_md5", "require_token", "max_fetches", "failure_backoff")


def _outbox(ctx: _Ctx, value: Any) -> OutboxSettings:
    t = ctx.table(value, "outbox")
    ctx.keys(t, "outbox", _OUTBOX_KEYS)
    d = OutboxSettings()
    backoff_initial = ctx.number(t["backoff_initial"], "outbox.backoff_initial", minimum=0.01) \
        if "backoff_initial" in t else d.backoff_initial
    backoff_max = ctx.number(t["backoff_max"], "outbox.backoff_max", minimum=0.01) \
        if "backoff_max" in t else d.backoff_max
    if backoff_max < backoff_initial:
        raise ctx.error("outbox.backoff_max", "must not be smaller than outbox.backoff_initial")
    path = ctx.path(t["path"], "outbox.path") if "path" in t else d.path
    url: str | None = None
    if "url" in t:
        if "path" in t:
            raise ctx.error("outbox.url", "give outbox.url or outbox.path, not both")
        given = t["url"]
        if not isinstance(given, str) or not given.strip():
            raise ctx.error("outbox.url", "must be a file path or postgresql://USER@HOST:PORT/DB")
        if given.startswith(POSTGRES_SCHEMES):
            remember_uri_option(given)
            url = given
        else:
            path = ctx.path(given.removeprefix("sqlite://"), "outbox.url")
    return OutboxSettings(
        url=url,
        lease=ctx.number(t["lease"], "outbox.lease", minimum=0.1) if "lease" in t else d.lease,
        path=path,
        synchronous=ctx.choice(t["synchronous"], "outbox.synchronous", SYNC_MODES) if "synchronous" in t
        else d.synchronous,
        batch_size=int(ctx.number(t["batch_size"], "outbox.batch_size", integer=True, minimum=1))
        if "batch_size" in t else d.batch_size,
        backoff_initial=backoff_initial,
        backoff_max=backoff_max,
        max_pending_age=ctx.number(t["max_pending_age"], "outbox.max_pending_age") if "max_pending_age" in t
        else d.max_pending_age,
        dead_letter_max_rows=int(ctx.number(t["dead_letter_max_rows"], "outbox.dead_letter_max_rows", integer=True))
        if "dead_letter_max_rows" in t else d.dead_letter_max_rows,
        dead_letter_max_bytes=int(ctx.number(t["dead_letter_max_bytes"], "outbox.dead_letter_max_bytes",
                                             integer=True))
        if "dead_letter_max_bytes" in t else d.dead_letter_max_bytes,
    )


def _token(ctx: _Ctx, t: Mapping[str, Any]) -> str | None:
    given = [k for k in ("token", "token_env", "token_file") if k in t]
    if len(given) > 1:
        raise ctx.error(f"serve.{given[1]}", "give only one of serve.token, serve.token_env, serve.token_file")
    if not given or not ctx.secrets:
        return None
    key = given[0]
    raw = ctx.string(t[key], f"serve.{key}")
    if key == "token":
        token = raw
    elif key == "token_env":
        token = os.environ.get(raw, "")
        if not token:
            raise ctx.error("serve.token_env", f"environment variable {raw} is not set or empty")
    else:
        p = ctx.path(raw, "serve.token_file")
        try:
            token = p.read_text().strip()
        except OSError as exc:
            raise ctx.error("serve.token_file", f"cannot read {p}: {exc.strerror or exc}") from None
    if len(token) < 16:
        raise ctx.error(f"serve.{key}", "the shared token must be at least 16 characters")
    remember(token)
    return token


def _mns(ctx: _Ctx, value: Any) -> MnsSettings:
    t = ctx.table(value, "serve.mns")
    ctx.keys(t, "serve.mns", _MNS_KEYS)
    d = MnsSettings()
    store: Path | dict[str, Path] | None = None
    if "trust_store" in t:
        raw = t["trust_store"]
        if isinstance(raw, Mapping):
            store = {ctx.string(k, f"serve.mns.trust_store.{k}"): ctx.path(v, f'serve.mns.trust_store."{k}"')
                     for k, v in raw.items()}
        else:
            store = ctx.path(raw, "serve.mns.trust_store")
            if not store.is_dir():
                raise ctx.error("serve.mns.trust_store", f"{store} is not a directory")
    hosts = d.allowed_hosts
    if "allowed_hosts" in t:
        hosts = tuple(h.lower().lstrip("*").lstrip(".") for h in ctx.strings(t["allowed_hosts"],
                                                                          "serve.mns.allowed_hosts"))
        for i, h in enumerate(hosts):
            if not re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)+", h):
                raise ctx.error(f"serve.mns.allowed_hosts[{i}]", f"{h!r} is not a host name like mns.example.com")
            if h == "aliyuncs.com" or h.endswith(".aliyuncs.com"):
                raise ctx.error(f"serve.mns.allowed_hosts[{i}]", f"{h!r} would allow anyone's OSS bucket (a "
                                "subdomain of aliyuncs.com); name certificate URL prefixes in allowed_cert_urls")
    prefixes = d.allowed_cert_urls
    if "allowed_cert_urls" in t:
        prefixes = tuple(ctx.strings(t["allowed_cert_urls"], "serve.mns.allowed_cert_urls"))
        for i, prefix in enumerate(prefixes):
            if not re.fullmatch(r"https://[a-z0-9-]+(\.[a-z0-9-]+)+/[A-Za-z0-9._~/-]*", prefix):
                raise ctx.error(f"serve.mns.allowed_cert_urls[{i}]", f"{prefix!r} is not a URL prefix like "
                                f"{DEFAULT_MNS_CERT_URLS[0]} (https, a lowercase host, no port, a path)")
    return MnsSettings(
        verify=ctx.boolean(t["verify"], "serve.mns.verify") if "verify" in t else d.verify,
        allowed_cert_urls=prefixes,
        allowed_hosts=hosts,
        trust_store=store,
        cert_timeout=ctx.number(t["cert_timeout"], "serve.mns.cert_timeout", minimum=0.1)
        if "cert_timeout" in t else d.cert_timeout,
        cache_ttl=ctx.number(t["cache_ttl"], "serve.mns.cache_ttl") if "cache_ttl" in t else d.cache_ttl,
        max_skew=ctx.number(t["max_skew"], "serve.mns.max_skew") if "max_skew" in t else d.max_skew,
        require_content_md5=ctx.boolean(t["require_content_md5"], "serve.mns.require_content_md5")
        if "require_content_md5" in t else d.require_content_md5,
        require_token=ctx.boolean(t["require_token"], "serve.mns.require_token")
        if "require_token" in t else d.require_token,
        max_fetches=int(ctx.number(t["max_fetches"], "serve.mns.max_fetches", integer=True, minimum=1))
        if "max_fetches" in t else d.max_fetches,
        failure_backoff=ctx.number(t["failure_backoff"], "serve.mns.failure_backoff", minimum=0)
        if "failure_backoff" in t else d.failure_backoff,
    )


def _serve(ctx: _Ctx, value: Any) -> ServeSettings:
    t = ctx.table(value, "serve")
    ctx.keys(t, "serve", _SERVE_KEYS)
    d = ServeSettings()
    return ServeSettings(
        host=ctx.string(t["host"], "serve.host") if "host" in t else d.host,
        port=int(ctx.number(t["port"], "serve.port", integer=True)) if "port" in t else d.port,
        max_body_bytes=int(ctx.number(t["max_body_bytes"], "serve.max_body_bytes", integer=True, minimum=1))
        if "max_body_bytes" in t else d.max_body_bytes,
        token=_token(ctx, t),
        public_healthz=ctx.boolean(t["public_healthz"], "serve.public_healthz") if "public_healthz" in t
        else d.public_healthz,
        drain_timeout=ctx.number(t["drain_timeout"], "serve.drain_timeout") if "drain_timeout" in t
        else d.drain_timeout,
        mns=_mns(ctx, t["mns"]) if "mns" in t else d.mns,
        ready_max_failing=ctx.number(t["ready_max_failing"], "serve.ready_max_failing", minimum=1)
        if "ready_max_failing" in t else d.ready_max_failing,
        max_events=_int_key(ctx, t, "max_events", d.max_events, minimum=1),
        max_connections=_int_key(ctx, t, "max_connections", d.max_connections, minimum=8),
        header_timeout=ctx.number(t["header_timeout"], "serve.header_timeout", minimum=0.1)
        if "header_timeout" in t else d.header_timeout,
        body_timeout=ctx.number(t["body_timeout"], "serve.body_timeout", minimum=0.1)
        if "body_timeout" in t else d.body_timeout,
        keep_alive_timeout=ctx.number(t["keep_alive_timeout"], "serve.keep_alive_timeout", minimum=0.1)
        if "keep_alive_timeout" in t else d.keep_alive_timeout,
        max_header_bytes=_int_key(ctx, t, "max_header_bytes", d.max_header_bytes, minimum=1024),
    )


def _int_key(ctx: _Ctx, t: Mapping[str, Any], key: str, default: int, *, minimum: int) -> int:
    return int(ctx.number(t[key], f"serve.{key}", integer=True, minimum=minimum)) if key in t else default


def _topics(ctx: _Ctx, value: Any) -> dict[str, tuple[str, ...]]:
    t = ctx.table(value, "topics")
    return {str(name): _destinations(ctx, uris, f"topics.{_toml_key(str(name))}") for name, uris in t.items()}


def _unrouted(ctx: _Ctx, value: Any) -> str:
    s = ctx.string(value, "unrouted").strip()
    if s.lower() in UNROUTED_KEYWORDS:
        return s.lower()
    if "://" not in s:
        raise ctx.error("unrouted", f'must be "drop", "deadletter" or a backend URI, got {s!r}')
    return _check_uri(s, f"{ctx.file}:unrouted")


def config_from_dict(data: Mapping[str, Any], *, source: str = "<config>",
                     base_dir: Path | None = None, secrets: bool = True) -> BridgeConfig:
    """Validate a parsed config (the TOML/JSON document) and resolve its routes; ``secrets=False``
    leaves the shared token unread (``dlq``, ``status``, ``check`` never need it)."""
    ctx = _Ctx(source, base_dir or Path.cwd(), secrets=secrets)
    doc = ctx.table(data, "")
    ctx.keys(doc, "", _TOP_KEYS)
    topics = _topics(ctx, doc["topics"]) if "topics" in doc else {}
    routes: list[RouteSpec] = []
    if "routes" in doc:
        raw = doc["routes"]
        if not isinstance(raw, list):
            raise ctx.error("routes", "must be an array of tables: write [[routes]]")
        routes += [_route(ctx, r, f"routes[{i}]") for i, r in enumerate(raw)]
    for key in ("notifications", "Notifications"):
        if key in doc:
            routes += _tencent(ctx, doc[key], key, topics)
    if "Notification" in doc:
        routes += _alibaba(ctx, doc["Notification"], "Notification", topics)
    if "vendor_configs" in doc:
        for i, f in enumerate(ctx.strings(doc["vendor_configs"], "vendor_configs")):
            where = f"vendor_configs[{i}]" if isinstance(doc["vendor_configs"], list) else "vendor_configs"
            routes += _vendor_file(ctx, ctx.path(f, where), where, topics)
    config = BridgeConfig(
        routes=tuple(routes),
        unrouted=_unrouted(ctx, doc["unrouted"]) if "unrouted" in doc else "drop",
        outbox=_outbox(ctx, doc["outbox"]) if "outbox" in doc else OutboxSettings(),
        serve=_serve(ctx, doc["serve"]) if "serve" in doc else ServeSettings(),
        source=source,
    )
    refused = state_refusal(kind_of(config.outbox.url), [r.name or f"routes[{i}]" for i, r in enumerate(config.routes)
                                                         if r.supersede], config.outbox.where)
    if refused is not None:
        raise ConfigError(refused, where=f"{source}: outbox.url")
    return config


def load_config(path: str | Path, *, secrets: bool = True) -> BridgeConfig:
    """Read and validate a TOML (or ``.json``) config file; relative paths in it are relative to it."""
    p = Path(path)
    name = str(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror or exc}", where=name) from None
    if p.suffix.lower() == ".json":
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"not valid JSON: {exc}", where=name) from None
    else:
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ConfigError("config is not UTF-8 text", where=name) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}", where=name) from None
    return config_from_dict(data, source=name, base_dir=p.resolve().parent, secrets=secrets)


def describe(config: BridgeConfig) -> list[str]:
    """One line per route, secrets redacted (for ``-v`` logs and the demo)."""
    lines = []
    for r in config.routes:
        what = sorted(r.types) + list(r.globs) or ["*"]
        scope = []
        if r.providers:
            scope.append("provider " + "|".join(sorted(r.providers)))
        if r.kinds:
            scope.append("kind " + "|".join(sorted(r.kinds)))
        extra = f" ({', '.join(scope)})" if scope else ""
        if r.supersede:
            extra += " (supersede" + (f", stale -> {redact_uri(r.stale_to)}" if r.stale_to else "") + ")"
        lines.append(f"{', '.join(what)}{extra} -> {', '.join(redact_uri(u) for u in r.to)}")
    return lines
