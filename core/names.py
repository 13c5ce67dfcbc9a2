"""Event names as users write them (in configs, routes, filters), canonicalised to CloudEvent types.

A route may name an event as Tencent's config does (``JobSucceed``), as its messages do
(``JOB_SUCCEED``), as Alibaba does (``OnJobFinished``), as Azure does (``TaskCompleteEvent``) or by
the canonical type (``batch.job.succeeded``, or a glob such as ``batch.job.*``). Each resolves to the
*set* of canonical types it covers — a set, because one native name may cover several outcomes
(``TaskCompleteEvent`` is ``batch.task.succeeded`` or ``batch.task.failed``). Matching is then a
plain membership test on the event's ``type``, whichever vendor emitted it.
"""

from __future__ import annotations

import fnmatch
import re
from collections import defaultdict
from functools import cache

from .vendors import alibaba, aws, azure, gcp, tencent

_NOT_ALNUM = re.compile(r"[^a-z0-9]")
_GLOB_CHARS = frozenset("*?[")


def _squash(name: str) -> str:
    """Spelling-blind key: ``JobFailed``, ``JOB_FAILED`` and ``job-failed`` all become ``jobfailed``."""
    return _NOT_ALNUM.sub("", name.lower())


def _type(kind: str, transition: str) -> str:
    return f"batch.{kind}.{transition}"


@cache
def _table() -> dict[str, frozenset[str]]:
    table: dict[str, set[str]] = defaultdict(set)

    def add(name: str, *types: str) -> None:
        table[_squash(name)].update(types)

    for name, (kind, state) in tencent.EVENTS.items():
        add(name, _type(kind, state))
    for events in (alibaba.JOB_EVENTS, alibaba.CLUSTER_EVENTS):
        for name, (kind, maybe_state) in events.items():
            add(name, _type(kind, maybe_state or "priority_changed"))
    aws_states = set(aws.STATUSES.values())
    add(aws.DETAIL_TYPE, *(_type(kind, s) for kind in ("job", "task_instance") for s in aws_states))
    add(aws.QUEUE_BLOCKED, _type("job", "blocked"))
    gcp_states = set(gcp.STATES.values())
    for name, (kind, _attr) in gcp.TYPES.items():
        add(name, *(_type(kind, s) for s in gcp_states))
    for name, (maybe_state, transition) in azure.TASK_EVENTS.items():
        outcomes = ("succeeded", "failed") if maybe_state is None else (transition or maybe_state,)
        add(name, *(_type("task", outcome) for outcome in outcomes))
    for name, (state, transition) in azure.POOL_EVENTS.items():
        add(name, _type("environment", transition or state))

    # the canonical types themselves, also in the CamelCase/UPPER_SNAKE style of the vendors
    for types in list(table.values()):
        for type_ in types:
            _batch, kind_name, transition_name = type_.split(".")
            table[type_].add(type_)
            table[_squash(kind_name + transition_name)].add(type_)
    return {key: frozenset(value) for key, value in table.items()}


@cache
def known_types() -> frozenset[str]:
    """Every canonical type some vendor mapping can produce."""
    return frozenset(t for types in _table().values() for t in types)


def canonical_type_for_name(name: str) -> frozenset[str]:
    """The canonical CloudEvent types ``name`` refers to; empty when the name is unknown.

    ``JobSucceed``, ``JOB_SUCCEED``, ``batch.job.succeeded`` -> ``{"batch.job.succeeded"}``;
    ``TaskCompleteEvent`` -> ``{"batch.task.succeeded", "batch.task.failed"}``; ``batch.job.*`` -> all
    job types. A caller validating a config should treat an empty result as an error.
    """
    text = name.strip()
    if not text:
        return frozenset()
    lowered = text.lower()
    if _GLOB_CHARS & set(lowered):
        return frozenset(t for t in known_types() if fnmatch.fnmatchcase(t, lowered))
    table = _table()
    exact = table.get(lowered)
    if exact is not None and lowered.startswith("batch."):
        return exact
    return table.get(_squash(text), frozenset())


def name_matches(name: str, event_type: str) -> bool:
    """Whether an event of ``event_type`` is one that ``name`` (any accepted spelling) selects."""
    return event_type in canonical_type_for_name(name)
