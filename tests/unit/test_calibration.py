"""ECE and reliability bins against hand-computed values."""
from __future__ import annotations

import pytest

from ual.evaluate.metrics.calibration import expected_calibration_error, reliability_bins


def test_hand_computed_ece():
    conf = [0.05, 0.15, 0.15, 0.85, 0.95]
    correct = [False, True, False, True, True]
    # bins: [0, .1] -> |0 - .05|; (.1, .2] -> |.5 - .15| x 2 items; (.8, .9] -> |1 - .85|; (.9, 1] -> |1 - .95|
    want = (0.05 + 2 * 0.35 + 0.15 + 0.05) / 5
    assert expected_calibration_error(conf, correct) == pytest.approx(want)
    bins = reliability_bins(conf, correct)
    assert [b["count"] for b in bins] == [1, 2, 0, 0, 0, 0, 0, 0, 1, 1]
    assert bins[1]["confidence"] == pytest.approx(0.15) and bins[1]["accuracy"] == pytest.approx(0.5)
    assert bins[2]["confidence"] is None and bins[2]["lower"] == pytest.approx(0.2)


def test_edges_are_right_closed_and_ends_included():
    bins = reliability_bins([0.0, 0.1, 0.1000001, 1.0], [True, True, True, True], n_bins=10)
    assert [b["count"] for b in bins][:2] == [2, 1] and bins[-1]["count"] == 1


def test_perfect_and_worst_calibration():
    assert expected_calibration_error([1.0, 1.0, 0.0], [True, True, False]) == 0.0
    assert expected_calibration_error([1.0, 0.0], [False, True]) == 1.0
    # half right at confidence 0.5 is calibrated
    assert expected_calibration_error([0.5] * 4, [True, False, True, False], n_bins=1) == pytest.approx(0.0)


def test_quantile_bins_hold_equal_counts():
    conf = [i / 100 for i in range(1, 101)]
    bins = reliability_bins(conf, [c > 0.5 for c in conf], n_bins=4, strategy="quantile")
    assert [b["count"] for b in bins] == [25, 25, 25, 25]
    assert 0 <= expected_calibration_error(conf, [c > 0.5 for c in conf], n_bins=4, strategy="quantile") <= 1


@pytest.mark.parametrize("conf,correct", [([1.2], [True]), ([0.5], [2]), ([], []), ([0.5, 0.5], [True])])
def test_bad_input(conf, correct):
    with pytest.raises(ValueError):
        expected_calibration_error(conf, correct)
