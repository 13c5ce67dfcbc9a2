"""batchbridge.core: decode, normalise and publish batch lifecycle events. Imports no cloud SDK.

The stable API is exactly the names in ``batchbridge.core.__all__`` (plus the handlers in
``batchbridge.contrib.*``); every submodule of ``batchbridge.core`` is private and may change
between releases. The names are imported lazily, on first use, so ``import batchbridge.core`` stays
cheap (no JSON library, no retry library, no vendor decoders until they are needed).

>>> import batchbridge.core as bb
>>> [e["type"] for e in bb.normalize({"version": "0", "id": "1", "detail-type": "Batch Job State Change",
...     "source": "aws.batch", "region": "eu-west-1", "time": "2024-01-01T00:00:00Z",
...     "detail": {"jobId": "j-1", "jobName": "demo", "status": "SUCCEEDED"}})]
['batch.job.succeeded']
>>> with bb.open_publisher("memory://doctest") as pub, bb.open_subscriber("memory://doctest") as sub:
...     pub.publish_one({"specversion": "1.0", "id": "e1", "source": "s", "type": "t"}).ok
...     [r.event["id"] for r in sub.receive(timeout=1)]
True
['e1']

See ``docs/embedding.md`` for each platform.
"""

# no ``from __future__ import annotations`` and only underscored imports: every global of this
# module is an attribute of the package, and its public surface is to be exactly ``__all__``
import importlib as _importlib
import sys as _sys
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

__all__ = [
    "AsyncPublisher",
    "AsyncSubscriber",
    "BackendError",
    "BatchBridgeError",
    "Bridge",
    "BridgeConfig",
    "ClosedError",
    "ConfigError",
    "DecodeMessageError",
    "EntityNotFoundError",
    "InputError",
    "IntakeResult",
    "MalformedPayloadError",
    "MessageTooLargeError",
    "MissingDependencyError",
    "OutboxError",
    "PayloadTooLargeError",
    "PublishResult",
    "Publisher",
    "Received",
    "SequenceTracker",
    "Subscriber",
    "UnknownSchemeError",
    "UnrecognizedFormatError",
    "UnsupportedEventError",
    "config_from_dict",
    "configure_logging",
    "create_app",
    "disable_tracing",
    "drop_stale",
    "enable_tracing",
    "load_config",
    "normalize",
    "open_async_publisher",
    "open_async_subscriber",
    "open_publisher",
    "open_subscriber",
]

_ERRORS = ("BackendError", "BatchBridgeError", "ClosedError", "ConfigError", "DecodeMessageError",
           "EntityNotFoundError", "InputError", "MalformedPayloadError", "MessageTooLargeError",
           "MissingDependencyError", "PayloadTooLargeError", "UnknownSchemeError", "UnrecognizedFormatError",
           "UnsupportedEventError")

#: public name -> (private module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    **{name: ("errors", name) for name in _ERRORS},
    "OutboxError": ("outbox", "OutboxError"),
    "normalize": ("normalizing", "normalize"),
    "open_publisher": ("backends", "open_publisher"),
    "open_subscriber": ("backends", "open_subscriber"),
    "open_async_publisher": ("backends", "open_async_publisher"),
    "open_async_subscriber": ("backends", "open_async_subscriber"),
    "Publisher": ("publisher", "Publisher"),
    "AsyncPublisher": ("publisher", "AsyncPublisher"),
    "PublishResult": ("outcomes", "PublishResult"),
    "Subscriber": ("subscriber", "Subscriber"),
    "AsyncSubscriber": ("subscriber", "AsyncSubscriber"),
    "Received": ("outcomes", "Received"),
    "SequenceTracker": ("staleness", "SequenceTracker"),
    "drop_stale": ("staleness", "drop_stale"),
    "Bridge": ("bridge", "Bridge"),
    "IntakeResult": ("bridge", "IntakeResult"),
    "BridgeConfig": ("config", "BridgeConfig"),
    "load_config": ("config", "load_config"),
    "config_from_dict": ("config", "config_from_dict"),
    "create_app": ("serve", "create_app"),
    "configure_logging": ("logs", "configure_logging"),
    "enable_tracing": ("tracing", "enable"),
    "disable_tracing": ("tracing", "disable"),
}


class _ChooseBuild:
    """Whether the compiled normalising path loads (``speedups.py``) is decided at the first import of
    a submodule, not here: ``import batchbridge.core`` reads no file and imports nothing more."""

    @staticmethod
    def find_spec(name: str, path: _Any = None, target: _Any = None) -> _Any:
        if not name.startswith(__name__ + "."):
            return None
        if _ChooseBuild in _sys.meta_path:
            _sys.meta_path.remove(_ChooseBuild)
        from .speedups import choose

        finder = choose()
        return None if finder is None else finder.find_spec(name, path, target)


_sys.meta_path.insert(0, _ChooseBuild)

if _TYPE_CHECKING:  # what type checkers and IDEs see; at run time these resolve in __getattr__
    from .backends import open_async_publisher, open_async_subscriber, open_publisher, open_subscriber
    from .bridge import Bridge, IntakeResult
    from .config import BridgeConfig, config_from_dict, load_config
    from .errors import (
        BackendError,
        BatchBridgeError,
        ClosedError,
        ConfigError,
        DecodeMessageError,
        EntityNotFoundError,
        InputError,
        MalformedPayloadError,
        MessageTooLargeError,
        MissingDependencyError,
        PayloadTooLargeError,
        UnknownSchemeError,
        UnrecognizedFormatError,
        UnsupportedEventError,
    )
    from .logs import configure_logging
    from .normalizing import normalize
    from .outbox import OutboxError
    from .outcomes import PublishResult, Received
    from .publisher import AsyncPublisher, Publisher
    from .serve import create_app
    from .staleness import SequenceTracker, drop_stale
    from .subscriber import AsyncSubscriber, Subscriber
    from .tracing import disable as disable_tracing
    from .tracing import enable as enable_tracing


def __getattr__(name: str) -> _Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = target
    value = getattr(_importlib.import_module(f"{__name__}.{module}"), attr)
    # cached, so the next lookup is a plain attribute read
    setattr(_sys.modules[__name__], name, value)
    return value


def __dir__() -> list[str]:
    return list(__all__)
