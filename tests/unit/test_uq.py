"""ual.evaluate.metrics.uq: AUROC / AUPRC against pair-counting and hand references, the accuracy-rejection curve
by hand, and the bootstrap interval."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from ual.evaluate.metrics.uq import auarc, auprc, auroc, bootstrap_ci, rejection_curve, spearman


def _pairwise_auroc(y, s):
    pos = [b for a, b in zip(y, s) if a == 1]
    neg = [b for a, b in zip(y, s) if a == 0]
    return sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)) / (len(pos) * len(neg))


def test_auroc_matches_pair_counting():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.normal(size=60) + y, 1)  # rounded: ties are exercised
    assert auroc(y, s) == pytest.approx(_pairwise_auroc(y, s), abs=1e-12)
    from sklearn.metrics import roc_auc_score

    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0 and auroc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert np.isnan(auroc([1, 1], [0.1, 0.2]))


def test_auprc_hand():
    # ranked by score: 1, 0, 1 -> precision at the two positives 1/1 and 2/3; average precision (1 + 2/3) / 2
    assert auprc([1, 0, 1], [0.9, 0.5, 0.1]) == pytest.approx((1 + 2 / 3) / 2)


def test_rejection_curve_hand():
    correct = [1, 1, 0, 1, 0, 0, 1, 1, 1, 0]
    s = [0.0, 0.1, 0.9, 0.2, 0.8, 0.7, 0.3, 0.4, 0.5, 0.6]  # a perfect ranking: wrong answers most uncertain
    rates, acc = rejection_curve(correct, s)
    assert rates == pytest.approx(np.arange(0, 1, 0.1))
    assert acc == pytest.approx([0.6, 6 / 9, 6 / 8, 6 / 7, 1, 1, 1, 1, 1, 1])
    assert auarc(correct, s) == pytest.approx(np.mean([0.6, 6 / 9, 6 / 8, 6 / 7, 1, 1, 1, 1, 1, 1]))
    assert auarc(correct, [0.5] * 10) == pytest.approx(0.6)  # a constant score keeps the overall accuracy
    assert auarc(correct, [-x for x in s]) < 0.6  # the reversed ranking is worse than none


def test_bootstrap_ci_and_spearman():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = rng.normal(size=200) + y
    est, lo, hi = bootstrap_ci(auroc, y, s, n_boot=200)
    assert lo < est < hi and est == pytest.approx(auroc(y, s))
    assert bootstrap_ci(auroc, y, s, n_boot=200) == (est, lo, hi)  # seeded
    est, lo, hi = bootstrap_ci(auroc, [1, 0], [0.2, 0.1], n_boot=100)  # most resamples have one class
    assert est == 1.0 and np.isnan(lo) and np.isnan(hi)
    assert spearman([1, 2, 3], [10, 20, 15]) == pytest.approx(0.5)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
