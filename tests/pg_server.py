"""A real, throwaway PostgreSQL server for the tests (Debian's ``postgresql`` package).

Fixtures (registered in ``conftest.py``):

* ``pg_server`` (session): ``initdb`` into a temporary directory, then ``pg_ctl -w start`` listening
  on 127.0.0.1 on a free port (no Unix socket, so nothing of the machine's own cluster is touched).
  Stopped and deleted at the end of the session. :meth:`PgServer.restart`, :meth:`PgServer.stop` and
  :meth:`PgServer.start` are for fault tests (the port and the data stay the same).
* ``pg_url`` (function): a fresh database on that server for one test, dropped afterwards, as a
  ``postgresql://bb@127.0.0.1:PORT/DB`` URL (trust authentication: no password).

``initdb`` and ``postgres`` refuse to run as root: as root, they run as the ``postgres`` account the
package creates (``runuser``), in a directory owned by it. The binaries are not on PATH; they are
looked for in ``/usr/lib/postgresql/*/bin`` (``BATCHBRIDGE_PG_BIN`` names another directory). Without
them the tests that need the server are skipped with a reason saying what to install, or fail when
``BATCHBRIDGE_REQUIRE_POSTGRES=1`` (CI, where ``.ci/run`` installs the package).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_tools import free_port

USER = "bb"
INSTALL_HELP = "PostgreSQL server binaries not found: `apt-get install postgresql` (Debian) or set BATCHBRIDGE_PG_BIN"


def find_bindir() -> Path | None:
    explicit = os.environ.get("BATCHBRIDGE_PG_BIN")
    if explicit:
        return Path(explicit) if (Path(explicit) / "initdb").exists() else None
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


class PgServer:
    """One PostgreSQL cluster in a temporary directory, on 127.0.0.1:``port``."""

    def __init__(self, bindir: Path, *, durable: bool = False) -> None:
        self.bindir = bindir
        #: fsync on (benchmarks measure durable commits); the tests run without it
        self.durable = durable
        self.base = Path(tempfile.mkdtemp(prefix="bb-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "log"
        self.port = free_port()
        # the server refuses root: run it as the package's unprivileged account, which must own the files
        self._as: list[str] = []
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.base, account.pw_uid, account.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        done = subprocess.run([*self._as, str(self.bindir / tool), *args], capture_output=True, text=True,
                              timeout=timeout, cwd=self.base)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}\n{log}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", USER, "-A", "trust", "-E", "UTF8", "--no-locale",
                  "--no-sync")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = ''\n"
                       "max_connections = 200\n")
            if not self.durable:
                # a test server: what an fsync protects against (a power cut) is not what the tests
                # exercise, and each fsync costs the shared 2-core machine dearly
                conf.write("fsync = off\nfull_page_writes = off\n")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def restart(self) -> None:
        """Stop (fast: every connection is cut) and start again on the same port with the same data."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)  # test-made identifiers, no user input

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.admin(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def destroy(self) -> None:
        if self.running:
            with contextlib.suppress(Exception):
                self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bindir = find_bindir()
    if bindir is None:
        if os.environ.get("BATCHBRIDGE_REQUIRE_POSTGRES") == "1":
            pytest.fail(INSTALL_HELP)
        pytest.skip(INSTALL_HELP)
    pytest.importorskip("psycopg", reason="psycopg 3 is not installed: pip install -e '.[postgres]'")
    server = PgServer(bindir)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    if not pg_server.running:  # a fault test that failed half-way must not take the others with it
        pg_server.start()
    name = pg_server.create_database()
    yield pg_server.url(name)
    deadline = time.monotonic() + 10
    while True:
        try:
            pg_server.drop_database(name)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            if not pg_server.running:
                pg_server.start()
            time.sleep(0.1)


@pytest.fixture
def pg_stores(pg_url: str) -> Iterator[Callable[..., Any]]:
    """Opens PostgresStores (keyword arguments passed on) on this test's database, all closed after it."""
    from batchbridge.core.store_postgres import PostgresStore

    opened: list[PostgresStore] = []

    def open_store(**kw: Any) -> PostgresStore:
        s = PostgresStore(pg_url, **kw)
        opened.append(s)
        return s

    yield open_store
    for s in opened:
        s.close()
