"""The typed errors batchbridge raises.

Every error names *what* was wrong (``reason``) and *where* (``where``: a line number, a JSON path,
an envelope layer, a backend URI with its secrets redacted). The CLI, the HTTP receiver and the
dead-letter store all read these two fields, so a user never sees a traceback and never loses the
payload that caused it.

Each error also carries a portable :class:`~batchbridge.core.retry.ErrorCode` (``error_code``: not
found, permission denied, unavailable, ...), the only thing :mod:`batchbridge.core.retry` looks at to
decide whether trying again may help.
"""

from __future__ import annotations

from typing import Any

from .retry import ErrorCode, is_transient

__all__ = [
    "BackendError", "BatchBridgeError", "ClosedError", "ConfigError", "DecodeMessageError", "EntityNotFoundError",
    "ErrorCode", "InputError", "MalformedPayloadError", "MessageTooLargeError", "MissingDependencyError",
    "PayloadTooLargeError", "UnknownSchemeError", "UnrecognizedFormatError", "UnsupportedEventError",
]

class BatchBridgeError(Exception):
    """Root of every error batchbridge raises on purpose."""

    #: short machine-readable code, stable across releases (used in dead-letter records and HTTP bodies)
    code = "error"
    #: the portable kind of failure (instances may carry a more precise one than their class)
    error_code: ErrorCode = ErrorCode.UNKNOWN

    @property
    def retryable(self) -> bool:
        """Whether trying again may help -- decided by the one retry policy, from ``error_code``."""
        return is_transient(self.error_code)

    def __init__(self, reason: str, *, where: str | None = None, provider: str | None = None) -> None:
        self.reason = reason
        self.where = where
        self.provider = provider
        super().__init__(self.__str__())

    def __str__(self) -> str:
        parts = []
        if self.where:
            parts.append(f"at {self.where}")
        if self.provider:
            parts.append(f"provider {self.provider}")
        prefix = f"[{', '.join(parts)}] " if parts else ""
        return f"{prefix}{self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.code, "reason": self.reason, "where": self.where, "provider": self.provider}

    def located(self, where: str) -> BatchBridgeError:
        """Prefix the location with an outer one (e.g. ``line 3`` around ``$.Events[1]``)."""
        self.where = f"{where}: {self.where}" if self.where else where
        self.args = (self.__str__(),)
        return self


# --- input: decoding and normalising -------------------------------------------------------------


class InputError(BatchBridgeError):
    """A payload could not be turned into canonical events. The payload goes to the dead-letter store."""

    code = "bad_input"
    error_code = ErrorCode.INVALID_ARGUMENT


class UnrecognizedFormatError(InputError):
    """No decoder recognised the payload (and detection never guesses)."""

    code = "unrecognized_format"


class MalformedPayloadError(InputError):
    """The format was recognised, but the payload is broken: bad JSON/XML/Base64, wrong types,
    missing required fields."""

    code = "malformed_payload"


class UnsupportedEventError(InputError):
    """The payload is well-formed but names an event this version does not map."""

    code = "unsupported_event"


class PayloadTooLargeError(InputError):
    code = "payload_too_large"


# --- configuration -------------------------------------------------------------------------------


class ConfigError(BatchBridgeError):
    """A config file, a URI or an option is wrong."""

    code = "config_error"
    error_code = ErrorCode.INVALID_ARGUMENT


class UnknownSchemeError(ConfigError):
    code = "unknown_scheme"


class MissingDependencyError(ConfigError):
    """The adapter's SDK is not installed; the message names the extra to install."""

    code = "missing_dependency"
    error_code = ErrorCode.FAILED_PRECONDITION


# --- backends ------------------------------------------------------------------------------------


class BackendError(BatchBridgeError):
    """A backend refused or failed an operation. ``error_code`` says what kind of failure it was; the
    older ``retryable=`` flag still works (``True`` means ``unavailable``)."""

    code = "backend_error"

    def __init__(
        self,
        reason: str,
        *,
        where: str | None = None,
        provider: str | None = None,
        retryable: bool | None = None,
        cause: BaseException | None = None,
        error_code: ErrorCode | None = None,
    ) -> None:
        if error_code is not None:
            self.error_code = error_code
        elif retryable is not None and retryable != is_transient(self.error_code):
            self.error_code = ErrorCode.UNAVAILABLE if retryable else ErrorCode.UNKNOWN
        self.cause = cause
        super().__init__(reason, where=where, provider=provider)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["retryable"] = self.retryable
        return d


class MessageTooLargeError(BackendError):
    """One message exceeds the backend's size limit; it is refused before sending."""

    code = "message_too_large"
    error_code = ErrorCode.INVALID_ARGUMENT


class EntityNotFoundError(BackendError):
    """The queue, topic or subscription does not exist."""

    code = "entity_not_found"
    error_code = ErrorCode.NOT_FOUND


class ClosedError(BackendError):
    """The publisher or subscriber was used after ``close()``."""

    code = "closed"
    error_code = ErrorCode.FAILED_PRECONDITION


class DecodeMessageError(BackendError):
    """A received message is not a CloudEvent in either binding mode."""

    code = "undecodable_message"
    error_code = ErrorCode.INVALID_ARGUMENT
