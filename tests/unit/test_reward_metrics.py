"""ual.evaluate.metrics.reward: pairwise accuracy, balanced accuracy and AUROC against sklearn and hand counts."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from ual.evaluate.metrics.reward import hash_order, pairwise_metrics


def test_against_sklearn_and_hand_counts():
    rng = np.random.default_rng(4)
    c, r = rng.normal(size=60), rng.normal(size=60)
    c[:3] = r[:3]  # ties
    first = ["chosen" if x else "rejected" for x in rng.random(60) < 0.8]
    res = pairwise_metrics(c, r, first, n_boot=200)
    m = c - r
    assert res["pairwise_accuracy"] == pytest.approx(((m > 0).sum() + 0.5 * (m == 0).sum()) / 60)
    y = np.array([f == "chosen" for f in first], int)
    s = np.where(y == 1, m, -m)
    assert res["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, s > 0))
    assert res["auroc"] == pytest.approx(roc_auc_score(y, s))
    assert res["n_first_chosen"] == y.sum() and res["n_pairs"] == 60
    lo, hi = res["auroc_ci"]
    assert lo < res["auroc"] < hi
    assert res["margin"]["median"] == pytest.approx(np.median(m))
    assert res["margin"]["share_positive"] == pytest.approx((m > 0).mean())


def test_always_first_has_high_accuracy_and_chance_balanced_accuracy():
    """The AlpacaEval situation: nearly every verdict prefers the first-shown answer."""
    first = ["chosen"] * 95 + ["rejected"] * 5
    # a scorer that always ranks the first-shown response higher
    c = np.array([1.0] * 95 + [0.0] * 5)
    r = np.array([0.0] * 95 + [1.0] * 5)
    res = pairwise_metrics(c, r, first, n_boot=100)
    assert res["pairwise_accuracy"] == pytest.approx(0.95)
    assert res["balanced_accuracy"] == pytest.approx(0.5)
    assert res["auroc"] == pytest.approx(0.5)


def test_one_sided_order_has_no_balanced_metrics():
    res = pairwise_metrics([1.0, 2.0], [0.0, 3.0], ["chosen", "chosen"], n_boot=20)
    assert res["balanced_accuracy"] is None and res["auroc"] is None and res["auroc_ci"] is None
    with pytest.raises(ValueError):
        pairwise_metrics([1.0], [0.0], ["left"])


def test_hash_order_is_fixed_and_mixed():
    sides = [hash_order(f"pair-{i}") for i in range(200)]
    assert sides == [hash_order(f"pair-{i}") for i in range(200)]
    assert 60 < sides.count("chosen") < 140


def test_seed_bootstrap_pairs_seeds_and_pairs():
    from ual.evaluate.metrics.reward import seed_bootstrap

    rng = np.random.default_rng(0)
    ids = [f"p{i}" for i in range(80)]
    first = {i: ("chosen" if rng.random() < 0.7 else "rejected") for i in ids}

    def model(skill, seed):
        r = np.random.default_rng(seed)
        return {i: (skill + r.normal(), r.normal(), first[i]) for i in ids}

    scores = {"good": {s: model(2.0, s) for s in (1, 2, 3)}, "weak": {s: model(0.2, 10 + s) for s in (1, 2, 3)}}
    res = seed_bootstrap(scores, comparisons=[("good", "weak")], n_boot=200)
    by = {(r["group"], r["metric"]): r for r in res["groups"]}
    assert by["good", "pairwise_accuracy"]["estimate"] > by["weak", "pairwise_accuracy"]["estimate"]
    for r in res["groups"]:
        assert r["lo"] <= r["estimate"] <= r["hi"] and len(r["per_seed"]) == 3
    diff = {r["metric"]: r for r in res["differences"]}
    assert diff["pairwise_accuracy"]["lo"] > 0 and diff["auroc"]["p_a_better"] > 0.95
    same = seed_bootstrap({"a": scores["good"], "b": scores["good"]}, comparisons=[("a", "b")], n_boot=50)
    assert all(r["estimate"] == 0 and r["lo"] == 0 == r["hi"] for r in same["differences"])
