"""The fenced code blocks of the documentation pages (docs/*.md), with the marker line before each.

Convention (checked by tests/test_docs.py):

- ``python`` blocks run, in order per page, in one namespace;
- ``bash`` blocks run with ``bash -e``, in the same folder, between the python blocks around them;
- ``<!-- not-run: REASON -->`` on the line before a block: not run, for the reason given;
- ``<!-- used-by: TEST_FILE as NAME -->``: a data block that TEST_FILE reads by NAME (``docs_json``);
- ``<!-- docs-test: after quickstart -->`` anywhere in a page: its blocks start from the registry the
  quickstart page made, instead of an empty one.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
RUNNABLE = ("python", "bash")
_MARKER = re.compile(r"^<!--\s*(not-run|used-by):\s*(.*?)\s*-->$")
_FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: Optional[str]  # "not-run" or "used-by"
    marker_text: str

    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"


def pages() -> List[str]:
    """Every Markdown page under docs/, relative to it."""
    found = []
    for folder, _, files in os.walk(DOCS):
        found += [os.path.relpath(os.path.join(folder, f), DOCS) for f in files if f.endswith(".md")]
    return sorted(found)


def read_page(page: str) -> str:
    with open(os.path.join(DOCS, page), encoding="utf-8") as f:
        return f.read()


def blocks(page: str) -> List[Block]:
    lines = read_page(page).splitlines()
    out: List[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i].strip())
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2).lower()
        start = i
        body: List[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        before = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = _MARKER.match(before)
        out.append(Block(page, start + 1, lang, "\n".join(body) + "\n", marker.group(1) if marker else None,
                         marker.group(2) if marker else ""))
        i += 1
    return out


def docs_json(page: str, name: str) -> Any:
    """The JSON block of ``page`` marked ``<!-- used-by: ... as NAME -->`` (e.g. the MLServer settings)."""
    for block in blocks(page):
        if block.marker == "used-by" and block.marker_text.split(" as ")[-1].strip() == name:
            return json.loads(block.code)
    raise LookupError(f"docs/{page} has no block marked 'used-by: ... as {name}'")
