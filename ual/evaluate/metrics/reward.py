"""Reward-model metrics on scored preference pairs (pure functions of the saved scores; no model).

A pair has a score for its chosen and its rejected response. Besides the pairwise accuracy (share of pairs whose
chosen response scores higher), two metrics need the two responses in the order a source showed them: each pair
becomes a binary item "is the first-shown response the preferred one?" (y) with the score difference first minus
second (s). Balanced accuracy (mean recall of both classes, predicting y from s > 0) and AUROC of s for y then
measure whether the reward model finds the rarer verdicts too: in the AlpacaEval annotations about 97 % of verdicts
prefer the GPT-4-Turbo reference shown first, so a model that always says "first" has a pairwise accuracy near 97 %
and a balanced accuracy of 50 %. Pairs without a source order get one from a hash of their id (:func:`hash_order`).
"""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np

MARGIN_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def hash_order(pair_id: str) -> str:
    """"chosen" or "rejected": a fixed pseudo-random first-shown side for a pair without a source order."""
    return "chosen" if hashlib.sha256(pair_id.encode("utf-8")).digest()[0] % 2 == 0 else "rejected"


def _accuracy(m: np.ndarray) -> float:
    return float(((m > 0) + 0.5 * (m == 0)).mean()) if m.size else math.nan


def _balanced(y: np.ndarray, s: np.ndarray) -> float:
    if y.min() == y.max():
        return math.nan
    pred = s > 0
    return float(0.5 * (pred[y == 1].mean() + (~pred[y == 0]).mean()))


def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    """AUROC of ``s`` for ``y`` by the Mann-Whitney rank sum (ties averaged): sklearn's ``roc_auc_score`` value,
    without its per-call overhead (thousands of bootstrap draws)."""
    from scipy.stats import rankdata

    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if not n_pos or not n_neg:
        return math.nan
    ranks = rankdata(s)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _interval(draws: list[float], level: float) -> list[float] | None:
    x = np.array([d for d in draws if np.isfinite(d)])
    if x.size < 10:
        return None
    return [float(np.quantile(x, (1 - level) / 2)), float(np.quantile(x, (1 + level) / 2))]


def _nan_to_none(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def pairwise_metrics(chosen: Sequence[float], rejected: Sequence[float], first: Sequence[str], *,
                     n_boot: int = 2000, seed: int = 1337, level: float = 0.95) -> dict:
    """Metrics of scores ``chosen[i]``, ``rejected[i]`` (any unit) with ``first[i]`` in {"chosen", "rejected"}.

    Returns ``{n_pairs, n_first_chosen, pairwise_accuracy, balanced_accuracy, auroc, *_ci (percentile bootstrap
    over pairs, ``n_boot`` draws, None when too few draws have both classes), margin: {mean, std, min, q05, q25,
    median, q75, q95, max, share_positive}}``; ``balanced_accuracy`` and ``auroc`` are None when every pair has the
    same first-shown side. Ties (equal scores) count half in the pairwise accuracy and as "second" otherwise.
    """
    c, r = np.asarray(chosen, float), np.asarray(rejected, float)
    if c.shape != r.shape or c.ndim != 1 or len(first) != c.size:
        raise ValueError("chosen, rejected and first must be equally long 1-D sequences")
    if not c.size:
        raise ValueError("no pairs to score")
    bad = set(first) - {"chosen", "rejected"}
    if bad:
        raise ValueError(f"first must be 'chosen' or 'rejected', got {sorted(bad)[:3]}")
    m = c - r
    y = np.array([f == "chosen" for f in first], dtype=int)
    s = np.where(y == 1, m, -m)
    rng = np.random.default_rng(seed)
    draws = {"pairwise_accuracy": [], "balanced_accuracy": [], "auroc": []}
    for _ in range(n_boot):
        i = rng.integers(0, c.size, c.size)
        draws["pairwise_accuracy"].append(_accuracy(m[i]))
        draws["balanced_accuracy"].append(_balanced(y[i], s[i]))
        draws["auroc"].append(_auroc(y[i], s[i]))
    q = np.quantile(m, MARGIN_QUANTILES)
    out = {"n_pairs": int(c.size), "n_first_chosen": int(y.sum()),
           "pairwise_accuracy": _accuracy(m), "balanced_accuracy": _nan_to_none(_balanced(y, s)),
           "auroc": _nan_to_none(_auroc(y, s))}
    for k, v in draws.items():
        out[f"{k}_ci"] = _interval(v, level)
    out["margin"] = {"mean": float(m.mean()), "std": float(m.std(ddof=1)) if m.size > 1 else 0.0,
                     "min": float(m.min()), **{f"q{int(p * 100):02d}" if p != 0.5 else "median": float(v)
                                               for p, v in zip(MARGIN_QUANTILES, q)},
                     "max": float(m.max()), "share_positive": float((m > 0).mean())}
    out["bootstrap"] = {"n_boot": n_boot, "seed": seed, "level": level, "unit": "pairs"}
    return out
