"""``[outbox] url`` and the store factory (``core/stores.py``): a path or ``sqlite:///`` opens the SQLite
outbox, ``postgresql://`` the PostgreSQL store (password never shown); routes needing the state store
are refused at load on a store without one; and ``serve --workers 2`` on PostgreSQL from the command
line delivers every event once."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from batchbridge.core.config import config_from_dict
from batchbridge.core.errors import ConfigError
from batchbridge.core.outbox import Outbox
from batchbridge.core.stores import destination_heads, open_store
from fault_tools import ServeProcess, processes, tencent_payloads, wait_until
from test_serve_workers import children, post_all, read_events

ROOT = Path(__file__).resolve().parent.parent


def test_a_path_or_sqlite_url_opens_the_sqlite_outbox(tmp_path: Path) -> None:
    for url in (str(tmp_path / "a.db"), f"sqlite://{tmp_path / 'b.db'}"):
        cfg = config_from_dict({"outbox": {"url": url, "lease": 5}})
        assert cfg.outbox.url is None and cfg.outbox.lease == 5
        store = open_store(cfg.outbox)
        try:
            assert isinstance(store, Outbox) and store.lease == 5
            assert Path(store.where).name in ("a.db", "b.db")
        finally:
            store.close()


def test_path_and_url_together_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"outbox\.url or outbox\.path"):
        config_from_dict({"outbox": {"url": "x.db", "path": "y.db"}})


def test_the_password_of_a_postgresql_url_is_never_shown() -> None:
    cfg = config_from_dict({"outbox": {"url": "postgresql://bridge:pa55w0rd-secret@db:5432/bb"}})
    assert cfg.outbox.url == "postgresql://bridge:pa55w0rd-secret@db:5432/bb"
    for shown in (cfg.outbox.where, repr(cfg), repr(cfg.outbox), str(cfg)):
        assert "pa55w0rd-secret" not in shown


def test_supersede_routes_on_a_store_without_state_are_refused_at_load() -> None:
    from batchbridge.core.store_kinds import state_refusal

    # both kinds of store hold the subject state (the PostgreSQL one since core/state_postgres.py)
    cfg = config_from_dict({"outbox": {"url": "postgresql://bridge:pa55w0rd-secret@db:5432/bb"},
                            "routes": [{"name": "latest", "to": "memory://x", "supersede": True}]})
    assert cfg.routes[0].supersede
    refused = state_refusal("other", ["latest"], "somewhere")
    assert refused is not None and "latest" in refused and "supersede" in refused


def test_inspecting_commands_do_not_create_an_outbox(tmp_path: Path) -> None:
    cfg = config_from_dict({"outbox": {"path": str(tmp_path / "none.db")}})
    with pytest.raises(ConfigError, match="no outbox here"):
        open_store(cfg.outbox, must_exist=True)
    assert not (tmp_path / "none.db").exists()


def test_the_bridge_runs_on_postgresql_from_the_command_line(pg_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(f'[[routes]]\nto = "file://{out}"\n\n[outbox]\nurl = "{pg_url}"\nlease = 2.0\n'
                   "backoff_initial = 0.05\nbackoff_max = 0.5\n\n[serve]\ndrain_timeout = 5\n")
    items = tencent_payloads(60, "pg")
    with processes() as started:
        serve = ServeProcess(cfg, tmp_path / "serve.log", extra=["--workers", "2"])
        started.append(serve)
        wait_until(lambda: len(children(serve.proc.pid)) == 2, 20, what="two workers")
        post_all(serve.url, items)
        wait_until(lambda: len(read_events(out)) >= len(items), 30, what="delivery")
        serve.signal(signal.SIGTERM)
        assert serve.wait(30) == 0, serve.log()
    assert sorted(e["id"] for e in read_events(out)) == sorted(i for _, i in items)
    # dlq and status open the same store through the factory
    status = subprocess.run([sys.executable, "-m", "batchbridge.core.cli", "status", "--outbox", pg_url],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert status.returncode == 0, status.stderr
    assert "0 event(s) pending, 0 dead letter(s)" in status.stdout
    dlq = subprocess.run([sys.executable, "-m", "batchbridge.core.cli", "dlq", "list", "--outbox", pg_url],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert dlq.returncode == 0, dlq.stderr
    cfg_obj = config_from_dict({"outbox": {"url": pg_url}})
    store = open_store(cfg_obj.outbox)
    try:
        assert destination_heads(store) == []
    finally:
        store.close()
