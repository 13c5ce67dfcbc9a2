"""``GET /state`` and ``GET /status`` on ``serve``: the state view as JSON, and a status page for operators.

The page is one self-contained HTML document (inline CSS, no script, nothing fetched from elsewhere;
it reloads itself every 10 s): each destination with its backlog, the age of its oldest row and its
last error; the dead letters by stage and reason; and the recent lifecycle of jobs and environments
as timelines -- per job its tasks and instances, each a track of its states placed by time. Every
figure comes from the outbox file (:func:`destination_backlog`, :func:`dead_letters_by_reason`) and
its subject-state store, so it is what the bridge has durably, not what one process remembers.
"""

from __future__ import annotations

import asyncio
import glob
import html
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import BatchBridgeError
from .secrets import redact, redact_uri
from .state import SubjectState
from .stores import destination_heads, state_of

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from .bridge import Bridge

#: subjects ``GET /state`` returns at most unless ``?limit=`` says otherwise
STATE_LIMIT = 10_000
#: jobs (and environments) shown as timelines on the status page
RECENT_RESOURCES = 20
#: children (tasks, instances, nodes) shown per job or environment
CHILDREN_PER_RESOURCE = 50


@dataclass(frozen=True, slots=True)
class Backlog:
    destination: str
    rows: int
    #: seconds the oldest waiting row has been in the outbox
    oldest_age: float | None
    last_error: str | None


def destination_backlog(bridge: Bridge, now: float | None = None) -> list[Backlog]:
    """Every destination the config names or the outbox holds rows for: its waiting rows, the age of
    the oldest, and the latest error (its publisher's current one, else the last recorded on a row;
    destinations redacted). The one
    place the page asks the outbox about backlog, so a richer outbox figure can replace the query."""
    now = time.time() if now is None else now
    ob = bridge.outbox
    if not hasattr(ob, "heads"):  # not the SQLite outbox: the store interface's figures
        current = {label: why for label, (_, why) in bridge.failing().items()}
        return [Backlog(redact_uri(h.destination), h.rows, h.oldest_age,
                        current.get(redact_uri(h.destination)) or (redact(h.last_error) if h.last_error else None))
                for h in destination_heads(ob)]
    counts = {d: (int(n), float(oldest)) for d, n, oldest in ob._read(
        "SELECT destination, count(*), min(created) FROM outbox GROUP BY destination")}
    # SQLite takes the bare column from the row holding max(seq): the latest error per destination
    errors = {d: e for d, _, e in ob._read(
        "SELECT destination, max(seq), last_error FROM outbox WHERE last_error IS NOT NULL GROUP BY destination")}
    # a publisher that cannot even open its client records nothing on the rows: its own last error
    current = {label: why for label, (_, why) in bridge.failing().items()}
    names = dict.fromkeys([*bridge.config.destinations(), *counts])
    out = []
    for d in names:
        n, oldest = counts.get(d, (0, None))
        error = current.get(redact_uri(d)) or errors.get(d)
        out.append(Backlog(redact_uri(d), n, None if oldest is None else max(0.0, now - oldest),
                           redact(error) if error else None))
    return out


def dead_letters_by_reason(bridge: Bridge) -> list[tuple[str, str, int]]:
    """(stage, error code, count), most first."""
    return [(str(s), str(c), int(n)) for s, c, n in bridge.outbox._read(
        "SELECT stage, code, count(*) FROM dead_letter GROUP BY stage, code ORDER BY count(*) DESC, stage, code")]


@dataclass(frozen=True, slots=True)
class Timeline:
    root: str
    #: the job or environment itself; None when only its tasks or nodes reported (Azure jobs)
    resource: SubjectState | None
    children: list[SubjectState]


def timelines(bridge: Bridge, prefix: str, limit: int = RECENT_RESOURCES) -> list[Timeline]:
    """The most recently active jobs or environments (``prefix`` ``jobs/``, ``environments/``), each
    with its tasks, instances or nodes."""
    store = bridge.state
    if store is None:
        return []
    out = []
    for root in store.recent(prefix, limit):
        own = store.query(root)
        children = store.query(glob.escape(root) + "/*", limit=CHILDREN_PER_RESOURCE)
        out.append(Timeline(root, own[0] if own else None, children))
    return out


