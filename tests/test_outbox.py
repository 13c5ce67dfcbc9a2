"""The SQLite outbox and dead-letter store, and the bridge's publisher loop on top of it."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from batchbridge.adapters import memory
from batchbridge.core import registry
from batchbridge.core.bridge import Bridge
from batchbridge.core.config import config_from_dict
from batchbridge.core.driver import Message
from batchbridge.core.errors import ConfigError
from batchbridge.core.outbox import DeadLetter, Outbox, OutboxError, OutboxRow
from batchbridge.core.registry import BackendURI
from vendor_payloads import alibaba_job, compact, tencent_element, tencent_message

# --- a controllable backend: its outage is switched on and off by the test -------------------------------


class _Switch:
    def __init__(self) -> None:
        self.down = False
        self.sent: list[bytes] = []
        self.lock = threading.Lock()


SWITCHES: dict[str, _Switch] = {}


class _SwitchPublisher:
    attribute_prefix = "ce-"
    max_attributes = 64
    max_batch_count = 50
    max_batch_bytes = 1 << 20
    max_message_bytes = 1 << 20

    def __init__(self, uri: BackendURI) -> None:
        self.switch = SWITCHES.setdefault(uri.name, _Switch())
        if self.switch.down:
            raise ConnectionRefusedError("switch is down")

    def send_batch(self, messages: Sequence[Message]) -> list[BaseException | None]:
        if self.switch.down:
            raise ConnectionRefusedError("switch is down")
        with self.switch.lock:
            self.switch.sent += [m.body for m in messages]
        return [None] * len(messages)

    def is_retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, ConnectionError)

    def close(self) -> None:
        pass


class _SwitchBackend:
    schemes = ("switch",)
    extra = ""
    forms = ("switch://NAME",)
    options = ()

    def open_publisher(self, uri: BackendURI) -> _SwitchPublisher:
        return _SwitchPublisher(uri)


@pytest.fixture(autouse=True)
def switch_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # registered for this test only: the scheme must not leak into other tests' view of the registry
    monkeypatch.setattr(registry, "_registered", {**registry._registered, "switch": _SwitchBackend()})
    monkeypatch.setattr(registry, "_loaded", dict(registry._loaded))
    SWITCHES.clear()
    memory.reset()
    yield
    SWITCHES.clear()


def config(tmp_path: Path, routes: list[dict[str, Any]], **top: Any) -> Any:
    top.setdefault("outbox", {})
    top["outbox"].setdefault("path", str(tmp_path / "outbox.db"))
    top["outbox"].setdefault("backoff_initial", 0.05)
    top["outbox"].setdefault("backoff_max", 0.2)
    return config_from_dict({"routes": routes, **top})


def tencent(name: str = "JOB_SUCCEED", job: str = "job-1") -> bytes:
    return compact(tencent_message(tencent_element(name, JobId=job)))


def wait_for(cond: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


# --- the store ------------------------------------------------------------------------------------------


def test_rows_survive_reopen_and_settle_atomically(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as ob:
        ob.put([OutboxRow("memory://a", f"id{i}", "batch.job.failed", b'{"n":%d}' % i) for i in range(5)]
               + [OutboxRow("memory://b", "idb", None, b"{}")])
    assert (path.stat().st_mode & 0o777) == 0o600
    with Outbox(path) as ob:  # a restart resumes with what is left
        assert ob.depths() == {"memory://a": 5, "memory://b": 1}
        rows = ob.fetch("memory://a", 3)
        assert [r.event_id for r in rows] == ["id0", "id1", "id2"]
        err = DeadLetter("publish", "outbox", "message_too_large", "too big", rows[2].body, "q",
                         destination="memory://a", event_id="id2")
        ob.settle([rows[0].seq], [(rows[1].seq, "backend_error: down")], [(rows[2].seq, err)])
        left = ob.fetch("memory://a", 10)
        assert [(r.event_id, r.attempts) for r in left] == [("id1", 1), ("id3", 0), ("id4", 0)]
        (dl,) = ob.dead_letters()
        assert (dl.stage, dl.code, dl.reason, dl.where, dl.event_id, dl.payload) == (
            "publish", "message_too_large", "too big", "q", "id2", b'{"n":2}')


def test_wal_and_full_sync_for_intake(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as ob:
        mode, sync = ob._committer.submit(lambda c: (c.execute("PRAGMA journal_mode").fetchone()[0],
                                                     c.execute("PRAGMA synchronous").fetchone()[0])).result()
        assert (mode, sync) == ("wal", 2)  # 2 = FULL
    with Outbox(tmp_path / "n.db", synchronous="normal") as ob:
        assert ob._committer.submit(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]).result() == 1


def test_a_shared_writer_is_acknowledged_only_once_its_wal_is_synced(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker of ``serve --workers N`` (``share_writer``), ``synchronous = "full"``: the COMMIT itself
    does not fsync (the file's one write lock is not held for it); the committer fdatasyncs the WAL
    after it and only then resolves the request. With ``normal`` nothing is synced."""
    synced: list[tuple[str, bool]] = []
    real = os.fdatasync
    pending: list[Any] = []

    def spy(fd: int) -> None:
        real(fd)
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), all(f.done() for f in pending)))

    monkeypatch.setattr(os, "fdatasync", spy)
    for name, level in (("o.db", "full"), ("n.db", "normal")):
        with Outbox(tmp_path / name, synchronous=level) as ob:
            ob.share_writer()
            sync = ob._committer.submit(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]).result()
            assert sync == 1  # NORMAL: with full, the sync is the committer's
            synced.clear()
            pending[:] = [ob.submit([OutboxRow("memory://a", "e1", None, b"{}")])]
            pending[0].result()
            expected = [(str(tmp_path / "o.db-wal"), False)] if level == "full" else []
            assert synced == expected  # synced before it was acknowledged; normal: at the next checkpoint


