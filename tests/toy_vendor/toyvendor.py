"""A sixth vendor, as a third party would ship it (docs/extending.md shows the same module): the
"Toy Batch" service posts ``{"toy_event": "JobDone", "job": "j-1", "at": "...", "region": "..."}``.
Installed by tests/test_vendor_plugin.py through a real entry point, never imported by path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batchbridge.core.vendors import (
    CloudEvent,
    Draft,
    Reader,
    State,
    UnsupportedEventError,
    as_region,
    build_event,
    vendor,
)

PROVIDER = "toy"
#: native event name -> the canonical state it reports
EVENTS: dict[str, State] = {"JobQueued": "pending", "JobStarted": "running", "JobDone": "succeeded",
                            "JobBroke": "failed"}


def matches(obj: Mapping[str, Any]) -> bool:
    return isinstance(obj.get("toy_event"), str) and "job" in obj


def normalize(obj: dict[str, Any], where: str) -> list[CloudEvent]:
    r = Reader(obj, where)
    name = r.require("toy_event")
    state = EVENTS.get(name)
    if state is None:
        raise UnsupportedEventError(f"Toy event {name[:40]!r} is not mapped", where=r.path("toy_event"))
    return [build_event(Draft(
        provider=PROVIDER, kind="job", state=state, native_event=name, raw=obj, where=where,
        region=as_region(obj.get("region"), r.path("region")), time=r.time("at"), job_id=r.require("job"),
        exit_code=r.integer("exit_code"),
    ))]


def event_names() -> dict[str, set[str]]:
    return {name: {f"batch.job.{state}"} for name, state in EVENTS.items()}


VENDOR = vendor(PROVIDER, ("toy_event",), matches, normalize, event_names)