# --- rendering ----------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
th{background:#f0f0f0}.num{text-align:right}.err{color:#a00}.muted{color:#777}
.res{background:#fff;border:1px solid #ddd;margin:.5em 0;padding:.4em .6em}
.row{display:flex;align-items:center;margin:.15em 0}.label{width:22em;overflow:hidden;text-overflow:ellipsis;
white-space:nowrap;font-family:monospace;font-size:12px}
.track{position:relative;flex:1;height:1.5em;border-bottom:1px solid #ccc}
.st{position:absolute;top:0;transform:translateX(-50%);font-size:11px;padding:0 .3em;border-radius:3px;
color:#fff;white-space:nowrap}
.pending,.created{background:#888}.starting{background:#69c}.running{background:#27c}
.succeeded{background:#2a2}.failed,.creation_failed,.abnormal{background:#c22}.stopped,.interrupted{background:#c80}
.deleting,.deleted{background:#555}
"""


def _e(value: object) -> str:
    return html.escape("-" if value is None else str(value))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def _micros(sequence: str | None) -> int | None:
    return int(sequence[:17]) if sequence else None


def _track(subject: SubjectState, t0: int, span: int) -> str:
    marks = []
    for seq, state, when, _id in subject.history:
        t = _micros(seq)
        left = 50.0 if t is None or span <= 0 else 2 + 96 * (t - t0) / span
        marks.append(f'<span class="st {_e(state)}" style="left:{left:.1f}%" title="{_e(state)} at {_e(when)}">'
                     f"{_e(state)}</span>")
    return (f'<div class="row" data-subject="{_e(subject.subject)}" data-state="{_e(subject.state)}">'
            f'<div class="label" title="{_e(subject.subject)}">'
            f'{_e(subject.subject)}</div><div class="track">{"".join(marks)}</div></div>')


def _timeline(t: Timeline) -> str:
    subjects = [t.resource, *t.children] if t.resource is not None else t.children
    times = [m for s in subjects for h in s.history if (m := _micros(h[0])) is not None]
    t0, t1 = (min(times), max(times)) if times else (0, 0)
    r = t.resource
    about = (f'{_e(r.provider)} · latest <span class="state">{_e(r.state)}</span> at {_e(r.time)}' if r is not None
             else f"{_e(subjects[0].provider if subjects else None)} · no events of its own")
    head = f'<div class="res" data-resource="{_e(t.root)}"><b>{_e(t.root)}</b> <span class="muted">{about}</span>'

    return head + "".join(_track(s, t0, t1 - t0) for s in subjects) + "</div>"


def render(backlog: Sequence[Backlog], dead: Sequence[tuple[str, str, int]], jobs: Sequence[Timeline],
           environments: Sequence[Timeline], now: float) -> str:
    rows = "".join(
        f'<tr><td>{_e(b.destination)}</td><td class="num">{b.rows}</td><td class="num">{_age(b.oldest_age)}</td>'
        f'<td class="err">{_e(b.last_error) if b.last_error else ""}</td></tr>' for b in backlog)
    dead_rows = "".join(f'<tr><td>{_e(s)}</td><td>{_e(c)}</td><td class="num">{n}</td></tr>' for s, c, n in dead)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="10">'
        f"<title>batchbridge status</title><style>{_CSS}</style></head><body>"
        f'<h1>batchbridge</h1><div class="muted">{time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))}</div>'
        "<h2>Destinations</h2><table id=destinations><tr><th>destination</th><th>backlog</th><th>oldest</th>"
        f"<th>last error</th></tr>{rows or '<tr><td colspan=4 class=muted>none</td></tr>'}</table>"
        "<h2>Dead letters</h2><table id=dead-letters><tr><th>stage</th><th>reason</th><th>count</th></tr>"
        f"{dead_rows or '<tr><td colspan=3 class=muted>none</td></tr>'}</table>"
        f'<h2>Recent jobs</h2><div id="jobs">{"".join(map(_timeline, jobs)) or "<p class=muted>none yet</p>"}</div>'
        f'<h2>Recent environments</h2><div id="environments">'
        f'{"".join(map(_timeline, environments)) or "<p class=muted>none yet</p>"}</div>'
        "</body></html>")


def status_html(bridge: Bridge) -> str:
    now = time.time()
    return render(destination_backlog(bridge, now), dead_letters_by_reason(bridge), timelines(bridge, "jobs/"),
                  timelines(bridge, "environments/"), now)


def routes(bridge: Bridge, authorized: Callable[[Request], bool], refuse: Callable[[], Response],
           error: Callable[[int, str, str], Response]) -> list[Route]:
    """The ``/state`` and ``/status`` routes (both behind the shared token when one is set)."""
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    async def state(request: Request) -> Response:
        if not authorized(request):
            return refuse()
        pattern = request.query_params.get("subject") or None
        try:
            limit = int(request.query_params.get("limit", STATE_LIMIT))
        except ValueError:
            return error(400, "invalid_parameter", "limit must be an integer")
        if limit < 1:
            return error(400, "invalid_parameter", "limit must be at least 1")
        try:
            rows = await asyncio.to_thread(state_of(bridge.outbox).query, pattern, limit=limit)
        except BatchBridgeError as exc:
            return error(503, exc.code, "the state store cannot be read")
        body: list[dict[str, Any]] = [r.as_dict() for r in rows]
        return JSONResponse(body)

    async def status(request: Request) -> Response:
        if not authorized(request):
            return refuse()
        try:
            page = await asyncio.to_thread(status_html, bridge)
        except BatchBridgeError as exc:
            return error(503, exc.code, "the outbox cannot be read")
        return HTMLResponse(page)

    return [Route("/state", state, methods=["GET"]), Route("/status", status, methods=["GET"])]
