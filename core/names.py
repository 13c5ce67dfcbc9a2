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

from . import vendors

_NOT_ALNUM = re.compile(r"[^a-z0-9]")
_GLOB_CHARS = frozenset("*?[")


def _squash(name: str) -> str:
    """Spelling-blind key: ``JobFailed``, ``JOB_FAILED`` and ``job-failed`` all become ``jobfailed``."""
    return _NOT_ALNUM.sub("", name.lower())


@cache
def _table() -> dict[str, frozenset[str]]:
    table: dict[str, set[str]] = defaultdict(set)

    # each registered vendor says which types its native names cover (core/vendors)
    for v in vendors.registered().values():
        for name, types in v.event_names().items():
            table[_squash(name)].update(types)

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


def _forget() -> None:
    _table.cache_clear()
    known_types.cache_clear()


vendors.on_reload(_forget)
