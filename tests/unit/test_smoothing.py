"""Score -> eps mappings, against hand-computed values."""
import numpy as np
import pytest

from ual.common.errors import InputError
from ual.smoothing import ScoreError, eps_for_method, minmax_to_range, rescale_to_mean, uniform


def test_rescale_is_proportional_when_nothing_is_capped():
    eps = rescale_to_mean([10, 20, 30, 40], 0.1)
    assert np.allclose(eps, [0.04, 0.08, 0.12, 0.16])


def test_rescale_keeps_zero_and_caps_then_matches_mean():
    s = np.array([0, 0, 1, 1, 1, 50])
    eps = rescale_to_mean(s, 0.3, cap=0.99)
    assert eps[0] == 0 and eps[1] == 0
    assert eps.max() <= 0.99 + 1e-12
    assert abs(eps.mean() - 0.3) < 1e-3
    # Hand check: the big score caps at 0.99; the three ones share the rest: (1.8 - 0.99) / 3 = 0.27 each.
    assert np.allclose(eps[2:5], 0.27, atol=2e-3)


def test_uniform_scores_give_a_range_of_twice_the_mean():
    s = np.linspace(0, 99, 100)
    eps = rescale_to_mean(s, 0.2)
    assert eps.min() == 0 and abs(eps.max() - 0.4) < 1e-9


def test_unreachable_mean_is_an_error():
    with pytest.raises(ValueError, match="unreachable"):
        rescale_to_mean([0, 0, 0, 1], 0.5, cap=0.99)


@pytest.mark.parametrize("bad", [[1, float("nan")], [1, float("inf")]])
def test_non_finite_scores_are_input_errors(bad):
    with pytest.raises(ScoreError, match="finite"):
        rescale_to_mean(bad, 0.1)


def test_scores_outside_range_and_wrong_length_are_input_errors():
    with pytest.raises(ScoreError, match="outside"):
        eps_for_method("ual", [10, 150], 2, mean_eps=0.1)
    with pytest.raises(ScoreError, match="2 scores for 3"):
        eps_for_method("ual", [10, 15], 3, mean_eps=0.1)


def test_minmax_and_uniform():
    assert np.allclose(minmax_to_range([0, 49.5, 99], 0.0, 0.2, (0, 99)), [0, 0.1, 0.2])
    assert np.allclose(minmax_to_range([5, 5], 0.0, 0.2), [0.1, 0.1])
    assert np.allclose(uniform(3, 0.1), 0.1)


def test_eps_for_method_shares_the_mean_between_ls_and_ual():
    s = np.random.default_rng(0).uniform(0, 99, 50)
    ual = eps_for_method("ual", s, 50, mean_eps=0.3)
    ls = eps_for_method("ls", None, 50, mean_eps=0.3)
    assert abs(ual.mean() - ls.mean()) < 1e-3
    assert np.all(eps_for_method("sft", None, 50, mean_eps=0.3) == 0)
    assert np.argsort(ual).tolist() == np.argsort(s).tolist()  # ordering of uncertainty is kept
