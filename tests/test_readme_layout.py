"""The README's layout table names every module of every package (a new module must be placed there too)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_layout_section_matches_the_tree():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Layout"):]
    section = section[: section.index("\n## ", 5)]
    for package in ("core", "tasks", "backends", "search", "runs", "app"):
        row = next(line for line in section.splitlines() if line.startswith(f"| `bbtune/{package}/`"))
        named = set(re.findall(r"`(\w+)`", row))
        modules = {p.stem for p in (ROOT / "bbtune" / package).glob("*.py")} - {"__init__"}
        assert modules <= named, f"bbtune/{package}: the README's layout omits {sorted(modules - named)}"
