"""Every repository file that README, docs, REPORT, docstrings and notebooks name exists (no stale paths after a
move)."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOP = ("docs", "ual", "profiles", "benchmarks", "notebooks", "tests", "tools", "data")
PATH_RE = re.compile(r"(?<![\w./<-])((?:%s)/[\w./-]+\.(?:md|py|yaml|ipynb|txt|csv|sh))\b" % "|".join(TOP))


def _texts():
    yield from (REPO / "README.md", REPO / "results" / "REPORT.md", REPO / "benchmarks" / "RESULTS.md")
    yield from sorted((REPO / "docs").glob("*.md"))
    yield from sorted(p for p in (REPO / "ual").rglob("*.py") if "_data" not in p.parts)
    yield from sorted((REPO / "notebooks").glob("*.ipynb"))


def test_named_files_exist():
    missing = []
    for path in _texts():
        if not path.exists():
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        for prev, line in zip([""] + lines, lines):
            if any("authors" in t.lower() or "UAL4Alignment" in t for t in (prev, line)):
                continue  # a path in the authors' repository, not ours
            missing += _missing_on(line, path)
    assert not missing, "\n".join(missing)


def _missing_on(line: str, path: Path) -> list[str]:
    out = []
    for m in PATH_RE.finditer(line):
        name = m.group(1).rstrip(".")
        if "*" not in name and "<" not in name and not (REPO / name).exists():
            out.append(f"{path.relative_to(REPO)} names {name}")
    return out
