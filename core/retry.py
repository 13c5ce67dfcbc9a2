"""The one retry policy: what is retried, how many times, and how long to wait in between.

Every failure batchbridge meets is reduced to a portable :class:`ErrorCode` (as Go CDK's
``gcerrors.ErrorCode``): a driver maps its SDK's exceptions to a code, typed errors carry one. This
module alone turns a code into a decision:

* :func:`is_transient` -- worth trying again soon (``unavailable``, ``resource_exhausted``,
  ``deadline_exceeded``, ``internal``);
* :func:`waits_for_destination` -- for a durable queue (the outbox): keep the row and wait, because
  the failure is about the destination, not the event (a transient code, a missing entity, a closed
  client); anything else is about the event and goes to the dead letters;
* :class:`Backoff` -- exponential delays with jitter, the one schedule used everywhere;
* :class:`RetryPolicy` -- a bounded number of attempts on that schedule (publisher, subscriber).

Drivers never retry on their own (botocore runs with one attempt, the Pub/Sub and Service Bus SDKs
with their retries off), so the attempts counted here are the attempts made.

This module imports nothing from batchbridge: :mod:`batchbridge.core.errors` builds on it.
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


class ErrorCode(str, enum.Enum):
    """What kind of failure it was, independent of the backend (after Go CDK's gcerrors)."""

    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    PERMISSION_DENIED = "permission_denied"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    UNAVAILABLE = "unavailable"
    INVALID_ARGUMENT = "invalid_argument"
    FAILED_PRECONDITION = "failed_precondition"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    INTERNAL = "internal"
    CANCELED = "canceled"
    UNKNOWN = "unknown"


#: tried again, within the attempts a policy allows
TRANSIENT = frozenset({
    ErrorCode.UNAVAILABLE, ErrorCode.RESOURCE_EXHAUSTED, ErrorCode.DEADLINE_EXCEEDED, ErrorCode.INTERNAL,
})
#: kept in a durable queue (the outbox) until the destination is mended: a missing queue or a closed
#: client is about the destination, not the event, so those rows must not fill the dead letters
_WAIT_FOR_DESTINATION = TRANSIENT | {ErrorCode.NOT_FOUND, ErrorCode.FAILED_PRECONDITION}


def is_transient(code: ErrorCode) -> bool:
    return code in TRANSIENT


def waits_for_destination(code: ErrorCode) -> bool:
    return code in _WAIT_FOR_DESTINATION


def code_of(exc: BaseException, driver: Any = None) -> ErrorCode:
    """The code of any exception: a typed error's own; else the driver's mapping (``error_code``, or
    for a third-party driver that predates codes, its ``is_retryable`` verdict); else ``unknown``."""
    code = getattr(exc, "error_code", None)
    if isinstance(code, ErrorCode):
        return code
    mapper = getattr(driver, "error_code", None)
    if mapper is not None:
        return ErrorCode(mapper(exc))
    verdict = getattr(driver, "is_retryable", None)
    if verdict is not None:
        return ErrorCode.UNAVAILABLE if verdict(exc) else ErrorCode.UNKNOWN
    if isinstance(exc, TimeoutError):
        return ErrorCode.DEADLINE_EXCEEDED
    if isinstance(exc, (ConnectionError, OSError)):
        return ErrorCode.UNAVAILABLE
    return ErrorCode.UNKNOWN


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays that double per consecutive failure from ``initial`` up to ``maximum``, with "equal
    jitter" (each delay drawn from its upper half), so that many clients do not retry in step."""

    initial: float = 0.05
    maximum: float = 5.0

    def delay(self, failures: int) -> float:
        """The wait after the ``failures``-th consecutive failure (1 for the first)."""
        base = min(self.maximum, self.initial * 2 ** min(max(failures, 1) - 1, 30))
        return float(base * random.uniform(0.5, 1.0))


#: the documented defaults of the ``retries`` and ``retry_max_wait`` URI options
DEFAULT_ATTEMPTS = 5
DEFAULT_MAX_WAIT = 5.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """At most ``attempts`` tries (the first included) of an operation whose failures are transient."""

    attempts: int = DEFAULT_ATTEMPTS
    backoff: Backoff = Backoff()

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RetryPolicy:
        """From a backend URI's ``retries`` and ``retry_max_wait`` options."""
        return cls(max(1, int(options.get("retries", DEFAULT_ATTEMPTS))),
                   Backoff(maximum=float(options.get("retry_max_wait", DEFAULT_MAX_WAIT))))

    def again(self, attempt: int, code: ErrorCode) -> bool:
        """Whether to try once more after attempt number ``attempt`` (1-based) failed with ``code``."""
        return attempt < self.attempts and is_transient(code)

    def call(self, fn: Callable[..., T], *args: Any, driver: Any = None) -> T:
        attempt = 1
        while True:
            try:
                return fn(*args)
            except Exception as exc:
                if not self.again(attempt, code_of(exc, driver)):
                    raise
            time.sleep(self.backoff.delay(attempt))
            attempt += 1

    async def acall(self, fn: Callable[..., Awaitable[T]], *args: Any, driver: Any = None) -> T:
        import asyncio  # here: every command imports this module, and asyncio costs a CLI's start-up

        attempt = 1
        while True:
            try:
                return await fn(*args)
            except Exception as exc:
                if not self.again(attempt, code_of(exc, driver)):
                    raise
            await asyncio.sleep(self.backoff.delay(attempt))
            attempt += 1
