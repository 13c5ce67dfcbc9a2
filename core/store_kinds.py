"""The kinds of outbox store, and which of them hold the subject-state store (``supersede`` routes,
``batchbridge state``). Read by the config when it is loaded -- a route that needs state on a store
without one is refused there, with a clear error, rather than run with its supersede decisions
skipped -- and by the store factory (``core/stores.py``). Imports nothing of the project's."""

from __future__ import annotations

from collections.abc import Sequence

SQLITE, POSTGRESQL = "sqlite", "postgresql"
#: ``[outbox] url`` prefixes naming a PostgreSQL outbox; anything else is a path (``sqlite:///PATH`` too)
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
#: kinds whose store carries a state store: the SQLite outbox has one in its file, the PostgreSQL store
#: one in its database (``core/state_postgres.py``); a kind is added by
#: :func:`batchbridge.core.stores.register_state_store` (or here, once its store always has one)
WITH_STATE: set[str] = {SQLITE, POSTGRESQL}


def kind_of(url: str | None) -> str:
    return POSTGRESQL if url and url.startswith(POSTGRES_SCHEMES) else SQLITE


def state_refusal(kind: str, wanting: Sequence[str], where: str) -> str | None:
    """Why routes ``wanting`` state cannot run on a store of ``kind`` (None when they can)."""
    if not wanting or kind in WITH_STATE:
        return None
    return (f"route(s) {', '.join(wanting)} use supersede = true, which needs the subject-state store; the "
            f"{kind} outbox ({where}) has none in this version. Use a SQLite outbox for them, or drop supersede")
