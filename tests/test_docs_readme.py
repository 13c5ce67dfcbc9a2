"""The README sections generated from code (docs/update_readme.py) are what the code says now: the
vendor mapping table from the vendor modules' own tables, the backends' options table, the
canonical example. Regenerate with ``.venv/bin/python docs/update_readme.py``."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
from batchbridge.core.normalizing import normalize
from vendor_payloads import sample_bytes

ROOT = Path(__file__).resolve().parent.parent


def _update_readme() -> ModuleType:
    spec = importlib.util.spec_from_file_location("update_readme", ROOT / "docs" / "update_readme.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


UPDATE = _update_readme()
README = (ROOT / "README.md").read_text()


def section(name: str) -> str:
    match = re.search(rf"<!-- {name}:begin -->\n(.*?)\n<!-- {name}:end -->", README, re.S)
    assert match, f"README has no {name} section"
    return match.group(1)


@pytest.mark.parametrize(("name", "generate"), [
    ("vendor-mapping", UPDATE.vendor_mapping),
    ("options-table", UPDATE.options_table),
    ("canonical-example", UPDATE.canonical_example),
])
def test_generated_sections_are_current(name: str, generate: object) -> None:
    assert callable(generate)
    assert section(name) == generate().strip(), f"README {name} is stale: run docs/update_readme.py"


def test_mapping_table_lists_every_native_event_the_vendor_modules_map() -> None:
    from batchbridge.core.vendors import alibaba, aws, azure, gcp, tencent

    table = section("vendor-mapping")
    names = [*tencent.EVENTS, *alibaba.JOB_EVENTS, *alibaba.CLUSTER_EVENTS, *aws.DETAIL_TYPES, *aws.STATUSES,
             *gcp.TYPES, *gcp.STATES, *azure.TASK_EVENTS, *azure.POOL_EVENTS]
    assert [n for n in names if f"`{n}`" not in table] == []


@pytest.mark.parametrize(("sample", "row_text"), [
    ("aws-eventbridge-job-queue-blocked.json", "`Batch Job Queue Blocked`: `blocked` (pending)"),
    ("azure-records-pool-scaling.json", "`PoolAutoscaleEvent` → `autoscaled` (running)"),
    ("azure-records-task-scheduling-events.json", "`TaskScheduleFailEvent` → `schedule_failed` (pending)"),
])
def test_mapping_table_rows_say_what_normalize_does(sample: str, row_text: str) -> None:
    assert row_text in section("vendor-mapping")
    transition, state = re.findall(r"`([a-z_]+)` \(([a-z_]+)\)", row_text)[0]
    assert any((e["data"]["transition"], e["data"]["state"]) == (transition, state)
               for e in normalize(sample_bytes(sample)))
