"""``batchbridge check`` and ``serve --check``: open every destination (and a relay's source) before
starting, and say per URI whether it can be used.

Each URI is opened with the adapter's own driver -- the same code path a publisher takes, so a URI
that passes here fails later only if the backend changes -- and, where opening does not ask the
backend whether the entity exists (Pub/Sub, a Service Bus link that failed retryably), the driver's
``probe()`` asks. The outcome is one of :data:`STATUSES`; only ``reachable`` is usable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .config import BridgeConfig
from .errors import BatchBridgeError
from .retry import ErrorCode, code_of
from .secrets import redact, redact_uri

REACHABLE, MISSING, REFUSED, UNREACHABLE, INVALID = (
    "reachable", "entity missing", "permission refused", "unreachable", "invalid")
STATUSES = (REACHABLE, MISSING, REFUSED, UNREACHABLE, INVALID)

#: the status each portable code stands for. The drivers already turn every SDK's exceptions into these
#: codes (each adapter's ``error_code``), so the preflight reads no SDK's wording. A credential that is
#: missing or a certificate that fails (``failed_precondition``) refuses the writes as surely as a role;
#: what is transient, cancelled or of no known kind cannot be reached now.
_STATUS_OF_CODE: dict[ErrorCode, str] = {
    ErrorCode.NOT_FOUND: MISSING,
    ErrorCode.PERMISSION_DENIED: REFUSED,
    ErrorCode.FAILED_PRECONDITION: REFUSED,
    ErrorCode.INVALID_ARGUMENT: INVALID,
}


@dataclass(frozen=True)
class Check:
    """One URI's preflight outcome. ``uri`` is redacted; ``where`` is the config key that names it."""

    uri: str
    role: str
    status: str
    detail: str = ""
    where: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == REACHABLE

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "role": self.role, "status": self.status, "ok": self.ok,
                "detail": self.detail, "where": self.where}


def classify(exc: BatchBridgeError) -> str:
    """The preflight status an error opening or probing a URI stands for, from its portable code."""
    return _STATUS_OF_CODE.get(exc.error_code, UNREACHABLE)


def check_uri(uri: str, role: str = "publisher", where: str | None = None) -> Check:
    """Open ``uri`` as a ``publisher`` or ``subscriber``, probe it, close it."""
    from .backends import open_driver

    label = redact_uri(uri)
    try:
        driver = open_driver(uri, role)
    except BatchBridgeError as exc:
        return Check(label, role, classify(exc), redact(exc.reason), where)
    try:
        probe = getattr(driver, "probe", None)
        if probe is not None:
            probe()
    except BatchBridgeError as exc:
        return Check(label, role, classify(exc), redact(exc.reason), where)
    except Exception as exc:  # an SDK exception the probe let out: the driver's own mapping names it
        status = _STATUS_OF_CODE.get(code_of(exc, driver), UNREACHABLE)
        return Check(label, role, status, redact(f"{type(exc).__name__}: {exc}"), where)
    finally:
        with contextlib.suppress(Exception):
            driver.close()
    return Check(label, role, REACHABLE, "", where)


def targets(config: BridgeConfig, source: str | None = None) -> list[tuple[str, str, str | None]]:
    """(uri, role, config key) for every destination of ``config``, and ``source`` as a subscriber."""
    out: list[tuple[str, str, str | None]] = []
    if source:
        out.append((source, "subscriber", "--from"))
    seen: set[str] = set()
    for route in config.routes:
        for uri in route.to:
            if uri not in seen:
                seen.add(uri)
                out.append((uri, "publisher", route.where))
    if config.unrouted not in seen and "://" in config.unrouted:
        out.append((config.unrouted, "publisher", f"{config.source}:unrouted"))
    return out


def check_all(config: BridgeConfig, source: str | None = None, *, parallel: int = 8) -> list[Check]:
    """Every URI of :func:`targets` checked, at most ``parallel`` at once (an unreachable endpoint costs
    its adapter's connect timeout), in config order."""
    items: Sequence[tuple[str, str, str | None]] = targets(config, source)
    if not items:
        return []
    with ThreadPoolExecutor(min(parallel, len(items)), thread_name_prefix="batchbridge-check") as pool:
        return list(pool.map(lambda t: check_uri(*t), items))


def report_lines(checks: Sequence[Check]) -> list[str]:
    """One line per URI for the terminal."""
    lines = []
    for c in checks:
        mark = "ok  " if c.ok else "FAIL"
        detail = f": {c.detail}" if c.detail else ""
        where = f"  ({c.where})" if c.where else ""
        lines.append(f"{mark} {c.role:<10} {c.uri}  {c.status}{detail}{where}")
    return lines
