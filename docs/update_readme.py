"""Regenerate the README sections that are generated from code: the backends table.

    .venv/bin/python docs/update_readme.py
"""

from __future__ import annotations

from pathlib import Path

from batchbridge.core.registry import options_table

README = Path(__file__).resolve().parent.parent / "README.md"


def replace_section(text: str, name: str, body: str) -> str:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body.strip()}\n{end}{tail}"


def main() -> None:
    text = README.read_text()
    text = replace_section(text, "options-table", options_table())
    README.write_text(text)


if __name__ == "__main__":
    main()
