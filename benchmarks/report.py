"""Markdown tables from benchmarks/results/*.json (pasted into benchmarks/RESULTS.md): ``python -m benchmarks.report``."""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A GitHub-markdown table of flat dicts (None shown as an empty cell)."""
    if not rows:
        return "(no rows)\n"
    cols = columns or list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" for _ in cols) + "|"]
    lines += ["| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    folder = Path(argv[0]) if argv else HERE / "results"
    for path in sorted(folder.glob("*.json")):
        rec = json.loads(path.read_text())
        m = rec["machine"]
        print(f"### {rec['name']}\n\n`{rec['command']}` ({m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
              f"{m['date']}, {rec['wall_seconds']} s)\n")
        print(markdown_table(rec.get("rows", []), rec.get("columns")))
        for key in ("summary", "chunk_sweep", "skipped"):
            if rec.get(key):
                print(f"{key}:\n\n" + markdown_table(rec[key]))
        for goal, met in rec.get("goals", {}).items():
            print(f"- goal {'met' if met else '**not met**'}: {goal}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
