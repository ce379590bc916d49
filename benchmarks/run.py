"""Run the benchmarks: ``python -m benchmarks.run [--quick] [--only NAME ...]``.

A benchmark is a module ``benchmarks/bench_<name>.py`` with ``run(quick: bool) -> dict``; the dict should hold
``rows`` (a list of flat dicts, printed as a table, in ``columns`` order when given) and may hold ``goals``
({description: bool}); an optional ``plot(result, path)`` draws it. Results go to ``benchmarks/results/<name>.json``
(quick mode: ``benchmarks/results/quick/<name>.json``, so a quick run never overwrites the numbers RESULTS.md
quotes), plots to ``benchmarks/<name>.png`` (quick: beside the quick JSON). Every file records the command, the
machine and the date.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
from pathlib import Path

from benchmarks.common import machine

HERE = Path(__file__).resolve().parent


def discover() -> list[str]:
    """Names of the benchmarks (``bench_<name>`` modules in this folder), sorted."""
    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(HERE)]) if m.name.startswith("bench_"))


def format_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A plain-text table of flat dicts."""
    if not rows:
        return "(no rows)"
    cols = columns or list(dict.fromkeys(k for r in rows for k in r))
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from ual.common.io import atomic_write_json

    names = discover()
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes only (all benchmarks in a few minutes)")
    ap.add_argument("--only", action="append", choices=names, metavar="NAME",
                    help=f"run only this benchmark (repeatable): {', '.join(names)}")
    args = ap.parse_args(argv)
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    out_dir = HERE / "results" / ("quick" if args.quick else "")
    info = machine()
    print(f"# {info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads), "
          f"{info['date']}")
    failed = []
    for name in args.only or names:
        t0 = time.perf_counter()
        print(f"\n## {name}{' (quick)' if args.quick else ''}", flush=True)
        mod = importlib.import_module(f"benchmarks.bench_{name}")
        result = mod.run(args.quick)
        wall = time.perf_counter() - t0
        record = {"name": name, "quick": args.quick, "command": command.strip(), "machine": info,
                  "wall_seconds": round(wall, 1), **result}
        atomic_write_json(out_dir / f"{name}.json", record)
        print(format_table(result.get("rows", []), result.get("columns")))
        for goal, met in result.get("goals", {}).items():
            print(f"goal {'MET' if met else 'NOT MET'}: {goal}")
            if not met:
                failed.append(f"{name}: {goal}")
        if hasattr(mod, "plot"):
            mod.plot(record, str((out_dir if args.quick else HERE) / f"{name}.png"))
        print(f"({wall:.0f} s; {out_dir / (name + '.json')})", flush=True)
    if failed:
        print("\nGoals not met (see benchmarks/RESULTS.md for why):\n  " + "\n  ".join(failed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
