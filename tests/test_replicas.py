"""Must show (issue 16): replicas sharing one outbox, SIGKILLed at random, lose nothing and keep
every job's order.

* **PostgreSQL** (the ``pg_server`` fixture): 3 ``serve`` and 2 ``relay`` processes on one
  ``[outbox] url = "postgresql://..."``. Events are posted across the ``serve`` replicas (each job's
  events one after the other, each to a replica picked at random, again to another on a 503 or a
  cut connection), and fed to the relays through their own ``file://`` source queues (a relay is a
  delivery replica too, and takes in what its queue holds). Every few seconds a random replica is
  SIGKILLed and started again; PostgreSQL itself is restarted once in the middle.
* **SQLite**: the same with ``serve --workers 3`` on one outbox file, without relays (a SQLite
  outbox belongs to one ``serve``, whose workers share it; another process is refused). A kill there
  is mostly of one worker, which the supervisor replaces; now and then of the whole ``serve``.

Asserted at the end, once the outbox is empty: lost 0 (every acknowledged event is at the
destination); duplicates only with equal ids (the same event, byte for byte up to key order); and
at the destination -- a ``file://`` backend, which keeps order -- every job's events in intake
order (the first arrival of each, in the order they were acknowledged).

Bounded by default (1,000 events, 4 kills: about a minute on the loaded 2-core machine); the full size
-- 20,000 events and at least 15 kills -- under ``-m faults`` or ``BATCHBRIDGE_FAULTS_FULL=1``.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from batchbridge.core import open_publisher
from batchbridge.core.normalizing import normalize
from fault_tools import Arrivals, CliProcess, Figures, ServeProcess, free_port, full_run, record, wait_until
from vendor_payloads import compact, tencent_element, tencent_message

# bounded by default; `pytest -m faults` (or BATCHBRIDGE_FAULTS_FULL=1) runs the full size
pytestmark = [pytest.mark.faults, pytest.mark.timeout(1200)]

NAMES = ("JOB_RUNNING", "TASK_RUNNING", "TASK_INSTANCE_SUCCEED", "TASK_SUCCEED", "JOB_SUCCEED")
#: events per job: long enough that a job's events cross several kills and several replicas
PER_JOB = 10
#: posting threads; each posts its jobs round-robin, one event of a job at a time
POSTERS = 6
#: seconds a (re)started serve may take to answer /healthz: generous, the machine may be loaded
READY_TIMEOUT = 60.0


@dataclass
class Size:
    events: int
    kills: int
    #: seconds between two kills (the time a restarted replica needs to come back is on top)
    interval: float

    @classmethod
    def of(cls, config: pytest.Config) -> Size:
        if full_run(config):
            return cls(int(os.environ.get("BATCHBRIDGE_REPLICA_EVENTS", "20000")), 15, 2.0)
        return cls(int(os.environ.get("BATCHBRIDGE_REPLICA_EVENTS", "1000")), 4, 1.5)


def job_events(job: str) -> list[tuple[bytes, str]]:
    """One job's life as Tencent pushes (one event each) with their canonical ids, in order."""
    out = []
    for n in range(PER_JOB):
        body = compact(tencent_message(tencent_element(NAMES[n % len(NAMES)], JobId=job, TaskInstanceIndex=n,
                                                       time=f"2018-06-15T15:02:{n:02d}Z")))
        out.append((body, normalize(body)[0]["id"]))
    assert len({eid for _, eid in out}) == PER_JOB
    return out


# --- the replicas -------------------------------------------------------------------------------------


