"""One conformance suite for every outbox store (the interface and invariants of ``core/store.py``).

A store's test module subclasses :class:`StoreConformance` and provides a ``stores`` fixture: a
function that opens another store object -- another claimant -- on the *same* fresh outbox each
time it is called (closed by the fixture at the end). :class:`StoreConformance` holds what every
store offers (intake, claim/fetch and settle, dead letters); :class:`ClaimConformance` adds the
invariants of claims; both stores (SQLite with its lease table, PostgreSQL) run the whole of it.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
from batchbridge.core.errors import BatchBridgeError, InputError, MalformedPayloadError
from batchbridge.core.outbox import INTAKE, PUBLISH, DeadLetter, OutboxError, OutboxRow, Pending
from batchbridge.core.store import NO_KEY

DEST = "file:///tmp/bb-store-a.jsonl"
OTHER = "file:///tmp/bb-store-b.jsonl"


def event(job: str | None, n: int) -> dict[str, Any]:
    data: dict[str, Any] = {"provider": "aws", "kind": "job", "n": n}
    if job is not None:
        data["job"] = {"id": job}
    return {"specversion": "1.0", "id": f"{job}-{n}", "type": "batch.job.succeeded", "source": "test", "data": data}


def row(job: str | None, n: int, destination: str = DEST) -> OutboxRow:
    return OutboxRow.of(destination, event(job, n))


def job_of(p: Pending) -> str | None:
    job = orjson.loads(p.body)["data"].get("job")
    return None if job is None else str(job["id"])


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


Opener = Callable[..., Any]


class StoreConformance:
    @pytest.fixture
    def stores(self) -> Opener:  # pragma: no cover - every subclass provides it
        raise NotImplementedError

    # --- intake ------------------------------------------------------------------------------------

    def test_intake_hands_back_seqs_in_order_and_the_rows_wait(self, stores: Opener) -> None:
        s = stores()
        first = s.put([row("j1", 1), row("j1", 2), row("j2", 1, OTHER)])
        second = s.put([row("j1", 3)])
        assert len(first.seqs) == 3 and first.seqs == sorted(first.seqs) and second.seqs[0] > first.seqs[-1]
        assert first.dead_ids == []
        assert s.depth() == 4 and s.depths() == {DEST: 3, OTHER: 1}
        assert sorted(s.destinations()) == sorted([DEST, OTHER])
        # another store object on the same outbox (another process, another host) sees them too
        assert stores().depths() == {DEST: 3, OTHER: 1}

    def test_concurrent_intake_is_group_committed(self, stores: Opener) -> None:
        s = stores()
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda i: s.put([row(f"j{i % 7}", i)]), range(400)))
        seqs = [r.seqs[0] for r in results]
        assert len(set(seqs)) == 400 and s.depth() == 400
        commits, requests = s.group_commit_stats
        assert requests >= 400 and commits < requests, "concurrent requests were not grouped into fewer commits"

    def test_asyncio_intake(self, stores: Opener) -> None:
        s = stores()

        async def main() -> list[Any]:
            return await asyncio.gather(*(s.asubmit([row("ja", i)]) for i in range(50)))

        inserted = asyncio.run(main())
        assert len({i.seqs[0] for i in inserted}) == 50 and s.depth() == 50

    def test_commit_listener_gets_what_was_committed(self, stores: Opener) -> None:
        s = stores()
        seen: list[tuple[int, OutboxRow]] = []
        s.on_commit(seen.extend)
        done = s.put([row("j1", 1), row("j2", 1)])
        assert [seq for seq, _ in seen] == done.seqs
        assert [r.event_id for _, r in seen] == ["j1-1", "j2-1"]

    def test_a_failing_request_does_not_sink_its_group(self, stores: Opener) -> None:
        s = stores()
        kept = s.put([], [DeadLetter.of(INTAKE, "http", b"x", InputError("bad", where="$"))]).dead_ids[0]
        s.purge([kept])
        with ThreadPoolExecutor(8) as pool:
            good = [pool.submit(s.put, [row("jg", i)]) for i in range(20)]
            bad = pool.submit(s.resolve, kept, [row("jb", 1)])
            assert all(len(f.result().seqs) == 1 for f in good)
            with pytest.raises(OutboxError, match=f"no dead letter with id {kept}"):
                bad.result()
        assert s.depths() == {DEST: 20}

    # --- fetch / claim and settle -----------------------------------------------------------------------

    def test_settle_delivered_retry_and_dead(self, stores: Opener) -> None:
        s = stores()
        seqs = s.put([row("j1", 1), row("j2", 1), row("j3", 1)]).seqs
        got = s.claim(DEST, 10)
        assert [p.seq for p in got] == seqs and got[0].body == orjson.dumps(event("j1", 1))
        refused = MalformedPayloadError("refused by amqps://user:abc123secret@bus.example", where="$.data")
        s.settle(delivered=[seqs[0]], retry=[(seqs[1], "backend down: password=hunter22")],
                 dead=[(seqs[2], DeadLetter.of(PUBLISH, "outbox", got[2].body, refused, destination=DEST,
                                               event_id="j3-1"))])
        assert s.depth() == 1
        again = s.claim(DEST, 10)
        assert [(p.seq, p.attempts) for p in again] == [(seqs[1], 1)]
        (dl,) = s.dead_letters()
        assert (dl.stage, dl.destination, dl.event_id, dl.code) == (PUBLISH, DEST, "j3-1", "malformed_payload")
        assert "abc123secret" not in dl.reason
        assert dl.payload == got[2].body

    def test_settling_twice_is_harmless(self, stores: Opener) -> None:
        s = stores()
        (seq,) = s.put([row("j1", 1)]).seqs
        s.claim(DEST, 10)
        s.settle(delivered=[seq])
        s.settle(delivered=[seq])
        assert s.depth() == 0

    # --- dead letters -------------------------------------------------------------------------------------

    def test_dead_letters_list_get_count_purge_resolve(self, stores: Opener) -> None:
        s = stores()
        raw = b"\x00\xffnot json, with a NUL \x00"
        err = MalformedPayloadError("not JSON near \x00 in https://u:s3cretvalue@h/x", where="line 1")
        ids = [s.put([], [DeadLetter.of(INTAKE, "http", raw + bytes([i]), err, meta={"provider": "aws", "i": i})]
                     ).dead_ids[0] for i in range(3)]
        assert ids == sorted(ids) and s.dead_letter_count() == 3
        first = s.dead_letter(ids[0])
        assert first is not None and first.payload == raw + b"\x00" and first.meta == {"provider": "aws", "i": 0}
        assert first.code == "malformed_payload" and first.where == "line 1" and "s3cretvalue" not in first.reason
        assert [d.id for d in s.dead_letters(limit=2)] == ids[:2]
        assert [d.id for d in s.dead_letters(after=ids[0])] == ids[1:]
        assert s.dead_letter(ids[-1] + 1000) is None
        # a replay replaces the dead letter by its rows atomically, and is seen by another store object
        s.resolve(ids[0], [row("jr", 1)])
        other = stores()
        assert other.dead_letter(ids[0]) is None and other.depths() == {DEST: 1}
        other.failed_again(ids[1], MalformedPayloadError("still broken", where="line 2"))
        again = s.dead_letter(ids[1])
        assert again is not None and (again.attempts, again.reason, again.where) == (2, "still broken", "line 2")
        assert s.purge([ids[1], ids[1] + 1000]) == 1 and s.dead_letter_count() == 1
        assert s.purge() == 1 and s.dead_letter_count() == 0


class ClaimConformance(StoreConformance):
    """The invariants of claims: what sharing one outbox between processes needs."""

    def test_a_claimant_never_gets_a_row_twice_before_settling(self, stores: Opener) -> None:
        s = stores()
        s.put([row(f"j{i}", n) for i in range(5) for n in range(3)])
        first = s.claim(DEST, 100)
        assert len(first) == 15
        assert s.claim(DEST, 100) == []
        s.settle(delivered=[p.seq for p in first[:3]])
        assert s.claim(DEST, 100) == [], "rows of keys still in flight were handed out"

    def test_an_ordering_key_is_owned_by_one_claimant(self, stores: Opener) -> None:
        a, b = stores(), stores()
        a.put([row("shared", 1), row("shared", 2), row("solo", 1)])
        got_a = a.claim(DEST, 1)  # only the first row: its key is now a's
        assert [job_of(p) for p in got_a] == ["shared"]
        got_b = b.claim(DEST, 10)
        assert [job_of(p) for p in got_b] == ["solo"], "b took rows of a key a holds"
        a.put([row("shared", 3)])
        assert b.claim(DEST, 10) == []
        a.settle(delivered=[got_a[0].seq])
        assert [(job_of(p), orjson.loads(p.body)["data"]["n"]) for p in a.claim(DEST, 10)] == [("shared", 2),
                                                                                               ("shared", 3)]

    def test_a_retried_row_comes_back_before_the_rows_behind_it(self, stores: Opener) -> None:
        a, b = stores(), stores()
        seqs = a.put([row("k", n) for n in range(4)]).seqs
        first = a.claim(DEST, 2)
        a.settle(delivered=[first[0].seq], retry=[(first[1].seq, "busy")])
        assert b.claim(DEST, 10) == []
        again = a.claim(DEST, 10)
        assert [p.seq for p in again] == seqs[1:] and again[0].attempts == 1

    def test_rows_without_a_key_keep_their_order_among_themselves(self, stores: Opener) -> None:
        a, b = stores(), stores()
        a.put([row(None, n) for n in range(3)])
        got = a.claim(DEST, 1)
        assert b.claim(DEST, 10) == []
        a.settle(delivered=[got[0].seq])
        assert [orjson.loads(p.body)["data"]["n"] for p in a.claim(DEST, 10)] == [1, 2]
        assert NO_KEY == ""

    def test_an_expired_lease_goes_to_another_claimant(self, stores: Opener) -> None:
        a, b = stores(lease=0.4), stores(lease=0.4)
        seqs = a.put([row("k", 1), row("k", 2)]).seqs
        assert [p.seq for p in a.claim(DEST, 10)] == seqs
        assert b.claim(DEST, 10) == []
        taken = wait_for(lambda: b.claim(DEST, 10), 5, "b to take over the expired lease")
        assert [p.seq for p in taken] == seqs, "the takeover did not start at the head of the key"
        # a wakes up late: its settle neither fails nor hands b's rows to a again
        a.settle(delivered=[seqs[0]])
        b.settle(delivered=[seqs[0], seqs[1]])
        assert a.depth() == 0

    def test_renew_keeps_the_lease_and_release_gives_it_back(self, stores: Opener) -> None:
        a, b = stores(lease=0.6), stores(lease=0.6)
        a.put([row("k", 1)])
        a.claim(DEST, 10)
        for _ in range(4):
            time.sleep(0.25)  # longer in total than the lease: only renew keeps it
            a.renew()
            assert b.claim(DEST, 10) == []
        a.release()
        assert [job_of(p) for p in b.claim(DEST, 10)] == ["k"]

    def test_claimants_share_the_work_without_breaking_any_key(self, stores: Opener) -> None:
        a = stores()
        expected: dict[str, list[int]] = {}
        for n in range(20):
            rows = [row(f"job{k}", n) for k in range(12)]
            for r, seq in zip(rows, a.put(rows).seqs, strict=True):
                expected.setdefault(str(r.event_id).rsplit("-", 1)[0], []).append(seq)
        log: list[tuple[str, int, int]] = []
        log_lock = threading.Lock()
        holder: dict[str, int] = {}  # key -> claimant currently publishing it

        def claimant(me: int) -> None:
            s = stores()
            rng = random.Random(me)
            idle_since = time.monotonic()
            while time.monotonic() - idle_since < 1.0:
                got = s.claim(DEST, rng.randint(1, 3))
                if not got:
                    s.wait(DEST, 0.05)
                    continue
                idle_since = time.monotonic()
                with log_lock:
                    for p in got:
                        key = str(job_of(p))
                        assert holder.get(key, me) == me, f"key {key} published by two claimants at once"
                        holder[key] = me
                        log.append((key, p.seq, me))
                time.sleep(rng.random() * 0.005)
                with log_lock:
                    for p in got:
                        holder.pop(str(job_of(p)), None)
                s.settle(delivered=[p.seq for p in got])

        threads = [threading.Thread(target=claimant, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert a.depth() == 0
        seqs = [seq for _, seq, _ in log]
        assert len(seqs) == len(set(seqs)) == 240, "a row was lost or published twice"
        for key, want in expected.items():
            assert [seq for k, seq, _ in log if k == key] == want, f"order of {key} broken"
        assert len({me for _, _, me in log}) >= 2, "one claimant did all the work"

    def test_idle_claimants_are_woken_by_any_writer(self, stores: Opener) -> None:
        a, b = stores(), stores()
        woke: list[float] = []

        def waiter() -> None:
            started = time.monotonic()
            while not b.wait(DEST, 5):
                pass
            woke.append(time.monotonic() - started)

        b.wait(DEST, 0.01)  # starts the listener
        wait_for(lambda: b.wait(DEST, 0.05) is False, 5, "the listener to settle")
        t = threading.Thread(target=waiter)
        t.start()
        a.put([row("k", 1)])
        t.join(10)
        assert woke and woke[0] < 3, "the idle claimant was not woken by the commit"
        assert [job_of(p) for p in b.claim(DEST, 10)] == ["k"]

    def test_backlog_figures(self, stores: Opener) -> None:
        a = stores()
        before = time.time()
        a.put([row("k1", 1), row("k2", 1), row("k2", 2), row("k3", 1, OTHER)])
        a.claim(DEST, 1)
        figures = stores().backlog()
        assert set(figures) == {DEST, OTHER}
        assert figures[DEST].rows == 3 and figures[OTHER].rows == 1
        assert figures[DEST].leased_keys == 1 and figures[OTHER].leased_keys == 0
        oldest = figures[DEST].oldest
        assert oldest is not None and before - 5 < oldest < time.time() + 5


def assert_typed(exc: BaseException, secret: Sequence[str] = ()) -> None:
    assert isinstance(exc, BatchBridgeError)
    for s in secret:
        assert s not in str(exc) and s not in repr(exc)
