"""Open a publisher or subscriber from a URI: the registry, the driver and the portable layer in one call."""

from __future__ import annotations

from typing import Any

from .errors import BatchBridgeError, ConfigError
from .publisher import AsyncPublisher, Publisher, wrap_error
from .registry import check_uri, parse_uri
from .retry import ErrorCode
from .subscriber import AsyncSubscriber, Subscriber


def _open(uri: str, method: str, what: str) -> tuple[Any, Any]:
    backend, parsed = check_uri(uri, what)
    opener = getattr(backend, method, None)
    if opener is None:
        raise ConfigError(f"{parsed.scheme}:// has no {what}", where=parsed.redacted)
    try:
        return opener(parsed), parsed
    except BatchBridgeError:
        raise
    except Exception as exc:  # its text may hold a secret
        raise wrap_error(exc, _open_code(backend, exc), parsed.redacted) from None


def _open_code(backend: Any, exc: Exception) -> ErrorCode:
    """The code of an exception a backend's opener let out: the backend's own mapping where it has one
    (``error_code(exc)``: a read-only directory is ``permission_denied``), else -- and where that
    mapping knows nothing better -- an SDK refusing its arguments."""
    mapper = getattr(backend, "error_code", None)
    code = ErrorCode(mapper(exc)) if mapper is not None else ErrorCode.UNKNOWN
    return ErrorCode.INVALID_ARGUMENT if code is ErrorCode.UNKNOWN else code


def open_driver(uri: str, role: str = "publisher") -> Any:
    """The adapter's own driver for ``uri``, without the portable layer (``batchbridge check`` probes it
    and closes it)."""
    return _open(uri, f"open_{role}", role)[0]


def open_publisher(uri: str, **options: Any) -> Publisher:
    """``open_publisher("sqs://jobs?region=eu-west-1")`` -> a :class:`Publisher`; keyword options
    override the URI's query options."""
    driver, parsed = _open(uri, "open_publisher", "publisher")
    return Publisher(driver, parsed, options)


def open_subscriber(uri: str, **options: Any) -> Subscriber:
    """``open_subscriber("sqs://jobs?region=eu-west-1")`` -> a :class:`Subscriber`; keyword options
    override the URI's query options."""
    driver, parsed = _open(uri, "open_subscriber", "subscriber")
    return Subscriber(driver, parsed, options)


def open_async_publisher(uri: str, **options: Any) -> AsyncPublisher:
    """Native async driver where the adapter has one (``open_async_publisher``), else threads."""
    backend, parsed = parse_uri(uri)
    method = "open_async_publisher" if hasattr(backend, "open_async_publisher") else "open_publisher"
    driver, parsed = _open(uri, method, "publisher")
    return AsyncPublisher(driver, parsed, options)


def open_async_subscriber(uri: str, **options: Any) -> AsyncSubscriber:
    """The asyncio :class:`AsyncSubscriber`: a native async driver where the adapter has one, else threads."""
    backend, parsed = parse_uri(uri)
    method = "open_async_subscriber" if hasattr(backend, "open_async_subscriber") else "open_subscriber"
    driver, parsed = _open(uri, method, "subscriber")
    return AsyncSubscriber(driver, parsed, options)
