"""Power analysis for study v2 from the first study's per-item files (results/study-controlled).

For each primary endpoint and a paired comparison (default UAL - LS at eps 0.1), split the variance of the
difference into an item part (within a seed: the variance over items of the per-item paired difference) and a seed
part (between seeds: the variance of the per-seed mean differences, less what the item part explains), then give
the standard error and the minimum detectable effect (two-sided, power 0.8) of a design with S seeds and n items:

    SE^2 = var_seed / S + var_item / (S n)        MDE = (z_{1 - alpha/2} + z_{0.8}) SE

at alpha 0.05 and at the Holm worst case alpha / m (m = the number of primary tests). Exact KL is defined per open
prompt and accuracy and NLL per arithmetic item, so n is the number of prompts or items of that family.

    python tools/power_analysis.py [--run results/study-controlled] [--a "ual eps=0.1"] [--b "ls eps=0.1"]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ual.figures.bootstrap import PRIMARY_ENDPOINTS, _groups, item_metrics  # noqa: E402


def components(run_dir: Path, key: str, a: str, b: str) -> dict:
    per_model = item_metrics(run_dir)
    groups, seed_of = _groups(run_dir, per_model)
    by_seed = {g: {seed_of[n]: per_model[n][key].values for n in groups[g]} for g in (a, b)}
    seeds = sorted(set(by_seed[a]) & set(by_seed[b]))
    items = sorted(set.intersection(*(set(by_seed[g][s]) for g in (a, b) for s in seeds)))
    d = np.array([[by_seed[a][s][i] - by_seed[b][s][i] for i in items] for s in seeds], float)  # [S, n]
    var_item = float(np.nanmean(np.nanvar(d, axis=1, ddof=1)))
    seed_means = np.nanmean(d, axis=1)
    var_seed = max(float(np.var(seed_means, ddof=1)) - var_item / len(items), 0.0)
    return {"metric": key, "n_seeds": len(seeds), "n_items": len(items), "mean_diff": float(seed_means.mean()),
            "sd_item": var_item ** 0.5, "sd_seed": var_seed ** 0.5}


def mde(c: dict, seeds: int, items: int, alpha: float, power: float = 0.8) -> float:
    se = (c["sd_seed"] ** 2 / seeds + c["sd_item"] ** 2 / (seeds * items)) ** 0.5
    return float((norm.ppf(1 - alpha / 2) + norm.ppf(power)) * se)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="results/study-controlled")
    p.add_argument("--a", default="ual eps=0.1")
    p.add_argument("--b", default="ls eps=0.1")
    p.add_argument("--family", type=int, default=12, help="primary tests in the Holm family (worst case alpha/m)")
    args = p.parse_args()
    designs = {"controlled.low.accuracy_flexible_pct": [(3, 50), (3, 200), (5, 200)],
               "controlled.low.gold_nll_per_token": [(3, 50), (3, 200), (5, 200)],
               "controlled.high.kl_true_model": [(3, 20), (3, 40), (5, 40)]}
    print(f"{args.a} - {args.b} in {args.run}; MDE at power 0.8, alpha 0.05 / Holm worst case 0.05/{args.family}")
    print("| endpoint | sd between seeds | sd over items | design (seeds x items) | MDE | MDE (Holm worst) |")
    print("|---|---|---|---|---|---|")
    for key in PRIMARY_ENDPOINTS:
        c = components(Path(args.run), key, args.a, args.b)
        for s, n in designs[key]:
            print(f"| {key} | {c['sd_seed']:.3g} | {c['sd_item']:.3g} | {s} x {n} | "
                  f"{mde(c, s, n, 0.05):.3g} | {mde(c, s, n, 0.05 / args.family):.3g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
