"""``serve --workers N`` as real processes: one port, one SQLite outbox shared through its leases, a
supervisor that replaces a worker that dies, and the outbox lock that still refuses an unrelated
second bridge (``core/serve_workers.py``)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
from fault_tools import CliProcess, ServeProcess, free_port, processes, tencent_payloads, wait_until


def config(tmp: Path) -> tuple[Path, Path]:
    out = tmp / "out.jsonl"
    cfg = tmp / "bridge.toml"
    cfg.write_text(f'[[routes]]\nto = "file://{out}"\n\n[outbox]\npath = "{tmp / "outbox.db"}"\n'
                   "backoff_initial = 0.05\nbackoff_max = 0.5\nlease = 2.0\n\n[serve]\ndrain_timeout = 5\n")
    return cfg, out


def read_events(path: Path) -> list[dict[str, Any]]:
    """The file:// destination's events (whole lines only: a worker may be mid-write)."""
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().split(b"\n")[:-1]]


def children(pid: int) -> list[int]:
    """The supervisor's worker processes."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def post_all(url: str, items: list[tuple[bytes, str]]) -> list[str]:
    """Post from 8 clients; the ids answered 204 (a request that fails is retried, as a sender would)."""
    def one(item: tuple[bytes, str]) -> str:
        deadline = time.monotonic() + 20
        while True:
            try:
                status = httpx.post(f"{url}/events", content=item[0], timeout=10).status_code
                if status == 204:
                    return item[1]
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "a request was not accepted within 20s"
            time.sleep(0.05)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, items))


def two_workers(started: list[CliProcess], cfg: Path, tmp: Path) -> ServeProcess:
    """``serve --workers 2`` on ``cfg``, up, with both workers started."""
    serve = ServeProcess(cfg, tmp / "serve.log", extra=["--workers", "2"])
    started.append(serve)
    wait_until(lambda: len(children(serve.proc.pid)) == 2, 20, what="two workers")
    return serve


def test_two_workers_share_one_port_and_one_outbox_and_deliver_each_event_once(tmp_path: Path) -> None:
    cfg, out = config(tmp_path)
    items = tencent_payloads(120, "w")
    with processes() as started:
        serve = two_workers(started, cfg, tmp_path)
        acked = post_all(serve.url, items)
        assert sorted(acked) == sorted(i for _, i in items)
        wait_until(lambda: len(read_events(out)) >= len(items), 30, what="delivery")
        time.sleep(0.3)  # anything delivered twice would show up now
        ids = [e["id"] for e in read_events(out)]
        assert sorted(ids) == sorted(i for _, i in items), "an event was lost or delivered twice"
        workers = children(serve.proc.pid)
        assert len(workers) == 2
        serve.signal(signal.SIGTERM)
        assert serve.wait(30) == 0, serve.log()
        assert not any(alive(pid) for pid in workers)  # the workers stopped with it


def test_a_killed_worker_is_replaced_and_nothing_is_lost(tmp_path: Path) -> None:
    cfg, out = config(tmp_path)
    first, second = tencent_payloads(80, "a"), tencent_payloads(80, "b")
    with processes() as started:
        serve = two_workers(started, cfg, tmp_path)
        post_all(serve.url, first)
        victim = children(serve.proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        # the other worker keeps accepting while the supervisor starts a new one (connections the kernel
        # gives the dead worker's socket wait in its queue for the replacement; post_all retries)
        post_all(serve.url, second)
        wait_until(lambda: len(children(serve.proc.pid)) == 2 and victim not in children(serve.proc.pid), 20,
                   what="the supervisor to replace the killed worker")
        want = {i for _, i in first + second}
        # the killed worker's claims go to the others once its lease (2 s) has run out
        wait_until(lambda: want <= {e["id"] for e in read_events(out)}, 40, what="every event delivered")
        ids = [e["id"] for e in read_events(out)]
        assert set(ids) == want, "an event was lost"
        bodies: dict[str, set[str]] = {}
        for e in read_events(out):
            bodies.setdefault(e["id"], set()).add(repr(sorted(e.items())))
        assert all(len(b) == 1 for b in bodies.values()), "a duplicate differs from the original"
        assert "restarting it" in serve.log()
        serve.signal(signal.SIGTERM)
        assert serve.wait(30) == 0, serve.log()


def test_an_unrelated_bridge_on_the_same_outbox_is_still_refused(tmp_path: Path) -> None:
    cfg, _ = config(tmp_path)
    link = tmp_path / "link.db"
    with processes() as started:
        serve = two_workers(started, cfg, tmp_path)
        os.link(tmp_path / "outbox.db", link)
        for outbox, log in ((str(tmp_path / "outbox.db"), "second.log"), (str(link), "link.log")):
            for extra in ([], ["--workers", "2"]):
                other = CliProcess(["serve", "--config", str(cfg), "--port", str(free_port()), "--outbox", outbox,
                                    *extra], tmp_path / log)
                assert other.wait(30) == 2
                assert "another running bridge" in other.log(), other.log()
        assert len(children(serve.proc.pid)) == 2  # the first serve is untouched
        serve.signal(signal.SIGTERM)
        assert serve.wait(30) == 0, serve.log()


def test_workers_stop_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    cfg, _ = config(tmp_path)
    with processes() as started:
        serve = two_workers(started, cfg, tmp_path)
        workers = children(serve.proc.pid)
        serve.kill()
        wait_until(lambda: not any(alive(p) for p in workers), 30, what="the orphaned workers to stop")
        # and the outbox is free for the next serve
        again = ServeProcess(cfg, tmp_path / "again.log")
        started.append(again)
        again.signal(signal.SIGTERM)
        assert again.wait(30) == 0, again.log()


def accepted(pid: int, port: int) -> int:
    """The established connections to ``port`` that process ``pid`` holds (its socket descriptors'
    inodes looked up in the kernel's TCP table)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local_port, state, inode = int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]
                count += local_port == port and state == "01" and inode in inodes
    return count


def test_a_burst_of_connections_is_spread_over_the_workers(tmp_path: Path) -> None:
    """With one socket shared by all, the first worker to wake accepted a whole burst (a load generator's
    connections, opened at once, all went to one worker in about every other run): each worker has a
    socket of its own on the port, and the kernel spreads new connections over them."""
    cfg, _ = config(tmp_path)
    with processes() as started:
        serve = two_workers(started, cfg, tmp_path)
        workers = children(serve.proc.pid)
        conns = [socket.create_connection(("127.0.0.1", serve.port), timeout=10) for _ in range(24)]
        try:
            for c in conns:  # an answer on every connection: each has been accepted by a worker
                c.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            for c in conns:
                assert c.recv(64).startswith(b"HTTP/1.1 200")
            got = {pid: accepted(pid, serve.port) for pid in workers}
            # hashed over two sockets, 24 connections leave fewer than 2 to one worker once in ~30,000 runs
            assert sum(got.values()) == 24 and min(got.values()) >= 2, got
        finally:
            for c in conns:
                c.close()
        serve.signal(signal.SIGTERM)
        assert serve.wait(30) == 0, serve.log()


def test_a_port_in_use_is_refused_even_by_another_serve_with_workers(tmp_path: Path) -> None:
    """The workers' sockets share the port through SO_REUSEPORT, which would let a second same-user
    ``serve --workers`` join their group and take half their connections: it is refused instead."""
    cfg, _ = config(tmp_path)
    other_cfg = tmp_path / "other.toml"
    other_cfg.write_text(cfg.read_text().replace(str(tmp_path / "outbox.db"), str(tmp_path / "other.db")))
    with processes() as started:
        serve = ServeProcess(cfg, tmp_path / "serve.log", extra=["--workers", "2"])
        started.append(serve)
        for extra in (["--workers", "2"], []):
            second = CliProcess(["serve", "--config", str(other_cfg), "--port", str(serve.port), *extra],
                                tmp_path / "second.log")
            started.append(second)
            assert second.wait(30) != 0
            assert "cannot listen" in second.log(), second.log()
        serve.signal(signal.SIGTERM)
        assert serve.wait(30) == 0, serve.log()


def _destination_holders(outbox: Path) -> list[tuple[str, int]]:
    """(destination, pid) of each ``destination_lease`` in the outbox: which worker delivers what."""
    import sqlite3

    conn = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True)
    try:
        return [(d, int(o.split(":")[1])) for d, o in conn.execute("SELECT destination, owner FROM destination_lease")]
    finally:
        conn.close()


