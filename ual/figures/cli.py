"""``python -m ual figures``, ``export-results`` and ``stats``: everything rebuilt from a run's saved files."""
from __future__ import annotations

from pathlib import Path

from ual.common.errors import InputError
from ual.figures import results
from ual.figures.bootstrap import bootstrap_table, markdown_tables, pair_wins
from ual.figures.plots import make_all


# What makes a folder a run (or an exported results folder) these commands can read.
RESULT_PATTERNS = ("manifest.json", "evaluate/*/metrics.json", "train/*/log.jsonl", "train/*/manifest.json",
                   "elicit/scores.jsonl", "data/train.jsonl")


def check_run(run: str | Path, patterns: tuple[str, ...] = RESULT_PATTERNS) -> Path:
    """``run`` as a Path, or an :class:`InputError` (exit 2) when it is missing, not a folder, or holds none of
    the result files ``patterns`` name (a typo in ``--run`` otherwise printed nothing and exited 0)."""
    import errno
    import stat

    from ual.common.io import os_error_message

    path = Path(run)
    try:
        if not stat.S_ISDIR(path.stat().st_mode):
            raise InputError(path, None, "--run", "is a file, expected a run directory")
        found = any(next(path.glob(p), None) is not None for p in patterns)
    except OSError as e:  # missing, a symlink loop, a permission: say which
        msg = ("run directory not found (give runs/<id> or a results/ folder)" if e.errno == errno.ENOENT
               else os_error_message(path, e))
        raise InputError(path, None, "--run", msg) from None
    if not found:
        raise InputError(path, None, "--run", f"holds no result files (looked for {', '.join(patterns)})")
    return path


def configure_export_results(p) -> None:
    p.add_argument("--run", required=True, help="run directory to export from")
    p.add_argument("--out", required=True, help="destination folder, e.g. results/quickstart")


def run_export_results(args) -> int:
    check_run(args.run)
    copied = results.export_results(args.run, args.out)
    print(f"{len(copied)} files copied to {args.out}")
    return 0


def configure_figures(p) -> None:
    p.add_argument("--run", required=True, help="run directory (runs/<id> or a results/ folder)")
    p.add_argument("--out", help="output folder (default <run>/figures)")
    p.add_argument("--format", action="append", dest="formats", help="png (default), pdf or svg; repeatable")
    p.add_argument("--dpi", type=int, default=150)


def run_figures(args) -> int:
    import time

    check_run(args.run)
    t0 = time.time()
    paths = make_all(args.run, out_dir=args.out, formats=tuple(args.formats or ["png"]), dpi=args.dpi)
    for p in paths:
        print(p)
    print(f"{len(paths)} figures in {time.time() - t0:.1f} s")
    return 0


def configure_stats(p) -> None:
    p.add_argument("--run", required=True, help="run directory or exported results folder")
    p.add_argument("--out", help="write the intervals as JSON here (default: print Markdown only)")
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1337)


def run_stats(args) -> int:
    from ual.common.io import atomic_write_json

    check_run(args.run, ("evaluate/*/metrics.json",))
    stats = bootstrap_table(args.run, n_boot=args.n_boot, seed=args.seed)
    stats["clustering_pair_wins"] = pair_wins(args.run)
    if args.out:
        atomic_write_json(args.out, stats)
    print(markdown_tables(stats))
    for r in stats["clustering_pair_wins"]:
        print(f"token pairs where {r['a']} has the higher silhouette than {r['b']}: {r['n_a_higher']} of {r['n_pairs']}")
    return 0
