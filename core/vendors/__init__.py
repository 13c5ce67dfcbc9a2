"""Vendors: one module per vendor format, registered like backends.

A vendor is anything with the :class:`Vendor` shape -- its provider name, a cheap pre-test
(``match_keys``: a key one of which every native event of this vendor has), ``matches`` and
``normalize`` -- plus the names its events go by, for configs (``event_names``). Vendors are found
through the entry-point group ``batchbridge.vendors``; the five built-in ones are declared there in
``pyproject.toml`` exactly as a third party's would be::

    [project.entry-points."batchbridge.vendors"]
    oracle = "batchbridge_oracle:VENDOR"

Everything a vendor module needs to build canonical events is importable from here (``Draft``,
``Reader``, ``build_event``, the typed errors, ...); see ``docs/extending.md`` for a whole sixth vendor.
The registry feeds detection and ``--provider`` (:mod:`batchbridge.core.normalizing`), the event
names a route may use (:mod:`batchbridge.core.names`), the config's ``provider`` filter, and the
``provider`` values of the canonical schema (:func:`schema`).
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import import_module, metadata
from importlib.resources import files
from typing import Any, Protocol, runtime_checkable

from ..envelopes import decode_base64, load_json
from ..errors import ConfigError, MalformedPayloadError, UnsupportedEventError
from ..event import CloudEvent, Draft, Kind, Reader, State, as_region, as_str, build_event

__all__ = [
    "ENTRY_POINT_GROUP", "CloudEvent", "Draft", "Kind", "MalformedPayloadError", "Reader", "State",
    "UnsupportedEventError", "Vendor", "as_region", "as_str", "build_event", "decode_base64", "load_json",
    "on_reload", "providers", "registered", "reload", "schema", "vendor",
]

log = logging.getLogger("batchbridge.vendors")

ENTRY_POINT_GROUP = "batchbridge.vendors"
#: the built-in vendors, in detection order (third parties follow, by name). Also the fallback when
#: the installed metadata predates the entry points (a source tree installed before they existed).
_BUILT_IN = ("tencent", "alibaba", "aws", "gcp", "azure")


@runtime_checkable
class Vendor(Protocol):
    """What the registry needs of a vendor."""

    @property
    def provider(self) -> str:
        """The ``provider`` of its events (``data.provider``; ``source`` is ``batch://PROVIDER/REGION``)."""
        ...

    @property
    def match_keys(self) -> tuple[str, ...]:
        """The cheap pre-test: ``matches`` runs only on objects holding one of these keys."""
        ...

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """Whether ``obj`` (one JSON object, envelopes removed) is a native event of this vendor."""
        ...

    def normalize(self, obj: dict[str, Any], where: str) -> list[CloudEvent]:
        """Its canonical events; raises only :class:`~batchbridge.core.errors.InputError` subclasses."""
        ...

    def event_names(self) -> Mapping[str, Iterable[str]]:
        """Native event names (as users write them in a route) -> the canonical types each covers."""
        ...


@dataclass(frozen=True, slots=True)
class _Functions:
    """A module's functions as a :class:`Vendor` (fields, not methods: detection calls ``matches`` on
    every JSON object, and a plain function spares a layer of calls)."""

    provider: str
    match_keys: tuple[str, ...]
    matches: Callable[[Mapping[str, Any]], bool]
    normalize: Callable[[dict[str, Any], str], list[CloudEvent]]
    event_names: Callable[[], Mapping[str, Iterable[str]]]


def vendor(provider: str, match_keys: tuple[str, ...], matches: Callable[[Mapping[str, Any]], bool],
           normalize: Callable[[dict[str, Any], str], list[CloudEvent]],
           event_names: Callable[[], Mapping[str, Iterable[str]]] = dict) -> Vendor:
    """A :class:`Vendor` from a module's functions (what the built-in modules export as ``VENDOR``)."""
    return _Functions(provider, tuple(match_keys), matches, normalize, event_names)


def _check(name: str, obj: Any, origin: str) -> Vendor:
    if not isinstance(obj, Vendor):
        raise ConfigError(f"{origin} is not a vendor (needs provider, match_keys, matches, normalize, event_names)",
                          where=f"entry point {ENTRY_POINT_GROUP}:{name}")
    if obj.provider != name:
        raise ConfigError(f"{origin} says its provider is {obj.provider!r}, but it is registered as {name!r}",
                          where=f"entry point {ENTRY_POINT_GROUP}:{name}")
    return obj


@cache
def registered() -> dict[str, Vendor]:
    """Every vendor, by provider name: built-ins first (detection order), then third parties by name."""
    found: dict[str, Vendor] = {}
    points = {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    for name in _BUILT_IN:
        ep = points.pop(name, None)
        obj = ep.load() if ep is not None else import_module(f"{__name__}.{name}").VENDOR
        found[name] = _check(name, obj, ep.value if ep is not None else f"{__name__}.{name}:VENDOR")
    for name in sorted(points):
        ep = points[name]
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin is named, not a traceback
            raise ConfigError(f"cannot load vendor {ep.value}: {type(exc).__name__}: {exc}",
                              where=f"entry point {ENTRY_POINT_GROUP}:{name}") from None
        found[name] = _check(name, obj, ep.value)
    return found


def providers() -> tuple[str, ...]:
    """The provider names of every registered vendor."""
    return tuple(registered())


def reload() -> None:
    """Forget what was registered (after installing a vendor into a running process; tests)."""
    registered.cache_clear()
    schema.cache_clear()
    for hook in _reload_hooks:
        hook()


#: caches derived from the registry elsewhere (event names, detection), cleared by :func:`reload`
_reload_hooks: list[Callable[[], None]] = []


def on_reload(hook: Callable[[], None]) -> None:
    """Have :func:`reload` call ``hook`` (a cache of something derived from the registry)."""
    _reload_hooks.append(hook)


_BUILT_IN_SOURCE = "^batch://(tencent|alibaba|aws|gcp|azure)/"


@cache
def schema(name: str = "batch-event-v1.json") -> dict[str, Any]:
    """A shipped schema (``batch-event-v1.json``, ``cloudevent-v1.json``) as this installation's vendors
    make it: the files list the five built-in providers (a test keeps them equal to the registry's
    built-ins); here ``provider`` and the ``source`` pattern name every registered vendor."""
    doc: dict[str, Any] = json.loads((files("batchbridge.core") / "schema" / name).read_text())
    doc = copy.deepcopy(doc)
    props = doc["properties"]
    if "provider" in props:
        props["provider"]["enum"] = list(providers())
    source = props.get("source", {})
    if str(source.get("pattern", "")).startswith(_BUILT_IN_SOURCE):
        names = "|".join(re.escape(p) for p in providers())
        source["pattern"] = f"^batch://({names})/" + source["pattern"][len(_BUILT_IN_SOURCE):]
    return doc
