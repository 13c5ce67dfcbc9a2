"""Dropping stale events on the consumer side, by ``sequence`` alone (no bridge, no vendor knowledge).

An event is stale when an event of the same ``subject`` with a higher ``sequence`` has already been
seen (contract v1.1). :func:`drop_stale` filters any iterable -- of events, or of a subscriber's
:class:`~batchbridge.core.subscriber.Received` messages -- with a :class:`SequenceTracker`, which
remembers the highest sequence per subject in memory, for at most ``max_subjects`` subjects (the
least recently seen are forgotten first).

>>> from batchbridge.core import drop_stale
>>> events = [{"subject": "jobs/j1", "sequence": "01704067200000000.90", "id": "a"},
...           {"subject": "jobs/j1", "sequence": "01704067200000000.30", "id": "b"}]
>>> [e["id"] for e in drop_stale(events)]
['a']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from .errors import ConfigError
from .sequence import sequence_of

T = TypeVar("T")

#: subjects a tracker remembers by default (about 150 bytes each)
DEFAULT_MAX_SUBJECTS = 100_000


def is_stale(sequence: str, latest: str | None) -> bool:
    """Whether an event with ``sequence`` is stale when ``latest`` is the highest seen for its subject.
    An equal sequence is a repeat of the latest transition, not a stale one."""
    return latest is not None and sequence < latest


def _event_of(item: Any) -> Mapping[str, Any] | None:
    if isinstance(item, Mapping):
        return item
    event = getattr(item, "event", None)  # a subscriber's Received
    return event if isinstance(event, Mapping) else None


class SequenceTracker:
    """The highest ``sequence`` seen per ``subject``, in memory. Not thread-safe: one per consumer loop."""

    __slots__ = ("_latest", "max_subjects")

    def __init__(self, max_subjects: int = DEFAULT_MAX_SUBJECTS) -> None:
        if max_subjects < 1:
            raise ConfigError(f"max_subjects must be at least 1, got {max_subjects}", where="SequenceTracker")
        self.max_subjects = max_subjects
        self._latest: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._latest)

    def latest(self, subject: str) -> str | None:
        return self._latest.get(subject)

    def is_stale(self, event: Mapping[str, Any]) -> bool:
        """Whether ``event`` is stale, without recording it."""
        subject, seq = event.get("subject"), sequence_of(event)
        return isinstance(subject, str) and seq is not None and is_stale(seq, self._latest.get(subject))

    def admit(self, event: Mapping[str, Any]) -> bool:
        """Record ``event``; False when it is stale. Events without a subject or a well-formed
        ``sequence`` cannot be judged and are always admitted."""
        subject, seq = event.get("subject"), sequence_of(event)
        if not isinstance(subject, str) or seq is None:
            return True
        latest = self._latest.pop(subject, None)  # re-inserted below: the dict's order is recency
        if is_stale(seq, latest):
            assert latest is not None
            self._latest[subject] = latest
            return False
        self._latest[subject] = seq
        if len(self._latest) > self.max_subjects:
            del self._latest[next(iter(self._latest))]
        return True


def drop_stale(items: Iterable[T], *, tracker: SequenceTracker | None = None,
               on_stale: Callable[[T], None] | None = None) -> Iterator[T]:
    """The items of ``items`` that are not stale, in their order.

    ``items`` holds events (mappings) or anything with an ``event`` attribute, such as the
    :class:`~batchbridge.core.subscriber.Received` messages a subscriber yields (iterate the
    subscriber itself); an item whose event is missing (undecodable) or carries no ``sequence``
    passes through. ``on_stale`` is called with each dropped item -- e.g. to acknowledge a stale
    message so that the broker does not deliver it again. Pass a ``tracker`` to keep the memory of
    what was seen across calls.
    """
    seen = tracker if tracker is not None else SequenceTracker()
    for item in items:
        event = _event_of(item)
        if event is None or seen.admit(event):
            yield item
        elif on_stale is not None:
            on_stale(item)
