"""Uncertainty-quantification metrics: how well a score (higher = more uncertain) ranks items, with bootstrap
intervals. Pure functions of numbers (numpy, scikit-learn, scipy); nothing here loads a model.

- :func:`auroc` / :func:`auprc`: AUROC (Mann-Whitney form, equal to scikit-learn's ``roc_auc_score``) and
  scikit-learn's ``average_precision_score``, the positive class being the event the score should flag (a wrong
  answer, a high-entropy item).
- :func:`rejection_curve` / :func:`auarc`: the accuracy-rejection curve (reject the most uncertain fraction r,
  report the accuracy of the rest) and its area, the mean over an even grid of r (as LM-Polygraph's PRR/ARC plots).
- :func:`bootstrap_ci`: percentile interval of any of these over items resampled with replacement.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

CI_LEVEL = 0.95  # two-sided percentile interval, the level every table in results/ uses
N_BOOTSTRAP = 1000  # resamples; our choice (ual.figures.bootstrap uses 2000 for paired differences)


def _arrays(y: Sequence, s: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y, s = np.asarray(y, dtype=int), np.asarray(s, dtype=float)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError("need one label per score")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    return y, s


def auroc(y: Sequence[int], s: Sequence[float]) -> float:
    """AUROC of score ``s`` for positives ``y == 1``: 1 = every positive above every negative, ties count half,
    0.5 = chance; NaN when only one class is present.

    The Mann-Whitney form on ``scipy.stats.rankdata`` mid-ranks, equal to scikit-learn's ``roc_auc_score`` (the
    tests check both against pair counting): the bootstrap calls it thousands of times, and scikit-learn's input
    validation took most of that time."""
    from scipy.stats import rankdata

    y, s = _arrays(y, s)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auprc(y: Sequence[int], s: Sequence[float]) -> float:
    """Area under the precision-recall curve (average precision) for positives ``y == 1``; chance = the positive
    rate. NaN when only one class is present."""
    from sklearn.metrics import average_precision_score

    y, s = _arrays(y, s)
    return float(average_precision_score(y, s)) if len(set(y.tolist())) == 2 else float("nan")


def rejection_curve(correct: Sequence[int], s: Sequence[float], rates: Sequence[float] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy of the items kept after rejecting the ``r`` most uncertain fraction, for each ``r`` in ``rates``
    (default 0, 0.1, ..., 0.9). Kept = the ``m = ceil((1 - r) n)`` lowest scores; items tied at the cut are kept in
    part, each counting with its expected share (random tie-breaking), so a constant score gives the overall
    accuracy at every r. Returns (rates, accuracy)."""
    c, s = _arrays(correct, s)
    rates = np.round(np.arange(0, 1, 0.1), 10) if rates is None else np.asarray(rates, dtype=float)
    n = len(c)
    cut_values = np.sort(s)
    acc = []
    for r in rates:
        m = max(1, int(np.ceil((1 - r) * n)))
        v = cut_values[m - 1]
        below, tied = s < v, s == v
        n_below = int(below.sum())
        acc.append((c[below].sum() + (m - n_below) * c[tied].mean()) / m)
    return rates, np.asarray(acc, dtype=float)


def auarc(correct: Sequence[int], s: Sequence[float]) -> float:
    """Area under the accuracy-rejection curve: mean accuracy over rejection rates 0, 0.1, ..., 0.9. A useless
    score gives about the overall accuracy; a perfect one more."""
    return float(rejection_curve(correct, s)[1].mean())


def bootstrap_ci(metric: Callable[[np.ndarray, np.ndarray], float], y: Sequence, s: Sequence[float], *,
                 n_boot: int = N_BOOTSTRAP, level: float = CI_LEVEL, seed: int = 1337) -> tuple[float, float, float]:
    """(estimate, low, high): ``metric(y, s)`` on all items and the percentile interval over ``n_boot`` resamples
    of the items (with replacement; numpy ``default_rng(seed)``). Resamples where the metric is NaN (one class
    only) are dropped; the interval is NaN when more than half are."""
    y, s = np.asarray(y), np.asarray(s, dtype=float)
    est = metric(y, s)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        v = metric(y[idx], s[idx])
        if np.isfinite(v):
            vals.append(v)
    if len(vals) < n_boot / 2:
        return est, float("nan"), float("nan")
    a = (1 - level) / 2
    return est, float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (scipy); NaN when either side is constant."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(set(x.tolist())) < 2 or len(set(y.tolist())) < 2:
        return float("nan")
    return float(spearmanr(x, y).statistic)
