"""The invariants of ``core/delivery.py`` (its module docstring), on real SQLite outbox files: no row
published twice by one process, order per key, read-back after failures and restarts, the hand-over
cache -- and several delivery processes (here: store objects, each one claimant) sharing one outbox."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from batchbridge.core.config import OutboxSettings
from batchbridge.core.delivery import Delivery
from batchbridge.core.errors import BackendError, MalformedPayloadError
from batchbridge.core.metrics import Stats
from batchbridge.core.outbox import Outbox, OutboxError, OutboxRow
from batchbridge.core.outcomes import PublishResult
from batchbridge.core.retry import ErrorCode

DEST = "memory://delivery-test"


def event(job: str, n: int) -> dict[str, Any]:
    return {"specversion": "1.0", "id": f"{job}-{n}", "type": "batch.job.succeeded", "source": "t",
            "data": {"provider": "aws", "kind": "job", "job": {"id": job}, "n": n}}


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class Recorder:
    """A destination: records what it was sent (the event objects themselves), fails on demand."""

    def __init__(self) -> None:
        self.sent: list[Mapping[str, Any]] = []
        self.lock = threading.Lock()
        #: event ids to refuse once, retryably
        self.fail_once: set[str] = set()
        self.down = False
        self.delay = 0.0

    def opener(self, destination: str) -> Recorder:
        return self

    def publish(self, events: Iterable[Mapping[str, Any]]) -> list[PublishResult]:
        """As :class:`~batchbridge.core.publisher.Publisher` does: once an event of a job failed, the
        job's later events in the call are held back (failed) too."""
        out = []
        held: set[str] = set()
        time.sleep(self.delay)
        for e in events:
            key = e["data"]["job"]["id"]
            with self.lock:
                if self.down or e["id"] in self.fail_once or key in held:
                    self.fail_once.discard(e["id"])
                    held.add(key)
                    out.append(PublishResult(e["id"], BackendError("busy", error_code=ErrorCode.UNAVAILABLE)))
                    continue
                self.sent.append(e)
            out.append(PublishResult(e["id"], None))
        return out

    def close(self) -> None:
        pass

    def ids(self) -> list[str]:
        with self.lock:
            return [str(e["id"]) for e in self.sent]


SETTINGS = OutboxSettings(batch_size=7, backoff_initial=0.01, backoff_max=0.05)


def delivery(store: Outbox, dest: Recorder, settings: OutboxSettings = SETTINGS) -> Delivery:
    d = Delivery(store, settings, Stats(), opener=dest.opener)  # type: ignore[arg-type]
    store.on_commit(d.offer)
    return d


def test_rows_committed_here_go_out_once_in_order_with_their_parsed_events(tmp_path: Path) -> None:
    dest = Recorder()
    with Outbox(tmp_path / "o.db") as store:
        d = delivery(store, dest)
        d.start([DEST])
        rows = [OutboxRow.of(DEST, event(f"j{n % 3}", n)) for n in range(60)]
        for r in rows:
            store.put([r])
        wait_for(lambda: len(dest.sent) == 60 and store.depth() == 0, what="delivery")
        assert d.stop()
    assert dest.ids() == [r.event_id for r in rows]
    # the hand-over: the published objects are the committed ones, not parses of the stored bodies (a
    # worker claiming in the instant between a commit and its listener parses that row: best effort)
    assert sum(sent is r.event for sent, r in zip(dest.sent, rows, strict=True)) >= 50


def test_a_retried_row_goes_out_before_the_rows_of_its_key_behind_it(tmp_path: Path) -> None:
    dest = Recorder()
    dest.fail_once = {"a-1"}
    with Outbox(tmp_path / "o.db") as store:
        store.put([OutboxRow.of(DEST, event(j, n)) for n in range(5) for j in ("a", "b")])
        d = delivery(store, dest)
        d.start([DEST])
        wait_for(lambda: store.depth() == 0, what="delivery")
        d.stop()
    got = dest.ids()
    assert sorted(got) == sorted(f"{j}-{n}" for n in range(5) for j in ("a", "b")), "lost or twice"
    assert [i for i in got if i.startswith("a-")] == [f"a-{n}" for n in range(5)]
    assert [i for i in got if i.startswith("b-")] == [f"b-{n}" for n in range(5)]