def children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (``/proc``)."""
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.add(int(entry.name))
    return out


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Replica:
    name: str
    start: Callable[[], CliProcess]
    #: ``serve --workers N``: the processes a kill picks from are the workers under its supervisor
    workers: int = 1
    proc: CliProcess | None = None

    def up(self) -> None:
        # kept before it is waited for: a start that fails must still be stopped at the end
        self.proc = self.start()
        if isinstance(self.proc, ServeProcess):
            self.proc.wait_ready(READY_TIMEOUT)
        if self.workers > 1:
            wait_until(lambda: len(self.workers_now()) == self.workers, 30, what=f"{self.name}'s workers")

    def workers_now(self) -> set[int]:
        return children(self.proc.proc.pid) if self.proc is not None and self.proc.alive() else set()

    def kill_and_restart(self, rng: random.Random) -> str:
        """SIGKILL and start again. Under ``--workers``: mostly one worker, which the supervisor must
        replace by itself; now and then the whole serve (supervisor first, then its workers)."""
        assert self.proc is not None
        if self.workers > 1 and rng.random() < 0.8:
            before = self.workers_now()
            victim = rng.choice(sorted(before))
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda: victim not in (now := self.workers_now()) and len(now) == self.workers, 30,
                       what=f"{self.name}'s supervisor to replace a killed worker")
            return f"{self.name}-worker"
        workers = self.workers_now()
        self.proc.kill()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not any(running(pid) for pid in workers), 30, what="the killed workers to go")
        self.up()
        return self.name


@dataclass
class Fleet:
    replicas: list[Replica]
    serve_ports: list[int]
    rng: random.Random = field(default_factory=lambda: random.Random(16))

    def start(self) -> None:
        for r in self.replicas:
            r.up()

    def kill_one(self) -> str:
        """SIGKILL a random replica (or, under ``serve --workers``, one of its worker processes), then
        start it again and wait until it serves."""
        return self.rng.choice(self.replicas).kill_and_restart(self.rng)

    def stop(self) -> None:
        for r in self.replicas:
            if r.proc is not None and r.proc.alive():
                r.proc.signal(signal.SIGTERM)
        for r in self.replicas:
            if r.proc is not None:
                r.proc.wait(60)

    def logs(self) -> str:
        return "\n".join(f"--- {r.name}\n{r.proc.log()[-3000:]}" for r in self.replicas if r.proc is not None)


class Poster:
    """Posts every job's events in order, each to a random ``serve`` replica, until it answers 204;
    a replica that is down (refused, cut, 503) is simply tried again, maybe another one."""

    def __init__(self, ports: list[int], jobs: dict[str, list[tuple[bytes, str]]], rng: random.Random,
                 spread: float) -> None:
        self.ports = ports
        #: seconds the posting is spread over at least, so that the kills fall while events come in
        self.spread = spread
        self.jobs = jobs
        self.rng = rng
        #: per job, the ids in the order they were acknowledged (= intake order)
        self.acked: dict[str, list[str]] = {j: [] for j in jobs}
        self.retries = 0
        self.errors: list[str] = []

    def run(self) -> None:
        conns: dict[int, http.client.HTTPConnection] = {}
        cursors = {j: 0 for j in self.jobs}
        started = time.monotonic()
        deadline = started + 600
        gap = self.spread / max(1, sum(len(e) for e in self.jobs.values()))
        sent = 0
        while cursors:
            for job in list(cursors):
                sent += 1
                ahead = started + sent * gap - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                body, eid = self.jobs[job][cursors[job]]
                while True:
                    assert time.monotonic() < deadline, "posting did not finish"
                    port = self.rng.choice(self.ports)
                    conn = conns.get(port) or conns.setdefault(port, http.client.HTTPConnection(
                        "127.0.0.1", port, timeout=30))
                    try:
                        conn.request("POST", "/events", body, {"content-type": "application/json"})
                        response = conn.getresponse()
                        response.read()
                    except (OSError, http.client.HTTPException):
                        conn.close()
                        conns.pop(port, None)
                        self.retries += 1
                        time.sleep(0.02)
                        continue
                    if response.status == 204:
                        break
                    if response.status != 503:
                        self.errors.append(f"{response.status} from {port}")
                    self.retries += 1
                    time.sleep(0.02)
                self.acked[job].append(eid)
                cursors[job] += 1
                if cursors[job] == len(self.jobs[job]):
                    del cursors[job]
        for conn in conns.values():
            conn.close()


def read_destination(path: Path) -> Arrivals:
    """What reached the ``file://`` destination, as arrivals in file order. A line torn by a writer
    SIGKILLed mid-write is glued to the next writer's line: the whole events in it are kept."""
    arrivals = Arrivals()
    arrivals.order = []  # type: ignore[attr-defined]
    if not path.exists():
        return arrivals
    for line in path.read_bytes().splitlines():
        start = 0
        while True:
            try:
                doc = orjson.loads(line[start:])
                break
            except orjson.JSONDecodeError:
                start = line.find(b'{"', start + 1)
                if start < 0:
                    doc = None
                    break
        if doc is None:
            continue
        arrivals.add(orjson.dumps(doc))
        arrivals.order.append((str(doc["data"]["job"]["id"]), str(doc["id"])))  # type: ignore[attr-defined]
    return arrivals


