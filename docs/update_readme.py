"""Regenerate the README sections that are generated from code: the backends table and the
canonical event example (Tencent's own seed sample, normalised).

    .venv/bin/python docs/update_readme.py
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

from batchbridge.core.normalizing import normalize
from batchbridge.core.registry import options_table

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


def main() -> None:
    text = README.read_text()
    text = replace_section(text, "options-table", options_table())
    text = replace_section(text, "canonical-example", canonical_example())
    README.write_text(text)


if __name__ == "__main__":
    main()
