"""Regenerate the README sections that are generated from code: the backends table, the vendor
mapping table (from the vendor modules' own tables) and the canonical event example (Tencent's own
seed sample, normalised). ``tests/test_docs_readme.py`` fails when the README differs from them.

    .venv/bin/python docs/update_readme.py
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

from batchbridge.core.normalizing import normalize
from batchbridge.core.registry import options_table
from batchbridge.core.vendors import alibaba, aws, azure, gcp, tencent

README = Path(__file__).resolve().parent.parent / "README.md"


def replace_section(text: str, name: str, body: str) -> str:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body.strip()}\n{end}{tail}"


EXAMPLE_SAMPLE = "tencent-cmq-node-created.json"


def canonical_example() -> str:
    payload = (files("batchbridge.core") / "samples" / EXAMPLE_SAMPLE).read_bytes()
    [event] = normalize(payload)
    return (
        f"Tencent's sample CMQ message (`core/samples/{EXAMPLE_SAMPLE}`) becomes:\n\n"
        f"```json\n{json.dumps(event, indent=2)}\n```"
    )


#: how each vendor's events arrive (the envelopes core/envelopes.py opens for it)
DELIVERY = {
    "tencent": "CMQ message `{\"Events\": [...]}` (one message → several events), CMQ HTTP push (`msgBody`), "
               "Base64 bodies",
    "alibaba": "MNS message JSON; MNS HTTP push as XML, JSON or SIMPLIFIED",
    "aws": "EventBridge events, bare or inside SNS notifications, SQS messages and the AWS Lambda SQS "
           "(`Records[].body`) and SNS (`Records[].Sns`) events",
    "gcp": "Pub/Sub push `{\"message\", \"subscription\"}` or pulled `{\"attributes\", \"data\"}`",
    "azure": "diagnostic `ServiceLog` records, alone or as `{\"records\": [...]}`",
}
VENDOR_NAMES = {"tencent": "Tencent Cloud Batch", "alibaba": "Alibaba BatchCompute", "aws": "AWS Batch",
                "gcp": "Google Cloud Batch", "azure": "Azure Batch"}


def _outcome(state: str | None, transition: str | None = None) -> str:
    if state is None:
        return "succeeded or failed (exit code and result)"
    return state if transition in (None, state) else f"`{transition}` ({state})"


def _grouped(pairs: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """``[(kind, native, outcome)]`` -> one ``(kind, "native → outcome, ...")`` per kind, in order."""
    kinds: dict[str, list[str]] = {}
    for kind, native, outcome in pairs:
        kinds.setdefault(kind, []).append(f"`{native}` → {outcome}")
    return [(kind, ", ".join(items)) for kind, items in kinds.items()]


def _mapping_rows() -> dict[str, list[tuple[str, str]]]:
    rows: dict[str, list[tuple[str, str]]] = {}
    rows["tencent"] = _grouped([(kind, name, state) for name, (kind, state) in tencent.EVENTS.items()])
    rows["alibaba"] = _grouped(
        [(kind, name, _outcome(state) if state else "`priority_changed` (state from `State`)")
         for name, (kind, state) in alibaba.JOB_EVENTS.items()]
        + [(f"{kind} (`Category: Cluster`)", name, _outcome(state))
           for name, (kind, state) in alibaba.CLUSTER_EVENTS.items() if state])
    statuses = ", ".join(f"`{status}` → {state}" for status, state in aws.STATUSES.items())
    children = "job; array child `id:N` and multi-node parallel node `id#N` → task_instance N of job `id`"
    rows["aws"] = [(children, f"`{aws.DETAIL_TYPE}`: {statuses}")]
    blocked = "job (the job at the head of the blocked queue)"
    rows["aws"] += [(blocked, f"`{detail_type}`: {_outcome('pending', transition)}, `statusReason` as error")
                    for detail_type, transition in aws.DETAIL_TYPES.items() if transition]
    states = ", ".join(f"`{native}` → {state}" for native, state in gcp.STATES.items())
    rows["gcp"] = [(kind, f"`{name}` + `{attribute}`: {states}") for name, (kind, attribute) in gcp.TYPES.items()]
    special = "/".join(f"`{t}`" for t in azure.JOB_SPECIAL_TASKS)
    rows["azure"] = _grouped(
        [("task", name, _outcome(state, transition) + (f" (`taskType` {special}, task name = `taskName`)"
                                                       if name == "SpecialTaskEvent" else ""))
         for name, (state, transition) in azure.TASK_EVENTS.items()]
        + [("environment", name, _outcome(state, transition))
           for name, (state, transition) in azure.POOL_EVENTS.items()])
    return rows


def vendor_mapping() -> str:
    """The README's vendor mapping table, from the vendor modules' own tables."""
    lines = ["| vendor | delivered as | kind | native event → canonical state (or `transition` (state)) |",
             "| --- | --- | --- | --- |"]
    for vendor, rows in _mapping_rows().items():
        for i, (kind, natives) in enumerate(rows):
            first = (VENDOR_NAMES[vendor], DELIVERY[vendor]) if i == 0 else ("", "")
            lines.append(f"| {first[0]} | {first[1]} | {kind} | {natives} |")
    return "\n".join(lines)


def main() -> None:
    text = README.read_text()
    text = replace_section(text, "options-table", options_table())
    text = replace_section(text, "vendor-mapping", vendor_mapping())
    text = replace_section(text, "canonical-example", canonical_example())
    README.write_text(text)


if __name__ == "__main__":
    main()
