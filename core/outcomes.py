"""What one publish or one receive comes back with, per event or message.

Kept apart from the publisher and the subscriber so that the modules recording outcomes (logs,
tracing) depend on these value types only, and nothing imports in a circle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .driver import ReceivedMessage
from .errors import BatchBridgeError, DecodeMessageError


@dataclass(frozen=True, slots=True)
class PublishResult:
    event_id: str | None
    error: BatchBridgeError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class Received:
    message: ReceivedMessage
    event: dict[str, Any] | None
    error: DecodeMessageError | None = None

    @property
    def body(self) -> bytes:
        return self.message.body