def count_rows(url_or_path: str, table: str) -> int:
    """Rows of ``table`` in the outbox at ``url_or_path`` (a PostgreSQL URL or a SQLite file), read apart
    from the processes under test."""
    if url_or_path.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(url_or_path, connect_timeout=5) as conn:
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            return int(row[0]) if row else 0
    with sqlite3.connect(f"file:{url_or_path}?mode=ro", uri=True, timeout=30) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


# --- the experiment -----------------------------------------------------------------------------------


def experiment(tmp_path: Path, size: Size, outbox: str, *, serve_workers: int, serve_replicas: int,
               restart_database: Callable[[], None] | None, backend: str,
               config: pytest.Config, relays: int = 2) -> Figures:
    dest = tmp_path / "dest.jsonl"
    toml = tmp_path / "bridge.toml"
    key = "url" if outbox.startswith("postgresql://") else "path"
    # a short lease: the keys of a killed replica move on within seconds, not the default 30
    toml.write_text(f'[outbox]\n{key} = "{outbox}"\nlease = 5\n\n[[routes]]\nname = "all"\nto = "file://{dest}"\n')
    jobs = [f"job-r{j:05d}" for j in range(max(1, size.events // PER_JOB))]
    # a fifth of the jobs go in through the relays' source queues, the rest are posted
    cut = len(jobs) // 5 if relays else 0
    relayed = {j: job_events(j) for j in jobs[:cut]}
    posted = {j: job_events(j) for j in jobs[cut:]}
    sources = [tmp_path / f"source-{i}.jsonl" for i in range(relays)]

    ports = [free_port() for _ in range(serve_replicas)]
    extra = ["--workers", str(serve_workers)] if serve_workers > 1 else []

    def serve(i: int) -> Callable[[], CliProcess]:
        return lambda: ServeProcess(toml, tmp_path / f"serve-{i}.log", port=ports[i], extra=extra, ready=False)

    def relay(i: int) -> Callable[[], CliProcess]:
        return lambda: CliProcess(["relay", "--from", f"file://{sources[i]}", "--config", str(toml)],
                                  tmp_path / f"relay-{i}.log")

    fleet = Fleet([*(Replica(f"serve-{i}", serve(i), serve_workers) for i in range(serve_replicas)),
                   *(Replica(f"relay-{i}", relay(i)) for i in range(relays))], ports)
    rng = random.Random(7)
    names = sorted(posted)
    spread = size.kills * size.interval
    posters = [Poster(ports, {j: posted[j] for j in names[k::POSTERS]}, random.Random(k), spread)
               for k in range(POSTERS)]
    threads = [threading.Thread(target=p.run, name=f"poster-{k}") for k, p in enumerate(posters)]
    # the relays' queues: each job whole on one queue, in order, fed while the replicas are killed
    feeds = [open_publisher(f"file://{s}") for s in sources]
    relayed_names = sorted(relayed)

    def feed() -> None:
        for k, job in enumerate(relayed_names):
            events = [normalize(body)[0] for body, _ in relayed[job]]
            feeds[k % len(feeds)].publish(events)
            time.sleep(spread / max(1, len(relayed_names)))

    feeder = threading.Thread(target=feed, name="feeder")
    killed: list[str] = []
    restarted_db = False
    try:
        fleet.start()
        started = time.monotonic()
        for t in [*threads, feeder]:
            t.start()
        # kill until both the posting is over and enough kills were made
        while len(killed) < size.kills or any(t.is_alive() for t in threads):
            time.sleep(rng.uniform(0.5, 1.5) * size.interval)
            if restart_database is not None and not restarted_db and len(killed) >= size.kills // 2:
                restart_database()
                restarted_db = True
                continue
            killed.append(fleet.kill_one())
        for t in [*threads, feeder]:
            t.join(600)
        posting = time.monotonic() - started
        if restart_database is not None and not restarted_db:
            restart_database()
            restarted_db = True
        want = {eid for events in [*posted.values(), *relayed.values()] for _, eid in events}
        wait_until(lambda: want <= read_destination(dest).ids() and count_rows(outbox, "outbox") == 0, 300, poll=0.5,
                   what="every event at the destination and the outbox empty")
        delivered_in = time.monotonic() - started
    except BaseException:
        print(fleet.logs())
        raise
    finally:
        for f in feeds:
            f.close()
        fleet.stop()
    arrivals = read_destination(dest)
    got, lost, dups = arrivals.figures(want)
    assert lost == 0
    assert not arrivals.inconsistent_duplicates(), "an id arrived twice with different content"
    assert arrivals.ids() <= want, "an event arrived that nobody sent"
    assert not [e for p in posters for e in p.errors], [e for p in posters for e in p.errors][:5]
    assert count_rows(outbox, "dead_letter") == 0
    # every job's events, first arrivals, in intake order: acknowledged order for posted jobs, queue
    # order for relayed ones
    first: dict[str, list[str]] = {}
    seen: set[str] = set()
    for job, eid in arrivals.order:  # type: ignore[attr-defined]
        if eid not in seen:
            seen.add(eid)
            first.setdefault(job, []).append(eid)
    intake = {j: a for p in posters for j, a in p.acked.items()} | {j: [e for _, e in ev] for j, ev in relayed.items()}
    out_of_order = [j for j, ids in intake.items() if first.get(j) != ids]
    assert not out_of_order, f"{len(out_of_order)} jobs out of order, e.g. {out_of_order[:3]}"
    assert len(killed) >= size.kills and (restart_database is None or restarted_db)
    workers = f" --workers {serve_workers}" if serve_workers > 1 else ""
    return record(Figures(
        f"replicas: {serve_replicas} serve{workers} + {relays} relay",
        backend, f"{len(killed)} SIGKILLs{' + a database restart' if restart_database else ''}",
        sent=len(want), delivered=got, lost=lost, duplicates=dups, extra={
            "posting_s": round(posting, 1), "all_delivered_s": round(delivered_in, 1),
            "retries": sum(p.retries for p in posters), "killed": ",".join(sorted(set(killed)))}), config)


@pytest.fixture
def size(request: pytest.FixtureRequest) -> Size:
    return Size.of(request.config)


def test_replicas_on_postgresql_survive_kills_and_a_database_restart(tmp_path: Path, pg_server: Any, pg_url: str,
                                                                   size: Size, request: pytest.FixtureRequest) -> None:
    fig = experiment(tmp_path, size, pg_url, serve_workers=1, serve_replicas=3, restart_database=pg_server.restart,
                     backend="postgresql", config=request.config)
    assert fig.lost == 0


def test_serve_workers_on_sqlite_survive_kills(tmp_path: Path, size: Size, request: pytest.FixtureRequest) -> None:
    # no relays here: a SQLite outbox is one serve's (its workers share it); another process is refused
    fig = experiment(tmp_path, size, str(tmp_path / "outbox.sqlite"), serve_workers=3, serve_replicas=1,
                     restart_database=None, backend="sqlite", config=request.config, relays=0)
    assert fig.lost == 0
