"""Running batchbridge as a service: configs refused at load, the ``check`` preflight, ``status``,
``/readyz`` and the backlog gauges, dead letters past ``max_pending_age`` and ``dlq replay --to``,
and the outbox watched while a real ``serve`` process runs (its files deleted, truncated, replaced,
reached through a link)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aws_servers import AwsServer
from batchbridge.core.bridge import Bridge
from batchbridge.core.config import config_from_dict
from batchbridge.core.errors import BackendError, ConfigError
from batchbridge.core.outbox import Outbox
from batchbridge.core.preflight import classify
from batchbridge.core.retry import ErrorCode
from pubsub_servers import PubSubServer, admin
from vendor_payloads import aws_event

CLI = str(Path(sys.executable).parent / "batchbridge")


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout, check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_endpoint() -> str:
    """An HTTP endpoint nothing listens on: connections are refused at once."""
    return f"http://127.0.0.1:{free_port()}"


def wait_for(cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    end = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def write_config(tmp: Path, body: str) -> Path:
    cfg = tmp / f"bridge-{uuid.uuid4().hex[:6]}.toml"
    cfg.write_text(body)
    return cfg


def body(i: int) -> bytes:
    return orjson.dumps(aws_event(jobId=f"job-{i:06d}", jobName=f"name-{i}"))


# --- 1. config validation at load --------------------------------------------------------------------


@pytest.mark.parametrize(("uri", "reason"), [
    ("sqs://not a queue?region=eu-west-1", "is not an SQS queue name"),
    ("file:///tmp/x.jsonl?mode=binary", "file:// stores structured CloudEvents only"),
    ("sns://bad/topic?region=eu-west-1", "is not an SNS topic name or ARN"),
    ("servicebus:///q/subscriptions/s", "publish to the topic 'q', not to one of its subscriptions"),
])
def test_every_adapter_check_runs_at_load(uri: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=r"<c>:routes\[0\]\.to") as caught:
        config_from_dict({"routes": [{"to": uri}]}, source="<c>")
    assert reason in str(caught.value)


@pytest.mark.parametrize(("uri", "reason"), [
    ("file://x.jsonl", "file:// URIs name a local path"),
    ("pubsub://projects/p/topics/batch", "a publisher URI names a topic: pubsub://PROJECT/TOPIC"),
])
def test_serve_relay_and_replay_refuse_a_bad_destination_naming_file_key_and_reason(
        tmp_path: Path, uri: str, reason: str) -> None:
    cfg = write_config(tmp_path, f'[[routes]]\nmatch = "batch.job.*"\nto = ["file://{tmp_path}/ok.jsonl", "{uri}"]\n'
                                 f'[outbox]\npath = "{tmp_path}/o.db"\n')
    published = cli("publish", "samples", "--to", uri)
    assert published.returncode == 2 and reason in published.stderr  # the reference: what publish --to says
    for args in (["serve", "--config", str(cfg), "--port", str(free_port())],
                 ["relay", "--from", "memory://in?create=true", "--config", str(cfg)],
                 ["dlq", "replay", "--config", str(cfg)],
                 ["check", "--config", str(cfg)]):
        done = cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert f"{cfg}:routes[0].to[1]" in done.stderr, done.stderr
        assert reason in done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "o.db").exists()  # nothing started


def test_unrouted_and_topics_uris_are_checked_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"<c>:unrouted.*file:// URIs name a local path"):
        config_from_dict({"unrouted": "file://x.jsonl"}, source="<c>")
    with pytest.raises(ConfigError, match=r"<c>:topics.t.*a publisher URI names a topic"):
        config_from_dict({"topics": {"t": "pubsub://projects/p/topics/t"}}, source="<c>")


def test_relay_refuses_a_source_that_cannot_be_subscribed(tmp_path: Path) -> None:
    done = cli("relay", "--from", "pubsub://p/just-a-topic", "--to", f"file://{tmp_path}/o.jsonl",
               "--outbox", str(tmp_path / "o.db"))
    assert done.returncode == 2
    assert "--from" in done.stderr and "a subscriber URI names a subscription" in done.stderr


# --- 1. the preflight -------------------------------------------------------------------------------


def test_check_reports_each_uri_on_real_backends(tmp_path: Path, moto_server: AwsServer,
                                                 pubsub_emulator: PubSubServer) -> None:
    queue = moto_server.queue()
    project = "bb-check"
    a = admin(pubsub_emulator.host, project)
    topic = f"t-{uuid.uuid4().hex[:8]}"
    a.create_topic(topic)
    try:
        good = [f"file://{tmp_path}/out/ok.jsonl", moto_server.uri("sqs", queue.name), "memory://somewhere",
                f"pubsub://{project}/{topic}?emulator_host={pubsub_emulator.host}"]
        missing_sqs = moto_server.uri("sqs", "no-such-queue")
        missing_topic = f"pubsub://{project}/no-such-topic?emulator_host={pubsub_emulator.host}"
        down = f"sqs://q?region=us-east-1&endpoint_url={closed_endpoint()}&max_attempts=1&connect_timeout=1"
        cfg = write_config(tmp_path, "".join(f'[[routes]]\nto = "{u}"\n' for u in good))
        done = cli("check", "--config", str(cfg), "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        rows = [json.loads(line) for line in done.stdout.splitlines()]
        assert [r["status"] for r in rows] == ["reachable"] * 4
        assert all(r["where"].startswith(f"{cfg}:routes[") for r in rows)

        bad = write_config(tmp_path, "".join(f'[[routes]]\nto = "{u}"\n' for u in
                                             [good[0], missing_sqs, missing_topic, down]))
        done = cli("check", "--config", str(bad))
        assert done.returncode == 1
        lines = done.stderr.splitlines()
        assert lines[0].startswith("ok ") and "reachable" in lines[0]
        assert lines[1].startswith("FAIL") and "entity missing" in lines[1] and "no-such-queue" in lines[1]
        assert lines[2].startswith("FAIL") and "entity missing" in lines[2] and "no-such-topic" in lines[2]
        assert lines[3].startswith("FAIL") and "unreachable" in lines[3]
        assert "1 of 4 URI(s) usable" in done.stderr
        assert "testing-secret" not in done.stderr
    finally:
        a.delete(topic=topic)
        a.close()


def test_check_says_permission_refused_for_a_read_only_place(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True,
                             check=False).returncode == 0 if shutil.which("mount") else False
    if not mounted:  # an unprivileged user: the directory's mode is what refuses
        ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("this user can write anywhere and may not mount a read-only file system")
        done = cli("check", "--to", f"file://{ro}/events.jsonl", "--json")
        assert done.returncode == 1
        row = json.loads(done.stdout)
        assert row["status"] == "permission refused", row
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(ro)], capture_output=True, check=False)
        else:
            ro.chmod(0o700)


def test_check_says_invalid_for_a_path_through_a_file(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("not a directory")
    for uri in (f"file://{tmp_path}/plain/events.jsonl", f"file://{tmp_path}/plain/sub/events.jsonl"):
        done = cli("check", "--to", uri, "--json")
        assert done.returncode == 1
        row = json.loads(done.stdout)
        assert row["status"] == "invalid", row


@pytest.mark.parametrize(("code", "status"), [
    (ErrorCode.NOT_FOUND, "entity missing"), (ErrorCode.PERMISSION_DENIED, "permission refused"),
    (ErrorCode.FAILED_PRECONDITION, "permission refused"), (ErrorCode.INVALID_ARGUMENT, "invalid"),
    (ErrorCode.UNAVAILABLE, "unreachable"), (ErrorCode.DEADLINE_EXCEEDED, "unreachable"),
    (ErrorCode.RESOURCE_EXHAUSTED, "unreachable"), (ErrorCode.INTERNAL, "unreachable"),
    (ErrorCode.CANCELED, "unreachable"), (ErrorCode.UNKNOWN, "unreachable"),
])
def test_check_status_follows_the_portable_code_not_the_wording(code: ErrorCode, status: str) -> None:
    # wording that a match on SDK text would read as refused, missing and unreachable at once
    reason = "AccessDeniedException: not authorized; queue does not exist; connection refused; timed out"
    assert classify(BackendError(reason, error_code=code, cause=OSError(reason))) == status


def test_check_of_a_relay_source(tmp_path: Path, moto_server: AwsServer) -> None:
    queue = moto_server.queue()
    done = cli("check", "--from", moto_server.uri("sqs", queue.name), "--to", f"file://{tmp_path}/o.jsonl")
    assert done.returncode == 0, done.stderr
    assert "subscriber" in done.stderr and "2 of 2 URI(s) usable" in done.stderr
    done = cli("check", "--from", moto_server.uri("sqs", "absent-source"), "--to", f"file://{tmp_path}/o.jsonl")
    assert done.returncode == 1 and "entity missing" in done.stderr


def test_serve_check_refuses_to_bind_when_a_destination_is_missing(tmp_path: Path, moto_server: AwsServer) -> None:
    port = free_port()
    cfg = write_config(tmp_path, f'[[routes]]\nto = "{moto_server.uri("sqs", "missing-q")}"\n'
                                 f'[outbox]\npath = "{tmp_path}/o.db"\n')
    done = cli("serve", "--config", str(cfg), "--port", str(port), "--check")
    assert done.returncode == 1
    assert "entity missing" in done.stderr and "not started" in done.stderr
    assert "http://" not in done.stderr.split("not started")[0].split("FAIL")[0]  # no banner: never bound


# --- a running serve ----------------------------------------------------------------------------------


class Serve:
    """``batchbridge serve`` in a subprocess, its stdout and stderr in one file."""

    def __init__(self, tmp: Path, config: Path, *extra: str, verbose: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"serve-{self.port}.log"
        self._fh = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        flags = ["-v"] if verbose else []
        self.proc = subprocess.Popen([CLI, *flags, "serve", "--config", str(config), "--port", str(self.port),
                                      *extra],
                                     stdout=self._fh, stderr=self._fh, start_new_session=True)
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def started(self) -> bool:
        assert self.proc.poll() is None, self.stderr()
        return "batchbridge serve: http://" in self.stderr()

    def wait_started(self) -> Serve:
        wait_for(self.started, 30, "serve to bind")
        return self

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def post(self, i: int) -> int:
        return self.client.post("/events", content=body(i)).status_code

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._fh.close()


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def start(config: Path, *extra: str, verbose: bool = False) -> Serve:
        s = Serve(tmp_path, config, *extra, verbose=verbose)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def _outbox_config(tmp: Path, to: str, extra: str = "") -> tuple[Path, Path]:
    db = tmp / "outbox.db"
    cfg = write_config(tmp, f'[[routes]]\nto = "{to}"\n[outbox]\npath = "{db}"\nbackoff_initial = 0.05\n'
                            f'backoff_max = 0.5\n{extra}')
    return cfg, db


def _damage(db: Path, how: str) -> None:
    if how == "deleted":
        db.unlink()
    elif how == "wal deleted":
        Path(f"{db}-wal").unlink()
    elif how == "truncated":
        os.truncate(db, 0)
    elif how == "replaced":
        other = db.with_name("other.db")
        shutil.copy(db, other)
        os.replace(other, db)
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["deleted", "wal deleted", "truncated", "replaced"])
def test_outbox_damaged_under_a_running_serve_stops_intake(tmp_path: Path, serving: Callable[..., Serve],
                                                           how: str) -> None:
    out = tmp_path / "out.jsonl"
    cfg, db = _outbox_config(tmp_path, f"file://{out}")
    s = serving(cfg).wait_started()
    assert [s.post(i) for i in range(20)] == [204] * 20
    assert s.client.get("/readyz").status_code == 200
    _damage(db, how)
    # the watcher notices within its interval; and a commit is never acknowledged into the wrong file
    wait_for(lambda: s.client.get("/readyz").status_code == 503, 5, "/readyz to turn false")
    started = time.monotonic()
    statuses = [s.post(100 + i) for i in range(10)]
    assert statuses == [503] * 10, statuses
    assert time.monotonic() - started < 5
    ready = s.client.get("/readyz").json()
    assert ready["ready"] is False and "outbox" in ready["reasons"][0]
    assert ("deleted" in ready["reasons"][0]) == (how in ("deleted", "wal deleted"))
    metrics = s.client.get("/metrics").text
    assert "batchbridge_outbox_writable 0.0" in metrics
    log = s.stderr()
    assert log.count("CRITICAL") == 1 and "intake stopped" in log, log


def test_outbox_damage_is_caught_before_the_commit_is_acknowledged(tmp_path: Path) -> None:
    """Between two watcher passes: the check before acknowledging a group refuses it."""
    db = tmp_path / "o.db"
    config = config_from_dict({"routes": [{"to": f"file://{tmp_path}/out.jsonl"}], "outbox": {"path": str(db)}})
    bridge = Bridge(config)
    try:
        bridge.start()
        assert bridge.handle(body(1)).ok
        db.unlink()
        from batchbridge.core.outbox import OutboxError

        with pytest.raises(OutboxError, match="was deleted"):
            bridge.handle(body(2))
    finally:
        bridge.stop()


@pytest.mark.parametrize("link", ["hard link", "symlink"])
def test_a_second_bridge_through_a_link_is_refused(tmp_path: Path, link: str) -> None:
    db = tmp_path / "o.db"
    first = Outbox(db)
    first.lock()
    other = tmp_path / "elsewhere" / "alias.db"
    other.parent.mkdir()
    (os.link if link == "hard link" else os.symlink)(db, other)
    second = Outbox(other)
    try:
        with pytest.raises(ConfigError, match="another running bridge"):
            second.lock()
    finally:
        second.close()
        first.close()
    third = Outbox(other)  # once the first let go, the link may be used
    third.lock()
    third.close()


def test_a_second_serve_through_a_hard_link_does_not_start(tmp_path: Path, serving: Callable[..., Serve]) -> None:
    cfg, db = _outbox_config(tmp_path, f"file://{tmp_path}/out.jsonl")
    serving(cfg).wait_started()
    link = tmp_path / "link.db"
    os.link(db, link)
    cfg2 = write_config(tmp_path, f'[[routes]]\nto = "file://{tmp_path}/out2.jsonl"\n[outbox]\npath = "{link}"\n')
    done = cli("serve", "--config", str(cfg2), "--port", str(free_port()), timeout=30)
    assert done.returncode == 2 and "another running bridge" in done.stderr, done.stderr


# --- 2. nothing stuck unseen ---------------------------------------------------------------------------


def test_status_readyz_and_gauges_show_a_stuck_destination(tmp_path: Path, serving: Callable[..., Serve]) -> None:
    down = f"sqs://q?region=us-east-1&endpoint_url={closed_endpoint()}&max_attempts=1&connect_timeout=1"
    cfg, db = _outbox_config(tmp_path, down, "[serve]\nready_max_failing = 1\ndrain_timeout = 0.2\n")
    s = serving(cfg).wait_started()
    assert [s.post(i) for i in range(5)] == [204] * 5
    wait_for(lambda: s.client.get("/readyz").status_code == 503, 15, "/readyz to report the failing destination")
    ready = s.client.get("/readyz").json()
    assert any("failing for" in r and "ready_max_failing" in r for r in ready["reasons"]), ready
    metrics = s.client.get("/metrics").text
    assert 'batchbridge_outbox_depth{destination="sqs://q' in metrics
    assert "batchbridge_backlog_oldest_age_seconds{" in metrics
    assert "batchbridge_destination_failing_seconds{" in metrics
    assert "batchbridge_outbox_writable 1.0" in metrics

    done = cli("status", "--config", str(cfg), "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["pending"] == 5
    (dest,) = doc["destinations"]
    assert dest["destination"].startswith("sqs://q") and dest["rows"] == 5
    assert dest["oldest_age_seconds"] > 0
    wait_for(lambda: json.loads(cli("status", "--outbox", str(db), "--json").stdout)["destinations"][0]["attempts"],
             15, "an attempt to be recorded")
    text = cli("status", "--outbox", str(db))
    assert "5 event(s) pending" in text.stdout and "last error:" in text.stdout, text.stdout


def test_status_without_an_outbox_says_so(tmp_path: Path) -> None:
    done = cli("status", "--outbox", str(tmp_path / "none.db"))
    assert done.returncode == 2 and "no outbox here" in done.stderr
    assert not (tmp_path / "none.db").exists()


def test_rows_past_max_pending_age_are_dead_lettered_and_replayed_elsewhere(tmp_path: Path) -> None:
    down = f"sqs://q?region=us-east-1&endpoint_url={closed_endpoint()}&max_attempts=1&connect_timeout=1"
    db = tmp_path / "o.db"
    config = config_from_dict({"routes": [{"to": down}],
                               "outbox": {"path": str(db), "max_pending_age": 1, "backoff_initial": 0.05,
                                          "backoff_max": 0.2}})
    with Bridge(config) as bridge:
        for i in range(3):
            assert bridge.handle(body(i)).ok
        wait_for(lambda: bridge.outbox.dead_letter_count() == 3, 15, "the rows to be dead-lettered")
        assert bridge.outbox.depth() == 0
        records = bridge.outbox.dead_letters()
    assert {r.destination for r in records} == {down}
    assert all(r.code == "pending_too_long" and "max_pending_age" in r.reason for r in records)
    assert all("last error" in r.reason for r in records)  # the destination's own error, kept
    out = tmp_path / "rescued.jsonl"
    done = cli("dlq", "replay", "--outbox", str(db), "--id", str(records[0].id), "--to", f"file://{out}")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [e["id"] for e in lines] == [records[0].event_id]
    left = cli("dlq", "list", "--outbox", str(db), "--json")
    assert len(left.stdout.splitlines()) == 2


def test_a_row_whose_uri_can_never_open_is_dead_lettered_with_its_destination(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    with Outbox(db) as ob:  # written by an older, unchecked config
        from batchbridge.core.outbox import OutboxRow

        ob.put([OutboxRow.of("file://x.jsonl", {"id": "e1", "type": "batch.job.succeeded"})])
    config = config_from_dict({"outbox": {"path": str(db)}})
    with Bridge(config) as bridge:
        wait_for(lambda: bridge.outbox.dead_letter_count() == 1, 10, "the row to be dead-lettered")
        (rec,) = bridge.outbox.dead_letters()
    assert rec.destination == "file://x.jsonl" and rec.code == "config_error" and "local path" in rec.reason


def test_dlq_purge_of_a_missing_id_exits_2(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    Outbox(db).close()
    done = cli("dlq", "purge", "--outbox", str(db), "--id", "42")
    assert done.returncode == 2 and "no dead letter with id 42" in done.stderr


# --- new-user mends ---------------------------------------------------------------------------------


TOKEN = "a-shared-token-0123456789"


def test_verbose_serve_with_a_query_token_logs_cleanly(tmp_path: Path, serving: Callable[..., Serve]) -> None:
    cfg = write_config(tmp_path, f'[[routes]]\nto = "file://{tmp_path}/o.jsonl"\n[outbox]\npath = "{tmp_path}/o.db"\n'
                                 f'[serve]\ntoken = "{TOKEN}"\n')
    s = serving(cfg, verbose=True).wait_started()
    assert s.client.post(f"/events?token={TOKEN}", content=body(1)).status_code == 204
    wait_for(lambda: "POST /events?token=" in s.stderr(), 10, "the access log line (uvicorn writes it to stdout)")
    log = s.stderr()
    assert "--- Logging error ---" not in log and "Traceback" not in log, log
    assert TOKEN not in log
    assert '"POST /events?token=*** HTTP/1.1" 204' in log
    # the banner comes once the port is bound, after uvicorn says it listens
    assert log.index("Uvicorn running on") < log.index("batchbridge serve: http://")


def test_dlq_and_status_do_not_need_the_token_variable(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    Outbox(db).close()
    cfg = write_config(tmp_path, f'[[routes]]\nto = "file://{tmp_path}/o.jsonl"\n[outbox]\npath = "{db}"\n'
                                 '[serve]\ntoken_env = "BB_TEST_UNSET_TOKEN_VAR"\n')
    assert "BB_TEST_UNSET_TOKEN_VAR" not in os.environ
    for args in (["dlq", "list", "--config", str(cfg)], ["status", "--config", str(cfg)]):
        done = cli(*args)
        assert done.returncode == 0, done.stderr
    done = cli("serve", "--config", str(cfg), "--port", str(free_port()))
    assert done.returncode == 2 and "BB_TEST_UNSET_TOKEN_VAR is not set" in done.stderr


def test_serve_without_routes_is_warned_about(tmp_path: Path, serving: Callable[..., Serve]) -> None:
    cfg = write_config(tmp_path, f'[outbox]\npath = "{tmp_path}/o.db"\n')
    s = serving(cfg).wait_started()
    assert "has no routes" in s.stderr() and "dropped" in s.stderr()


def test_version_and_defaults_in_help() -> None:
    done = cli("--version")
    assert done.returncode == 0 and done.stdout.startswith("batchbridge ")
    consume = cli("consume", "--help").stdout
    assert "(default: 5.0)" in " ".join(consume.split())


def test_a_relative_file_uri_is_refused_with_the_absolute_one_to_write(tmp_path: Path) -> None:
    done = subprocess.run([CLI, "publish", "samples", "--to", "file:ev.jsonl"], capture_output=True, text=True,
                          cwd=tmp_path, check=False)
    assert done.returncode == 2
    assert f"write file://{tmp_path}/ev.jsonl" in done.stderr and "file:///ev.jsonl" not in done.stderr
    assert not (tmp_path / "ev.jsonl").exists()


def test_publish_to_memory_says_it_lives_in_one_process() -> None:
    done = cli("publish", "samples", "--to", "memory://q")
    assert done.returncode == 0 and "lives inside one process" in done.stderr


def test_the_options_table_does_not_offer_mode_for_file() -> None:
    from batchbridge.core.registry import options_table

    (mode,) = [row for row in options_table().splitlines() if "| `mode` |" in row]
    assert "all but file://" in mode
    assert cli("publish", "samples", "--to", "file:///tmp/x.jsonl?mode=binary").returncode == 2


def test_publish_to_a_missing_pubsub_topic_says_it_once(pubsub_emulator: PubSubServer) -> None:
    done = cli("publish", "samples", "--to", f"pubsub://bb-check/absent-topic?emulator_host={pubsub_emulator.host}")
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert sum("does not exist" in line for line in lines) == 1, done.stderr
    assert any("more event(s) failed the same way (entity_not_found)" in line for line in lines)
    assert len(lines) <= 3, done.stderr


def test_a_wrongly_forced_provider_is_named_in_the_reason() -> None:
    from batchbridge.core.errors import InputError
    from batchbridge.core.normalizing import normalize

    tencent = Path(__file__).resolve().parent.parent / "core" / "samples" / "tencent-cmq-node-created.json"
    with pytest.raises(InputError, match="detection says this payload is from tencent, but the provider was forced "
                                         "to aws"):
        normalize(tencent.read_bytes(), provider="aws")
    done = cli("normalize", "--provider", "gcp", str(tencent.with_name("aws-eventbridge-job-succeeded.json")))
    assert done.returncode == 1 and "is from aws, but the provider was forced to gcp" in done.stderr


@pytest.mark.parametrize("required", [False, True])
def test_run_sh_goes_on_without_localstack_and_says_why(tmp_path: Path, required: bool) -> None:
    """``tests/run.sh`` in a copy of the tree whose LocalStack installer fails (no Python >= 3.12) and
    whose ``.venv/bin/python`` is a stand-in that records what it was asked to run."""
    root = Path(__file__).resolve().parent.parent
    (tmp_path / "tests").mkdir()
    shutil.copy(root / "tests" / "run.sh", tmp_path / "tests" / "run.sh")
    shutil.copy(root / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "localstack").mkdir()
    (tmp_path / "localstack" / "install-host-localstack.sh").write_text(
        'echo "error: LocalStack host mode needs Python >= 3.12 and none was found." >&2\nexit 1\n')
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\n')
    (venv / "python").chmod(0o755)
    env = {**os.environ, "BATCHBRIDGE_REQUIRE_LOCALSTACK": "1" if required else "0"}
    env.pop("BATCHBRIDGE_SKIP_LOCALSTACK", None)
    done = subprocess.run(["bash", str(tmp_path / "tests" / "run.sh"), "-q"], capture_output=True, text=True,
                          env=env, timeout=60, check=False)
    calls = (tmp_path / "calls").read_text()
    assert "needs Python >= 3.12" in done.stderr
    if required:
        assert done.returncode == 1 and "LocalStack is required" in done.stderr
        assert "-m pytest" not in calls
    else:
        assert done.returncode == 0, done.stderr
        assert "the @localstack tests will be skipped" in done.stderr and "Python >= 3.12" in done.stderr
        # two phases: everything but the @solo tests on the workers, then the @solo tests alone
        assert calls.count("-m pytest -q") == 2, calls


def test_run_sh_installs_only_when_pyproject_changes(tmp_path: Path) -> None:
    """A rerun of ``tests/run.sh`` goes straight to pytest; a changed ``pyproject.toml`` (new dependencies,
    entry points) or ``BATCHBRIDGE_REINSTALL=1`` installs again."""
    root = Path(__file__).resolve().parent.parent
    (tmp_path / "tests").mkdir()
    shutil.copy(root / "tests" / "run.sh", tmp_path / "tests" / "run.sh")
    shutil.copy(root / "pyproject.toml", tmp_path / "pyproject.toml")
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    calls = tmp_path / "calls"
    (venv / "python").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (venv / "python").chmod(0o755)

    def run(**extra: str) -> list[str]:
        calls.write_text("")
        env = {k: v for k, v in os.environ.items() if k != "BATCHBRIDGE_REINSTALL"}
        env.update(BATCHBRIDGE_SKIP_LOCALSTACK="1", **extra)
        done = subprocess.run(["bash", str(tmp_path / "tests" / "run.sh"), "-q"], capture_output=True,
                              text=True, env=env, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return [line for line in calls.read_text().splitlines() if "pip install" in line]

    assert len(run()) == 2  # pip itself, then the package with [dev]
    assert run() == []
    with (tmp_path / "pyproject.toml").open("a") as f:
        f.write("\n# a change\n")
    assert len(run()) == 2
    assert run() == []
    assert len(run(BATCHBRIDGE_REINSTALL="1")) == 2


def test_metrics_answer_when_the_outbox_cannot_be_read(tmp_path: Path) -> None:
    """Regression: a scrape after the outbox became unreadable (its WAL deleted under a running serve)
    answered 500; the figures read from the outbox are left out and the outbox is flagged unwritable."""
    from batchbridge.core.serve import create_app
    from uvicorn_thread import run_uvicorn

    out = tmp_path / "out.jsonl"
    bridge = Bridge(config_from_dict({"routes": [{"to": f"file://{out}"}],
                                      "outbox": {"path": str(tmp_path / "outbox.db")}}))
    url, stop = run_uvicorn(create_app(bridge))
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            before = client.get("/metrics")
            assert before.status_code == 200 and "batchbridge_outbox_writable 1.0" in before.text
            bridge.outbox.close()  # every read of the outbox now fails (OutboxError)
            r = client.get("/metrics")
            assert r.status_code == 200, r.text
            assert "batchbridge_outbox_writable 0.0" in r.text
            assert "batchbridge_events_received" in r.text
    finally:
        stop()
        bridge.stop()