class _SettleFailsOnce(Outbox):  # type: ignore[misc]
    """The first settle fails, whichever way it is made (alone, or with the next claim)."""
    failures = 1

    def _fail_once(self) -> None:
        if self.failures:
            self.failures -= 1
            raise OutboxError("disk full (test)", where=self.where, retryable=True)

    def settle(self, *args: Any, **kwargs: Any) -> None:
        self._fail_once()
        super().settle(*args, **kwargs)

    def settle_and_claim(self, *args: Any, **kwargs: Any) -> Any:
        self._fail_once()
        return super().settle_and_claim(*args, **kwargs)


def test_a_failed_settle_is_written_first_and_nothing_goes_out_twice(tmp_path: Path) -> None:
    dest = Recorder()
    with _SettleFailsOnce(tmp_path / "o.db") as store:
        store.put([OutboxRow.of(DEST, event("k", n)) for n in range(20)])
        d = delivery(store, dest)
        d.start([DEST])
        wait_for(lambda: store.depth() == 0, what="delivery")
        d.stop()
        assert store.failures == 0
    assert dest.ids() == [f"k-{n}" for n in range(20)], "a row went out twice, or out of order"


class _CountsWrites(Outbox):  # type: ignore[misc]
    writes = 0

    def _write(self, work: Any) -> Any:
        self.writes += 1
        return super()._write(work)


def test_a_batch_that_went_through_is_settled_with_the_next_claim_in_one_transaction(tmp_path: Path) -> None:
    """One turn at the file's write lock per batch, not two (a claim, then a settle): under ``serve
    --workers N`` every turn is a wait for the other workers' commits. Order and once-only hold."""
    dest = Recorder()
    with _CountsWrites(tmp_path / "o.db") as store:
        store.put([OutboxRow.of(DEST, event(f"j{n % 3}", n)) for n in range(70)])  # 10 batches of 7
        store.writes = 0
        d = delivery(store, dest)
        d.start([DEST])
        wait_for(lambda: store.depth() == 0 and len(dest.sent) == 70, what="delivery")
        writes = store.writes
        d.stop()
    assert writes <= 12, writes  # the first claim, then one per batch (two each before: 20)
    got = dest.ids()
    assert sorted(got) == sorted(f"j{n % 3}-{n}" for n in range(70)), "lost or twice"
    for j in range(3):
        assert [i for i in got if i.startswith(f"j{j}-")] == [f"j{j}-{n}" for n in range(j, 70, 3)]


def test_rows_are_read_back_after_an_outage_and_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    dest = Recorder()
    dest.down = True
    store = Outbox(path)
    d = delivery(store, dest)
    d.start([DEST])
    store.put([OutboxRow.of(DEST, event("k", n)) for n in range(10)])
    wait_for(lambda: store.heads() and store.heads()[0].attempts >= 1, what="a failed attempt")
    assert d.stop()
    store.close()
    assert dest.sent == []
    # the next process: nothing in memory, everything from the file, in order
    dest.down = False
    with Outbox(path) as again:
        # rows another writer committed (``dlq replay``) are found as well
        with Outbox(path) as other:
            other.put([OutboxRow(DEST, "elsewhere", None, orjson.dumps({**event("z", 0), "id": "elsewhere"}))])
        d2 = delivery(again, dest)
        d2.start([DEST])
        wait_for(lambda: again.depth() == 0, what="delivery after the restart")
        d2.stop()
    assert dest.ids() == [f"k-{n}" for n in range(10)] + ["elsewhere"]


def test_a_row_that_is_not_json_is_dead_lettered(tmp_path: Path) -> None:
    dest = Recorder()
    with Outbox(tmp_path / "o.db") as store:
        store.put([OutboxRow(DEST, "bad", None, b"{not json")])
        d = delivery(store, dest)
        d.start([DEST])
        wait_for(lambda: store.dead_letter_count() == 1, what="the dead letter")
        d.stop()
        (dl,) = store.dead_letters()
        assert dl.code == MalformedPayloadError.code and dl.destination == DEST


