"""The router: which destinations each canonical event goes to, and with which custom variables.

Every route an event matches applies (fan-out). Destinations are de-duplicated by URI: an event
matched by two routes that send to one queue is published there once, with the variables of both
routes merged in config order (later routes win on a clash). Routing never changes the event's
``id`` -- the id is computed from the transition, without ``vars`` -- so copies of one event on
different backends stay recognisable as one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import UNROUTED_KEYWORDS, BridgeConfig, RouteSpec


@dataclass(frozen=True, slots=True)
class Delivery:
    destination: str
    event: dict[str, Any]
    #: the first matching route to this destination with ``supersede = true``, if any
    supersede: RouteSpec | None = None


@dataclass(slots=True)
class Decision:
    deliveries: list[Delivery] = field(default_factory=list)
    #: no route matched
    unrouted: bool = False
    #: unrouted, and the policy says dead-letter it
    dead_letter: bool = False


def with_vars(event: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``event`` whose ``data.vars`` also holds ``extra``; the input is left untouched."""
    out = dict(event)
    if not extra:
        return out
    data = dict(out.get("data") or {})
    merged = dict(data.get("vars") or {})
    merged.update(extra)
    data["vars"] = merged
    out["data"] = data
    return out


class Router:
    """Stateless, so safe to share between threads. The bridge counts what it drops."""

    def __init__(self, routes: Sequence[RouteSpec], unrouted: str = "drop") -> None:
        self.routes = tuple(routes)
        self.unrouted = unrouted

    @classmethod
    def from_config(cls, config: BridgeConfig) -> Router:
        return cls(config.routes, config.unrouted)

    def matching(self, event: Mapping[str, Any]) -> list[RouteSpec]:
        data = event.get("data")
        data = data if isinstance(data, Mapping) else {}
        event_type = str(event.get("type") or "")
        provider = data.get("provider")
        kind = data.get("kind")
        return [r for r in self.routes if r.matches(event_type, provider, kind)]

    def route(self, event: Mapping[str, Any]) -> Decision:
        matched = self.matching(event)
        if not matched:
            return self._unrouted(event)
        per_destination: dict[str, dict[str, Any]] = {}
        superseding: dict[str, RouteSpec] = {}
        for r in matched:
            for uri in r.to:
                per_destination.setdefault(uri, {}).update(r.vars)
                if r.supersede:
                    superseding.setdefault(uri, r)
        return Decision([Delivery(uri, with_vars(event, v), superseding.get(uri))
                         for uri, v in per_destination.items()])

    def _unrouted(self, event: Mapping[str, Any]) -> Decision:
        if self.unrouted == "drop":
            return Decision(unrouted=True)
        if self.unrouted == "deadletter":
            return Decision(unrouted=True, dead_letter=True)
        assert self.unrouted not in UNROUTED_KEYWORDS
        return Decision([Delivery(self.unrouted, dict(event))], unrouted=True)
