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


# --------------------------------------------------------------------------------------------------- several models

METRICS = ("pairwise_accuracy", "balanced_accuracy", "auroc")


def _metric(name: str, c: np.ndarray, r: np.ndarray, y: np.ndarray) -> float:
    m = c - r
    if name == "pairwise_accuracy":
        return _accuracy(m)
    s = np.where(y == 1, m, -m)
    return _balanced(y, s) if name == "balanced_accuracy" else _auroc(y, s)


def seed_bootstrap(scores: dict[str, dict[int, dict[str, tuple[float, float, str]]]], *, comparisons=(),
                   n_boot: int = 1000, seed: int = 1337, level: float = 0.95) -> dict:
    """Two-level paired bootstrap of reward-model metrics over seeds and pairs.

    ``scores[group][seed][pair_id] = (chosen score, rejected score, first)``: one model per group and seed, scored on
    the same pairs. Each draw resamples the seeds (one draw shared by every group: a drawn seed brings each group's
    model of that seed) and the pairs (one draw shared by all), computes the metric per drawn model and averages over
    the drawn seeds. Returns ``{"groups": [{group, metric, estimate (mean over seeds), lo, hi, per_seed}],
    "differences": [{a, b, metric, estimate, lo, hi, p_a_better (share of draws with a > b)}], n_boot, level,
    method}``; groups need the same seeds to be compared.
    """
    groups = sorted(scores)
    ids = sorted(set.intersection(*(set(v) for g in groups for v in scores[g].values())))
    if not ids:
        raise ValueError("the models share no scored pairs")
    seeds = sorted(set.intersection(*(set(scores[g]) for g in groups)))
    arr = {}
    for g in groups:
        for s in seeds:
            rows = [scores[g][s][i] for i in ids]
            arr[g, s] = (np.array([x[0] for x in rows]), np.array([x[1] for x in rows]),
                         np.array([x[2] == "chosen" for x in rows], dtype=int))
    rng = np.random.default_rng(seed)
    seed_idx = rng.integers(0, len(seeds), size=(n_boot, len(seeds)))
    pair_idx = rng.integers(0, len(ids), size=(n_boot, len(ids)))
    out_g, out_d = [], []
    for metric in METRICS:
        per = {g: {s: _metric(metric, *arr[g, s]) for s in seeds} for g in groups}
        draws = {g: np.full(n_boot, np.nan) for g in groups}
        for b in range(n_boot):
            i = pair_idx[b]
            for g in groups:
                vals = [_metric(metric, *(x[i] for x in arr[g, seeds[k]])) for k in seed_idx[b]]
                vals = [v for v in vals if np.isfinite(v)]
                draws[g][b] = np.mean(vals) if vals else np.nan
        for g in groups:
            lo_hi = _interval(list(draws[g]), level)
            out_g.append({"group": g, "metric": metric, "estimate": _nan_to_none(np.mean(list(per[g].values()))),
                          "lo": lo_hi[0] if lo_hi else None, "hi": lo_hi[1] if lo_hi else None,
                          "per_seed": {str(s): _nan_to_none(v) for s, v in per[g].items()}})
        for a, b in comparisons:
            d = draws[a] - draws[b]
            lo_hi = _interval(list(d), level)
            ok = d[np.isfinite(d)]
            out_d.append({"a": a, "b": b, "metric": metric,
                          "estimate": _nan_to_none(np.mean(list(per[a].values())) - np.mean(list(per[b].values()))),
                          "lo": lo_hi[0] if lo_hi else None, "hi": lo_hi[1] if lo_hi else None,
                          "p_a_better": float((ok > 0).mean()) if ok.size else None})
    return {"groups": out_g, "differences": out_d, "n_pairs": len(ids), "seeds": seeds, "n_boot": n_boot,
            "level": level, "method": "two-level paired bootstrap: seeds (shared draw), then pairs (shared draw); "
            "per draw the mean over drawn seeds of each model's metric"}


def _cell(est, lo=None, hi=None, scale: float = 1.0, digits: int = 3) -> str:
    if est is None:
        return "n/a"
    text = f"{est * scale:.{digits}g}"
    if lo is not None and hi is not None:
        text += f" [{lo * scale:.{digits}g}, {hi * scale:.{digits}g}]"
    return text


def reward_markdown(summary: dict) -> str:
    """A markdown table of an ``evaluate/reward_models.json`` summary (``ual.evaluate.reward.evaluate_run``): each
    method (mean over seeds, two-level bootstrap interval), the difference of the first two, the length baseline and
    the base model's log-likelihood (intervals over pairs). Accuracies in percent."""
    boot = summary["bootstrap"]
    head = ["scorer", "pairwise accuracy (%)", "balanced accuracy (%)", "AUROC"]
    scale = {"pairwise_accuracy": 100, "balanced_accuracy": 100, "auroc": 1}
    rows = []
    for g in dict.fromkeys(r["group"] for r in boot["groups"]):
        by = {r["metric"]: r for r in boot["groups"] if r["group"] == g}
        n = len(next(iter(by.values()))["per_seed"])
        rows.append([f"{g} ({n} seeds)"] + [_cell(by[m]["estimate"], by[m]["lo"], by[m]["hi"], scale[m])
                                           for m in METRICS])
    for a, b in dict.fromkeys((r["a"], r["b"]) for r in boot["differences"]):
        by = {r["metric"]: r for r in boot["differences"] if (r["a"], r["b"]) == (a, b)}
        rows.append([f"{a} - {b}"] + [_cell(by[m]["estimate"], by[m]["lo"], by[m]["hi"], scale[m]) for m in METRICS])
    for name, key in (("length baseline (longer wins)", "length_baseline"),
                      ("base model log-likelihood (sum)", "base_logprob")):
        if key in summary:
            r = summary[key]
            rows.append([name] + [_cell(r[m], *(r.get(f"{m}_ci") or (None, None)), scale=scale[m]) for m in METRICS])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