@pytest.mark.parametrize("claimants", [3])
def test_claimants_on_one_file_share_the_work_once_each_in_order(tmp_path: Path, claimants: int) -> None:
    """What ``serve --workers N`` does, with threads: N stores on one file, each its own claimant."""
    path = tmp_path / "o.db"
    dest = Recorder()
    dest.delay = 0.002
    stores = [Outbox(path) for _ in range(claimants)]
    deliveries = [delivery(s, dest) for s in stores]
    for d in deliveries:
        d.start([DEST])
    expected = [f"job{k}-{n}" for n in range(30) for k in range(10)]
    writers = [threading.Thread(target=lambda s=s, i=i: [s.put([OutboxRow.of(DEST, event(f"job{k}", n))])
                                                         for n in range(30) for k in range(10) if k % claimants == i])
               for i, s in enumerate(stores)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    wait_for(lambda: stores[0].depth() == 0, 30, "delivery")
    for d in deliveries:
        d.stop()
    for s in stores:
        s.close()
    got = dest.ids()
    assert sorted(got) == sorted(expected), "a row was lost or published twice"
    for k in range(10):
        assert [i for i in got if i.startswith(f"job{k}-")] == [f"job{k}-{n}" for n in range(30)]


def test_the_leases_of_a_killed_process_do_not_hold_its_keys_back(tmp_path: Path) -> None:
    """A bridge SIGKILLed mid-batch leaves leases on its keys (30 s by default). The next process to
    lock the file on this host gives up the leases of pids that are gone, so it delivers those rows at
    once instead of after the lease; live holders keep theirs."""
    import signal
    import subprocess
    import sys

    path = tmp_path / "o.db"
    with Outbox(path) as store:
        store.put([OutboxRow.of(DEST, event(f"j{n % 4}", n)) for n in range(20)])
    claimer = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom batchbridge.core.outbox import Outbox\n"
         f"ob = Outbox({str(path)!r}, lease=30.0)\nob.lock()\n"
         f"print(len(ob.claim({DEST!r}, 100)), flush=True)\ntime.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert claimer.stdout is not None
        assert int(claimer.stdout.readline()) == 20  # it holds every key now
        with Outbox(path, lease=30.0) as alive:  # a holder that is alive keeps its leases
            assert alive.claim(DEST, 100) == []
        claimer.send_signal(signal.SIGKILL)
        claimer.wait(10)
        with Outbox(path, lease=30.0) as store:
            store.lock()
            assert sorted(p.seq for p in store.claim(DEST, 100)) == sorted(
                r[0] for r in store._read("SELECT seq FROM outbox"))
            assert len(store.claim(DEST, 100)) == 0 and store.depth() == 20
    finally:
        claimer.kill()
        claimer.wait(10)


class _ClaimBreaksOnce(Outbox):  # type: ignore[misc]
    """The first claim raises what no store should (a bug: not a BatchBridgeError)."""
    broke = False

    def claim(self, destination: str, limit: int) -> Any:
        if not self.broke:
            self.broke = True
            raise KeyError("a bug (test)")
        return super().claim(destination, limit)


def test_an_unexpected_error_does_not_end_the_destinations_delivery(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Nothing restarts a delivery thread, and in ``serve --workers N`` its worker keeps the
    destination's lease: a bug in one turn is logged, backed off, and the next turn delivers."""
    dest = Recorder()
    with _ClaimBreaksOnce(tmp_path / "o.db") as store:
        store.put([OutboxRow.of(DEST, event("k", n)) for n in range(10)])
        d = delivery(store, dest)
        with caplog.at_level("WARNING", logger="batchbridge.delivery"):
            d.start([DEST])
            wait_for(lambda: store.depth() == 0, what="delivery after the failed turn")
        d.stop()
        assert store.broke
    assert dest.ids() == [f"k-{n}" for n in range(10)]
    assert any("failed unexpectedly" in r.getMessage() for r in caplog.records)
    assert not any("unavailable" in r.getMessage() for r in caplog.records), "one cause, one log line"
