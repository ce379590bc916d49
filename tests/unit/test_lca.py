"""ual.elicit.lca: reconstruction-v2 of the LCA score (full and pointwise) on hand-computed cases, its monotonicity
(more label confidence and more samples agreeing with the label must lower it), and the unsound v1 kept beside it."""
from __future__ import annotations

import itertools
import math

import pytest

from ual.elicit.lca import LCA_VARIANTS, lca_reconstruction

# Samples spread over four classes none of which is the label's (the case the issue cites: 2/1/1/1).
SPREAD = (["B", "B", "C", "D", "E"], [1.0] * 5, [1] * 5)


def _label_nll_for(q: float, length: int = 4) -> float:
    """Summed label NLL whose Gibbs confidence exp(-NLL/len) is q."""
    return -math.log(q) * length


def test_v2_hand_computed():
    # Gibbs weights: A: exp(-0.5) twice, B: exp(-1), C: exp(-2); the label is class A with q = exp(-0.25).
    classes, nll, lens = ["A", "A", "B", "C"], [1.0, 1.5, 3.0, 2.0], [2, 3, 3, 1]
    wa, wb, wc, q = 2 * math.exp(-0.5), math.exp(-1.0), math.exp(-2.0), math.exp(-0.25)
    z = wa + wb + wc + q
    p_plus = {"A": (wa + q) / z, "B": wb / z, "C": wc / z}
    h = -sum(v * math.log(v) for v in p_plus.values())
    out = lca_reconstruction(classes, nll, lens, "A", 1.0, 4)
    assert out["variant"] == "full"
    assert out["P_plus"] == pytest.approx(p_plus, abs=1e-12)
    assert out["lca_pointwise"] == pytest.approx(-math.log(p_plus["A"]), abs=1e-12)
    assert out["lca_full"] == pytest.approx(h - math.log(p_plus["A"]), abs=1e-12)
    assert out["lca"] == out["lca_full"]
    assert out["label_agreement"] == pytest.approx(p_plus["A"], abs=1e-12)
    # numbers, so a change of formula cannot pass silently
    assert (round(out["lca_full"], 6), round(out["lca_pointwise"], 6)) == (0.845397, 0.22525)
    assert lca_reconstruction(classes, nll, lens, "A", 1.0, 4, variant="pointwise")["lca"] == out["lca_pointwise"]


def test_v1_is_still_selectable_and_unchanged():
    classes, nll, lens = ["A", "A", "B", "C"], [1.0, 1.5, 3.0, 2.0], [2, 3, 3, 1]
    out = lca_reconstruction(classes, nll, lens, "A", 1.0, 4, variant="v1")
    assert out["lca"] == out["lca_v1"] == pytest.approx(out["lca_entropy"] + out["lca_kl"], abs=1e-12)
    assert (round(out["lca_entropy"], 6), round(out["lca_kl"], 6), round(out["P"]["A"], 6)) == (0.775696, 0.014057,
                                                                                                0.706798)
    with pytest.raises(ValueError, match="variant"):
        lca_reconstruction(classes, nll, lens, "A", 1.0, 4, variant="v3")


@pytest.mark.parametrize("variant", ["full", "pointwise"])
@pytest.mark.parametrize("samples, label", [
    (SPREAD, "A"),                                              # no sample hits the label's class
    ((["A", "B", "C", "D", "E"], [1.0, 0.5, 2.0, 1.0, 3.0], [1, 1, 2, 1, 3]), "A"),   # one sample agrees
    ((["A", "A", "A", "B", "C"], [0.2, 0.4, 0.3, 1.0, 1.0], [1] * 5), "A"),            # majority agrees
    ((["A", "A", "B", "B", "B"], [1.0] * 5, [1] * 5), "A"),                            # label is the minority class
])
def test_more_label_confidence_lowers_the_score(variant, samples, label):
    qs = [0.01, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0]
    scores = [lca_reconstruction(*samples, label, _label_nll_for(q), 4, variant=variant)["lca"] for q in qs]
    assert all(b < a for a, b in zip(scores, scores[1:])), scores


@pytest.mark.parametrize("variant", ["full", "pointwise"])
@pytest.mark.parametrize("q", [0.05, 0.3, 0.9])
def test_more_samples_agreeing_with_the_label_lower_the_score(variant, q):
    # Start with five samples spread over other classes and move them onto the label's class one by one, in every
    # order: each move must lower the score (equal weights, so the only change is agreement).
    base = ["B", "B", "C", "D", "E"]
    for order in itertools.permutations(range(5)):
        classes = list(base)
        prev = lca_reconstruction(classes, [1.0] * 5, [1] * 5, "A", _label_nll_for(q), 4, variant=variant)["lca"]
        for i in order:
            classes[i] = "A"
            cur = lca_reconstruction(classes, [1.0] * 5, [1] * 5, "A", _label_nll_for(q), 4, variant=variant)["lca"]
            assert cur < prev or (cur == pytest.approx(0.0, abs=1e-12) and prev > cur - 1e-12), (order, classes)
            prev = cur
        assert prev == pytest.approx(0.0, abs=1e-12)  # every sample agrees with the label: no uncertainty left


@pytest.mark.parametrize("variant", ["full", "pointwise"])
def test_more_confident_agreeing_sample_lowers_the_score(variant):
    # A sample in the label's class that the model holds more confidently (lower NLL) is more agreement.
    scores = [lca_reconstruction(["A", "B", "C"], [nll_a, 1.0, 1.0], [1, 1, 1], "A", _label_nll_for(0.3), 4,
                                 variant=variant)["lca"] for nll_a in (3.0, 2.0, 1.0, 0.5, 0.1)]
    assert all(b < a for a, b in zip(scores, scores[1:])), scores


def test_v1_defect_reproduced():
    # The case: samples 2/1/1/1 over four other classes. v1 RISES with label confidence; v2 falls.
    v1 = [lca_reconstruction(*SPREAD, "A", _label_nll_for(q), 4, variant="v1")["lca"] for q in (0.1, 0.9)]
    assert v1[0] == pytest.approx(1.3322 + 0.1054, abs=1e-3) and v1[1] == pytest.approx(1.3322 + 2.3026, abs=1e-3)
    v2 = [lca_reconstruction(*SPREAD, "A", _label_nll_for(q), 4)["lca"] for q in (0.1, 0.9)]
    assert v2[1] < v2[0]


@pytest.mark.parametrize("variant", LCA_VARIANTS)
def test_scores_are_finite_and_nonnegative(variant):
    for q in (1e-30, 0.5, 1.0):
        out = lca_reconstruction(*SPREAD, "A", _label_nll_for(q), 4, variant=variant)
        assert math.isfinite(out["lca"]) and out["lca"] >= 0


def test_bad_inputs():
    with pytest.raises(ValueError):
        lca_reconstruction([], [], [], "A", 1.0, 1)
    with pytest.raises(ValueError):
        lca_reconstruction(["A"], [1.0], [0], "A", 1.0, 1)
