"""Opening the outbox store a config names: the one place ``serve``, ``relay``, ``dlq``, ``status`` and
``state`` get their store from.

``[outbox] url`` (or ``--outbox``) selects it: a file path (or ``sqlite:///PATH``; the default is
``[outbox] path``) opens the SQLite :class:`~batchbridge.core.outbox.Outbox`; ``postgresql://USER@HOST:PORT/DB``
opens :class:`~batchbridge.core.store_postgres.PostgresStore` (the password from the URL, libpq's
environment or a password file, always redacted).

The subject-state store (``supersede`` routes, ``batchbridge state``) lives inside the outbox's intake
transaction, so each kind of store brings its own: the SQLite outbox has one in the same file. Another
kind plugs one in with :func:`register_state_store`; until one is registered, a config whose routes need
state is refused with a clear error when it is loaded (``core/store_kinds.py``) rather than run
with the supersede decisions silently skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .store_kinds import POSTGRESQL, WITH_STATE, kind_of, state_refusal

if TYPE_CHECKING:
    from .config import OutboxSettings, RouteSpec
    from .outbox import Backlog
    from .state import StateStore
    from .store import OutboxStore

#: kind -> a function returning the state store for a freshly opened store of that kind
StateHook = Callable[["OutboxStore"], "StateStore"]
_STATE_HOOKS: dict[str, StateHook] = {}


def register_state_store(kind: str, hook: StateHook) -> None:
    """Let stores of ``kind`` (``"postgresql"``) carry a subject-state store: ``hook(store)`` returns it,
    and :func:`open_store` sets it as ``store.state`` (the store then decides supersede gates inside its
    intake transaction, as the SQLite outbox does). Register before configs are loaded."""
    _STATE_HOOKS[kind] = hook
    WITH_STATE.add(kind)


def needs_state(routes: Sequence[RouteSpec]) -> list[str]:
    """The routes that need the subject-state store (``supersede = true``), by name."""
    return [r.name or f"routes[{i}]" for i, r in enumerate(routes) if r.supersede]


def check_state_support(settings: OutboxSettings, routes: Sequence[RouteSpec]) -> None:
    """ConfigError when ``routes`` need a state store that ``settings``' kind of store cannot hold."""
    refused = state_refusal(kind_of(settings.url), needs_state(routes), settings.where)
    if refused is not None:
        raise ConfigError(refused, where="outbox.url")


def open_store(settings: OutboxSettings, *, routes: Sequence[RouteSpec] = (), must_exist: bool = False,
               state: StateHook | None = None) -> OutboxStore:
    """Open the store ``settings`` name (``url``, else the SQLite file at ``path``). ``must_exist``:
    refuse a SQLite file that is not there yet (the inspecting commands: ``dlq``, ``status``, ``state``)
    instead of creating it. ``state`` overrides the registered state-store hook for this store."""
    from .outbox import Outbox

    check_state_support(settings, () if state is not None else routes)
    if settings.url:
        from .store_postgres import PostgresStore

        store: Any = PostgresStore(settings.url, lease=settings.lease)
        hook = state or _STATE_HOOKS.get(POSTGRESQL)
        if hook is not None:
            store.state = hook(store)
    else:
        if must_exist and not Path(settings.path).exists():
            raise ConfigError("no outbox here: pass --config FILE or --outbox PATH", where=str(settings.path))
        store = Outbox(settings.path, synchronous=settings.synchronous, lease=settings.lease)
    store.dead_letter_max_rows = settings.dead_letter_max_rows
    store.dead_letter_max_bytes = settings.dead_letter_max_bytes
    result: OutboxStore = store
    return result


def state_of(store: OutboxStore) -> StateStore:
    """The store's subject-state store; ConfigError naming the store when it has none."""
    state: StateStore | None = getattr(store, "state", None)
    if state is None:
        raise ConfigError("this outbox has no subject-state store (supersede, `batchbridge state`) in this version",
                          where=store.where)
    return state


def destination_heads(store: OutboxStore) -> list[Backlog]:
    """Per destination: rows waiting, the oldest's age, and -- where the store records them on the head
    row (the SQLite outbox: :meth:`~batchbridge.core.outbox.Outbox.heads`) -- its attempts and last error
    (``batchbridge status``, the backlog gauges)."""
    import time

    from .outbox import Backlog

    heads: Callable[[], list[Backlog]] | None = getattr(store, "heads", None)
    if heads is not None:
        return heads()
    now = time.time()
    return [Backlog(d, b.rows, 0.0 if b.oldest is None else max(0.0, now - b.oldest), 0, None)
            for d, b in sorted(store.backlog().items())]
