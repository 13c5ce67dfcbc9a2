"""Mount the ``serve`` receiver inside a FastAPI (or any Starlette) application.

::

    from fastapi import FastAPI
    from batchbridge.contrib.fastapi import mount_bridge

    app = FastAPI()
    bridge = mount_bridge(app, "/batch", "bridge.toml")   # POST /batch/events, GET /batch/healthz

A mounted sub-application gets no lifespan of its own, so :func:`mount_bridge` wraps the host
application's: the bridge's publisher threads start with the application and, at shutdown, publish
what is in the outbox for up to ``drain_timeout`` seconds before stopping (what is left goes out on
the next start). FastAPI itself is not imported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from batchbridge.core.bridge import Bridge
from batchbridge.core.config import ServeSettings
from batchbridge.core.serve import create_app

from ._common import Target, make_bridge

__all__ = ["mount_bridge"]

log = logging.getLogger("batchbridge.contrib.fastapi")


def mount_bridge(app: Any, path: str, target: Target, *, outbox: str | Path | None = None,
                 settings: ServeSettings | None = None, drain_timeout: float = 5.0) -> Bridge:
    """Mount the receiver at ``path`` of ``app`` (FastAPI or Starlette) and tie the bridge to the
    application's lifespan. ``target``: a config file, a config document, a backend URI (or several),
    a ``BridgeConfig`` or a ``Bridge``. Returns the bridge (``bridge.handle`` works from your own
    routes too)."""
    bridge = make_bridge(target, outbox=outbox, serverless=None)
    app.mount(path, create_app(bridge, settings=settings))
    router = app.router
    inner = router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(host: Any) -> AsyncIterator[Any]:
        await asyncio.to_thread(bridge.start)
        try:
            async with inner(host) as state:
                yield state
        finally:
            drained = await asyncio.to_thread(bridge.drain, drain_timeout)
            await asyncio.to_thread(bridge.stop)
            if not drained:
                log.warning("stopped with events still in the outbox; they go out on the next start")

    router.lifespan_context = lifespan
    return bridge