def test_a_shared_writer_refuses_intake_when_the_wal_cannot_be_synced(tmp_path: Path) -> None:
    """A WAL that is gone after the COMMIT cannot vouch for it: the request is refused (retryable), not
    acknowledged -- even without the file watch that a running bridge adds (``Outbox.watch``)."""
    with Outbox(tmp_path / "o.db") as ob:
        ob.share_writer()
        ob.put([OutboxRow("memory://a", "e1", None, b"{}")])
        wal = tmp_path / "o.db-wal"
        os.rename(wal, tmp_path / "old-wal")
        wal.write_bytes(b"")  # another file under the WAL's name: SQLite still writes the old one
        with pytest.raises(OutboxError, match=r"WAL could not be made durable.*replaced") as caught:
            ob.put([OutboxRow("memory://a", "e2", None, b"{}")])
        assert caught.value.retryable
        os.unlink(wal)
        with pytest.raises(OutboxError, match="WAL could not be made durable"):
            ob.put([OutboxRow("memory://a", "e3", None, b"{}")])


def test_concurrent_intake_is_group_committed(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as ob:
        futures = [ob.submit([OutboxRow("memory://a", str(i), None, b"{}")]) for i in range(400)]
        for f in futures:
            f.result()
        commits, requests = ob.group_commit_stats
        assert requests == 400 and commits < 400 / 4, (commits, requests)
        assert ob.depth() == 400


def test_requests_that_come_while_a_group_waits_for_the_write_lock_join_it(tmp_path: Path) -> None:
    """Another writer (a delivery thread, another worker of ``serve --workers N``) holds the file's write
    lock: the group the committer took waits for it, and what is submitted meanwhile commits with that
    group -- one transaction, one fsync -- rather than queueing for a turn of its own."""
    with Outbox(tmp_path / "o.db") as ob:
        with ob._write_lock:
            first = ob.submit([OutboxRow("memory://a", "first", None, b"{}")])
            deadline = time.monotonic() + 10
            while ob._committer._queue:  # taken: the committer now waits for the lock
                assert time.monotonic() < deadline, "the committer did not take the first request"
                time.sleep(0.005)
            later = [ob.submit([OutboxRow("memory://a", str(i), None, b"{}")]) for i in range(9)]
            assert not first.done()
        seqs = [first.result().seqs[0]] + [f.result().seqs[0] for f in later]
        assert ob.group_commit_stats == (1, 10)
        assert seqs == sorted(seqs)  # in the order they were submitted
        assert [p.event_id for p in ob.fetch("memory://a", 20)] == ["first"] + [str(i) for i in range(9)]


def test_a_failing_request_does_not_sink_its_group(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as ob:
        def boom(conn: Any) -> None:
            conn.execute("INSERT INTO outbox (destination, body, created) VALUES ('memory://x', x'00', 0)")
            raise RuntimeError("bad request")

        bad = ob._committer.submit(boom)
        good = ob.submit([OutboxRow("memory://a", "ok", None, b"{}")])
        assert good.result().dead_ids == []
        with pytest.raises(Exception, match="bad request"):
            bad.result()
        assert ob.depths() == {"memory://a": 1}


def test_dead_letters_keep_raw_bytes_and_scrub_secrets(tmp_path: Path) -> None:
    raw = b"\xff\xfe not utf-8 \x00"
    with Outbox(tmp_path / "o.db") as ob:
        (dl_id,) = ob.put([], [DeadLetter("intake", "http", "malformed_payload",
                                          "bad at sqs://q?aws_secret_access_key=topsecretvalue", raw, "$.x")]).dead_ids
        rec = ob.dead_letter(dl_id)
        assert rec is not None and rec.payload == raw
        assert "topsecretvalue" not in rec.reason
        assert ob.purge([dl_id, 999]) == 1 and ob.dead_letter_count() == 0


# --- the bridge on top of it -----------------------------------------------------------------------------


def test_acknowledged_means_committed(tmp_path: Path) -> None:
    cfg = config(tmp_path, [{"to": "switch://a"}])
    bridge = Bridge(cfg)  # not started: nothing publishes
    result = bridge.handle(tencent(), source="t")
    assert result.ok and result.events == 1 and result.deliveries == 1
    bridge.stop()
    with Outbox(cfg.outbox.path) as ob:  # another process would see it
        (row,) = ob.fetch("switch://a", 10)
        assert orjson.loads(row.body)["id"] == result.event_ids[0]


def test_undecodable_input_is_dead_lettered_with_reason(tmp_path: Path) -> None:
    with Bridge(config(tmp_path, [{"to": "switch://a"}])) as bridge:
        result = bridge.handle(b'{"Events": [{"EventName": "JOB_FAILED"', source="http")
        assert not result.ok and result.error is not None and result.events == 0
        (dl_id,) = result.dead_letter_ids
        rec = bridge.outbox.dead_letter(dl_id)
        assert rec is not None
        assert (rec.stage, rec.code, rec.source) == ("intake", result.error.code, "http")
        assert rec.payload == b'{"Events": [{"EventName": "JOB_FAILED"' and rec.reason == result.error.reason
        assert bridge.stats.snapshot()["rejected"] == {result.error.code: 1}


def test_each_destination_independently(tmp_path: Path) -> None:
    SWITCHES["down"] = _Switch()
    SWITCHES["down"].down = True
    with Bridge(config(tmp_path, [{"to": ["switch://up", "switch://down"]}])) as bridge:
        ids = [bridge.handle(tencent(job=f"job-{i}")).event_ids[0] for i in range(20)]
        wait_for(lambda: len(SWITCHES["up"].sent) == 20)
        wait_for(lambda: bridge.outbox.depths() == {"switch://down": 20})  # sent, then deleted
        assert bridge.stats.snapshot()["failed"].get("switch://down", 0) > 0
        SWITCHES["down"].down = False  # the outage ends: everything arrives, nothing twice
        assert bridge.drain(10)
        got = [orjson.loads(b)["id"] for b in SWITCHES["down"].sent]
        assert sorted(got) == sorted(ids)
        assert sorted(orjson.loads(b)["id"] for b in SWITCHES["up"].sent) == sorted(ids)


def test_restart_resumes_where_it_stopped(tmp_path: Path) -> None:
    cfg = config(tmp_path, [{"to": "switch://q"}])
    SWITCHES["q"] = _Switch()
    SWITCHES["q"].down = True
    bridge = Bridge(cfg).start()
    ids = {bridge.handle(tencent(job=f"job-{i}")).event_ids[0] for i in range(10)}
    assert not bridge.drain(0.3)
    bridge.stop()
    SWITCHES["q"].down = False
    with Bridge(cfg) as again:
        assert again.drain(10)
    assert {orjson.loads(b)["id"] for b in SWITCHES["q"].sent} == ids


def test_permanent_refusal_goes_to_dead_letters(tmp_path: Path) -> None:
    small = "memory://small?max_bytes=600"
    with Bridge(config(tmp_path, [{"to": [small, "memory://big"]}])) as bridge:
        result = bridge.handle(tencent())
        assert bridge.drain(10)
        (rec,) = bridge.outbox.dead_letters()
        assert (rec.stage, rec.code, rec.destination, rec.event_id) == (
            "publish", "message_too_large", small, result.event_ids[0])
        assert orjson.loads(rec.payload)["id"] == result.event_ids[0]
        assert memory.depth("big") == 1
        assert bridge.stats.snapshot()["dead_lettered"] == {"publish": 1}


def test_second_publisher_on_one_outbox_is_refused(tmp_path: Path) -> None:
    cfg = config(tmp_path, [{"to": "memory://a"}])
    with Bridge(cfg):
        other = Bridge(cfg)
        with pytest.raises(ConfigError, match="already publishes"):
            other.start()
        other.stop()


def test_unrouted_drop_counts_and_deadletter_keeps(tmp_path: Path) -> None:
    with Bridge(config(tmp_path, [{"match": "JobFailed", "to": "memory://f"}])) as bridge:
        r = bridge.handle(tencent("JOB_RUNNING"))
        assert r.ok and r.unrouted == 1 and r.deliveries == 0 and r.dead_letter_ids == []
        assert bridge.stats.snapshot()["unrouted_dropped"] == 1
        assert bridge.outbox.dead_letter_count() == 0
    with Bridge(config(tmp_path / "2", [{"match": "JobFailed", "to": "memory://f"}],
                       unrouted="deadletter")) as bridge:
        r = bridge.handle(tencent("JOB_RUNNING"))
        (dl_id,) = r.dead_letter_ids
        rec = bridge.outbox.dead_letter(dl_id)
        assert rec is not None and rec.stage == "unrouted" and rec.code == "unrouted"
        assert orjson.loads(rec.payload)["id"] == r.event_ids[0]


def test_replay(tmp_path: Path) -> None:
    path = str(tmp_path / "o.db")
    strict = config(tmp_path, [{"match": "JobFailed", "to": "memory://f"}], unrouted="deadletter",
                    outbox={"path": path})
    with Bridge(strict) as bridge:
        bad = bridge.handle(b"<not-a-notification/>").dead_letter_ids[0]
        unrouted = bridge.handle(compact(alibaba_job("OnJobRunning"))).dead_letter_ids[0]
        # replaying what still fails keeps it, with the attempt counted and the same id
        assert bridge.replay(bad).error is not None and bridge.replay(unrouted).dead_letter_ids == [unrouted]
        rec = bridge.outbox.dead_letter(bad)
        assert rec is not None and rec.attempts == 2
        rec = bridge.outbox.dead_letter(unrouted)
        assert rec is not None and rec.attempts == 2
    # with a route for it, the unrouted event goes out; the bad payload stays
    wider = config(tmp_path, [{"to": "memory://all"}], outbox={"path": path})
    with Bridge(wider) as bridge:
        result = bridge.replay(unrouted)
        assert result.ok and result.deliveries == 1
        assert bridge.drain(10) and memory.depth("all") == 1
        assert [r.id for r in bridge.outbox.dead_letters()] == [bad]
        with pytest.raises(ConfigError, match="no dead letter"):
            bridge.replay(12345)


def test_publish_dead_letter_replays_to_its_destination_only(tmp_path: Path) -> None:
    cfg = config(tmp_path, [{"to": ["memory://one", "memory://two?max_bytes=600"]}])
    with Bridge(cfg) as bridge:
        bridge.handle(tencent())
        assert bridge.drain(10)
        (rec,) = bridge.outbox.dead_letters()
        assert memory.depth("one") == 1
    # replayed, the event goes back only to the destination that refused it
    bridge = Bridge(cfg)  # not publishing yet, so the outbox can be looked at
    assert bridge.replay(rec.id).deliveries == 1
    assert bridge.outbox.depths() == {"memory://two?max_bytes=600": 1}
    assert bridge.outbox.dead_letter_count() == 0
    bridge.start()
    assert bridge.drain(10)  # still too large: refused again, and nothing re-sent to memory://one
    bridge.stop()
    assert memory.depth("one") == 1
    with Outbox(cfg.outbox.path) as ob:
        (again,) = ob.dead_letters()
        assert again.code == "message_too_large" and again.event_id == rec.event_id


# --- the command line ----------------------------------------------------------------------------------


def test_dlq_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from batchbridge.core.cli import main

    outbox = str(tmp_path / "o.db")
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(f'unrouted = "deadletter"\n[outbox]\npath = "{outbox}"\n'
                   '[[routes]]\nmatch = "JobFailed"\nto = "memory://failed"\n')
    with Bridge(config_from_dict({"unrouted": "deadletter", "outbox": {"path": outbox}})) as bridge:
        bad = bridge.handle(b"\xffnot an event", source="http").dead_letter_ids[0]
        failed = bridge.handle(tencent("JOB_FAILED")).dead_letter_ids[0]
    capsys.readouterr()
    assert main(["dlq", "list", "--outbox", outbox, "--json", "--payload"]) == 0
    rows = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["id"], r["stage"]) for r in rows] == [(bad, "intake"), (failed, "unrouted")]
    assert rows[0]["payload_base64"] and rows[0]["error"] == "unrecognized_format"
    assert main(["dlq", "list", "--config", str(cfg)]) == 0
    text = capsys.readouterr()
    assert f"#{bad} [intake] unrecognized_format" in text.out and "2 in the dead-letter store" in text.err
    # replaying with the config's routes sends the failed job out and keeps the garbage
    assert main(["dlq", "replay", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert f"#{bad}: still failing" in err and f"#{failed}: 1 event(s) back in the outbox" in err
    assert "published" in err and memory.depth("failed") == 1
    assert main(["dlq", "purge", "--outbox", outbox, "--id", str(bad)]) == 0
    with Outbox(outbox) as ob:
        assert ob.dead_letter_count() == 0 and ob.depth() == 0
    assert main(["dlq", "list", "--outbox", str(tmp_path / "missing.db")]) == 2
    assert "no outbox" in capsys.readouterr().err


def test_demo_command(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from batchbridge.core.cli import main

    # the demo must not need the serve extra
    for name in ("starlette", "uvicorn", "prometheus_client", "cryptography"):
        monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / "out" / "events.jsonl"
    assert main(["demo", "--out", str(out), "--show", "1"]) == 0
    text = capsys.readouterr().out
    events = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert events and f"{len(events)} events in {out}" in text and "outbox drained" in text
    assert all(e["dataschema"] == "urn:batchbridge:batch-event:1" for e in events)
    assert '"specversion": "1.0"' in text
    # a second run appends, and reports only what it added
    assert main(["demo", "--out", str(out), "--show", "0"]) == 0
    assert f"{len(events)} events in {out} from this run" in capsys.readouterr().out
    assert len(out.read_bytes().splitlines()) == 2 * len(events)


# --- group commits in one statement, asyncio waiters, hand-over in memory -------------------------------


def test_rows_of_a_group_get_consecutive_seqs_across_statements(tmp_path: Path) -> None:
    seen: list[list[tuple[int, OutboxRow]]] = []
    with Outbox(tmp_path / "o.db") as ob:
        ob.on_commit(seen.append)
        first = ob.put([OutboxRow("memory://a", "x", None, b"{}")])
        rows = [OutboxRow("memory://a", f"id{i}", None, b'{"n":%d}' % i) for i in range(1234)]  # > 2 statements
        futures = [ob.submit(rows[i:i + 100]) for i in range(0, len(rows), 100)]
        seqs = [s for f in futures for s in f.result().seqs]
        assert seqs == list(range(first.seqs[0] + 1, first.seqs[0] + 1 + len(rows)))
        fetched = ob.fetch("memory://a", 2000)[1:]
        assert [(p.seq, p.event_id, p.body) for p in fetched] == [
            (s, r.event_id, r.body) for s, r in zip(seqs, rows, strict=True)]
        # the listener saw every committed row once, in seq order, with the row objects themselves
        committed = [item for group in seen for item in group]
        assert [s for s, _ in committed] == [first.seqs[0], *seqs]
        assert [r for _, r in committed][1:] == rows


def test_a_failing_request_leaves_the_listener_only_what_was_committed(tmp_path: Path) -> None:
    seen: list[tuple[int, OutboxRow]] = []
    with Outbox(tmp_path / "o.db") as ob:
        ob.on_commit(seen.extend)
        gate = threading.Event()
        blocker = ob._committer.submit(lambda conn: gate.wait(5))  # holds the committer: the next three make one group

        def boom(conn: Any) -> None:
            raise RuntimeError("bad request")

        good1 = ob.submit([OutboxRow("memory://a", "g1", None, b"{}")])
        bad = ob._committer.submit(boom)
        good2 = ob.submit([OutboxRow("memory://a", "g2", None, b"{}")])
        gate.set()
        blocker.result()
        with pytest.raises(Exception, match="bad request"):
            bad.result()
        assert [r.event_id for _, r in seen] == ["g1", "g2"]
        assert [s for s, _ in seen] == good1.result().seqs + good2.result().seqs
        assert ob.depth() == 2


def test_asyncio_waiters_of_a_group_are_woken_together(tmp_path: Path) -> None:
    import asyncio

    async def main(ob: Outbox) -> list[Any]:
        loop = asyncio.get_running_loop()
        calls = 0
        original = loop.call_soon_threadsafe

        def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            return original(*args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        gate = threading.Event()
        held = ob._committer.submit(lambda conn: gate.wait(5))
        waiters = [ob.asubmit([OutboxRow("memory://a", str(i), None, b"{}")]) for i in range(50)]
        gate.set()
        done = await asyncio.gather(*waiters)
        held.result()
        assert calls <= 2, calls  # one per group, not one per request
        return done

    with Outbox(tmp_path / "o.db") as ob:
        done = asyncio.run(main(ob))
        assert [len(d.seqs) for d in done] == [1] * 50 and ob.depth() == 50


def test_rows_from_another_writer_and_failed_rows_are_still_read(tmp_path: Path) -> None:
    cfg = config(tmp_path, [{"to": "switch://w?concurrency=1"}])
    SWITCHES["w"] = _Switch()
    with Bridge(cfg) as bridge:
        first = bridge.handle(tencent(job="job-a")).event_ids[0]
        wait_for(lambda: len(SWITCHES["w"].sent) == 1)
        # another process (``dlq replay``, a second intake) commits through its own connection
        with Outbox(cfg.outbox.path) as other:
            other.put([OutboxRow("switch://w?concurrency=1", "from-elsewhere", None, orjson.dumps(
                {**orjson.loads(SWITCHES["w"].sent[0]), "id": "from-elsewhere"}))])
        wait_for(lambda: len(SWITCHES["w"].sent) == 2, timeout=5)
        # an outage: the rows handed over fail, stay in the outbox and go out in order, once, after it
        SWITCHES["w"].down = True
        later = [bridge.handle(tencent(job=f"job-{i}")).event_ids[0] for i in range(30)]
        time.sleep(0.3)
        SWITCHES["w"].down = False
        assert bridge.drain(10)
        got = [orjson.loads(b)["id"] for b in SWITCHES["w"].sent]
        assert got == [first, "from-elsewhere", *later]


def test_a_full_disk_with_a_wal_that_cannot_be_copied_back_recovers_through_the_room_file(tmp_path: Path) -> None:
    """Regression (seen under CPU load): the WAL held pages the database file did not have yet and the
    disk filled to the last byte; the checkpoint then needed room to grow the file, so the WAL could
    never be truncated and every delete failed "database or disk is full" for good. The room file kept
    beside the outbox is given up for that checkpoint, and the delivered rows are deleted."""
    from batchbridge.core.outbox_disk import _make_room, room_file
    from test_faults_process import small_disk

    with small_disk(tmp_path, "2m") as disk:
        if disk is None:
            pytest.fail("this test needs a small tmpfs (mount); CI runs as root")
        ob = Outbox(disk / "outbox.db", reserve_bytes=512 * 1024)
        try:
            assert Path(room_file(ob.path)).stat().st_size == 128 * 1024
            body = b'{"pad":"%s"}' % (b"x" * 3000)
            seqs = ob.put([OutboxRow("memory://a", f"e{i}", None, body) for i in range(100)]).seqs
            assert _make_room(ob._conn())  # copied into the file: the WAL is empty
            # a few more rows: their pages are only in the WAL, and the database file must grow for them
            seqs += ob.put([OutboxRow("memory://a", f"f{i}", None, body) for i in range(8)]).seqs
            filler = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)  # someone fills the disk
            with contextlib.suppress(OSError):
                while True:
                    os.write(filler, b"\0" * 4096)
            os.close(filler)
            ob.settle(delivered=seqs)
            assert ob.depth() == 0
            assert not Path(room_file(ob.path)).exists()  # given up for the checkpoint
        finally:
            ob.close()


def test_a_worker_of_serve_workers_shares_the_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The outbox lock inherited from a ``serve --workers N`` supervisor makes the outbox a shared
    writer (its WAL synced after the write lock); one locked alone keeps the COMMIT's own fsync."""
    from batchbridge.core.outbox_disk import LOCK_FD_ENV
    from batchbridge.core.serve_workers import lock_outbox

    fd = lock_outbox(tmp_path / "w.db")
    try:
        monkeypatch.setenv(LOCK_FD_ENV, str(fd))
        with Outbox(tmp_path / "w.db") as ob:
            ob.lock()
            assert ob._committer.submit(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]).result() == 1
            assert ob.put([OutboxRow("memory://a", "e1", None, b"{}")]).seqs == [1]
    finally:
        os.close(fd)
    monkeypatch.delenv(LOCK_FD_ENV)
    with Outbox(tmp_path / "alone.db") as ob:
        ob.lock()
        assert ob._committer.submit(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]).result() == 2
