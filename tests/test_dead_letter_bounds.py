"""Every dead letter intake writes is bounded (``core/dead_letters.py``): undecodable input and
unrouted events alike, on a real outbox file; what is refused is acknowledged, counted and not kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from batchbridge.core.bridge import Bridge
from batchbridge.core.config import config_from_dict
from batchbridge.core.dead_letters import DEAD_LETTER_MAX_BYTES, DEAD_LETTER_MAX_ROWS, DeadLetterBounds
from batchbridge.core.outbox import Outbox
from vendor_payloads import compact, tencent_element, tencent_message


def tencent(job: str) -> bytes:
    return compact(tencent_message(tencent_element("JOB_SUCCEED", JobId=job)))


def test_the_defaults_are_documented() -> None:
    assert (DEAD_LETTER_MAX_ROWS, DEAD_LETTER_MAX_BYTES) == (10_000, 64 * 1024 * 1024)
    assert "10,000 rows and 64 MiB" in (Path(__file__).parent.parent / "core" / "dead_letters.py").read_text()


@pytest.mark.parametrize("bound", ["dead_letter_max_rows = 3", "dead_letter_max_bytes = 4000"])
def test_unrouted_dead_letters_are_bounded_like_bad_input(tmp_path: Path, bound: str) -> None:
    key, value = bound.split(" = ")
    cfg = config_from_dict({"routes": [{"match": ["batch.job.failed"], "to": "memory://never"}],
                            "unrouted": "deadletter",
                            "outbox": {"path": str(tmp_path / "o.db"), key: int(value)}})
    bridge = Bridge(cfg)
    try:
        results = [bridge.handle(tencent(f"job-{i}")) for i in range(10)]
        assert all(r.ok and r.unrouted == 1 for r in results)  # valid events: acknowledged either way
        kept = bridge.outbox.dead_letter_count()
        assert 1 <= kept <= 3, kept
        assert sum(len(r.dead_letter_ids) for r in results) == kept
        assert bridge.stats.snapshot()["rejected_unkept"] == {"unrouted": 10 - kept}
        # purging makes room again (the figures are read again within a second)
        bridge.outbox.purge()
    finally:
        bridge.stop()


def test_bounds_count_what_they_let_through_and_read_the_store_again(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as ob:
        reads = []

        def usage() -> tuple[int, int]:
            reads.append(1)
            return ob.dead_letter_usage()

        bounds = DeadLetterBounds(usage, max_rows=2, max_bytes=100)
        assert bounds.refusal(10) is None and bounds.refusal(10) is None
        refused = bounds.refusal(10)
        assert refused is not None and "dead_letter_max_rows" in refused
        assert len(reads) == 1  # one read per second, not per dead letter
        big = DeadLetterBounds(usage, max_rows=100, max_bytes=100)
        refused = big.refusal(101)
        assert refused is not None and "dead_letter_max_bytes" in refused