def test_one_worker_delivers_a_destination_and_another_takes_over_at_once_when_it_is_killed(tmp_path: Path) -> None:
    """Both workers take events in, one delivers them (bigger batches, half the syncs of two); SIGKILLed,
    it is replaced as deliverer by the other worker at its next claim -- not after the lease, which
    is made a minute long here so that waiting it out would fail the test."""
    cfg, out = config(tmp_path)
    cfg.write_text(cfg.read_text().replace("lease = 2.0", "lease = 60.0"))
    first, second = tencent_payloads(80, "a"), tencent_payloads(80, "b")
    with processes() as started:
        serve = two_workers(started, cfg, tmp_path)
        post_all(serve.url, first)
        wait_until(lambda: {i for _, i in first} <= {e["id"] for e in read_events(out)}, 30, what="delivery")
        holders = _destination_holders(tmp_path / "outbox.db")
        workers = children(serve.proc.pid)
        assert len(holders) == 1 and holders[0][1] in workers, (holders, workers)
        deliverer = holders[0][1]
        os.kill(deliverer, signal.SIGKILL)
        started_at = time.monotonic()
        post_all(serve.url, second)
        wait_until(lambda: {i for _, i in first + second} <= {e["id"] for e in read_events(out)}, 20,
                   what="the other worker to deliver in the killed one's place")
        took = time.monotonic() - started_at
        assert took < 20, took
        assert [pid for _, pid in _destination_holders(tmp_path / "outbox.db")] != [deliverer]
        serve.signal(signal.SIGTERM)
        assert serve.wait(30) == 0, serve.log()
