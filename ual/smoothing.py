"""Uncertainty score -> per-sample label-smoothing value (eps).

Pure number code: imports nothing of ``ual`` (callers turn :class:`ScoreError` into a file/line/field message).
Scores are on a declared range (the paper's
0-99, higher = more uncertain); eps values are in [0, cap].
"""
from __future__ import annotations

from typing import Sequence

import numpy as np




class ScoreError(ValueError):
    """A score that cannot be mapped (not finite, outside the declared range, wrong count)."""


MAPPINGS = ("rescale", "minmax", "uniform", "none")
DEFAULT_CAP = 0.99  # authors' code: eps is clipped at 0.99 so the target keeps some mass
MEAN_TOL = 1e-3  # authors' code: iterate until |mean(eps) - target| < 1e-3


def check_scores(scores: Sequence[float] | np.ndarray, score_range: tuple[float, float] | None = None,
                 n_expected: int | None = None, *, source: str | None = None) -> np.ndarray:
    """Validate scores (finite, inside ``score_range``, ``n_expected`` long); returns a float64 array [N]."""
    arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    if n_expected is not None and arr.shape[0] != n_expected:
        raise ScoreError(f"{arr.shape[0]} scores for {n_expected} samples")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ScoreError(f"score #{bad[0]} is {arr[bad[0]]}; scores must be finite")
    if score_range is not None:
        lo, hi = score_range
        out = np.flatnonzero((arr < lo) | (arr > hi))
        if out.size:
            raise ScoreError(f"score #{out[0]} = {arr[out[0]]} is outside the declared range [{lo}, {hi}]")
    return arr


def rescale_to_mean(scores: Sequence[float] | np.ndarray, target_mean: float, cap: float = DEFAULT_CAP,
                    *, tol: float = MEAN_TOL, max_iter: int = 1000) -> np.ndarray:
    """The authors' mapping: scale scores proportionally to mean ``target_mean``, clip at ``cap``, repeat.

    scores [N] >= 0 (any unit; only ratios matter). Returns eps [N] float64 in [0, cap] with
    ``|mean - target_mean| < tol``. A score of 0 stays 0, so the mean is reachable only if
    ``target_mean <= cap * (share of non-zero scores)``; otherwise this raises ValueError.
    """
    s = check_scores(scores)
    if (s < 0).any():
        raise ScoreError("rescale_to_mean needs non-negative scores")
    if not 0 <= target_mean < 1:
        raise ValueError(f"target_mean must be in [0, 1), got {target_mean}")
    if not 0 < cap < 1:
        raise ValueError(f"cap must be in (0, 1), got {cap}")
    if target_mean == 0 or s.size == 0:
        return np.zeros_like(s)
    nonzero = float((s > 0).mean())
    if nonzero == 0:
        raise ValueError("every score is 0: no rescaling can reach a positive mean smoothing")
    if target_mean > cap * nonzero - tol:
        raise ValueError(f"target mean {target_mean} is unreachable: only {nonzero:.1%} of scores are non-zero "
                         f"and eps is capped at {cap}")
    eps = s * (target_mean / s.mean())
    for _ in range(max_iter):
        eps = np.minimum(eps, cap)
        m = eps.mean()
        if abs(m - target_mean) < tol:
            return eps
        # Only uncapped values can still move; scaling them all (as the authors do) keeps their ratios.
        eps = eps * (target_mean / m)
    raise RuntimeError(f"rescale_to_mean did not converge in {max_iter} iterations")  # pragma: no cover


def minmax_to_range(scores: Sequence[float] | np.ndarray, lo: float, hi: float,
                    score_range: tuple[float, float] | None = None) -> np.ndarray:
    """Linear map of scores onto [lo, hi]: ``score_range`` (if given) or the observed min/max goes to lo/hi.

    scores [N]; returns eps [N] in [lo, hi]. Constant scores map to the middle of the range.
    """
    s = check_scores(scores, score_range)
    if not 0 <= lo <= hi < 1:
        raise ValueError(f"need 0 <= lo <= hi < 1, got lo={lo}, hi={hi}")
    a, b = score_range if score_range is not None else (float(s.min()), float(s.max()))
    if b == a:
        return np.full_like(s, (lo + hi) / 2)
    return lo + (s - a) / (b - a) * (hi - lo)


def uniform(n: int, target_mean: float) -> np.ndarray:
    """The LS baseline: every one of ``n`` samples gets ``target_mean``."""
    if not 0 <= target_mean < 1:
        raise ValueError(f"target_mean must be in [0, 1), got {target_mean}")
    return np.full(n, float(target_mean))


def eps_for_method(method: str, scores: Sequence[float] | None, n: int, *, mean_eps: float,
                   mapping: str = "rescale", cap: float = DEFAULT_CAP, score_range: tuple[float, float] = (0, 99),
                   eps_range: tuple[float, float] | None = None) -> np.ndarray:
    """Per-sample eps [n] for a training method: ``sft`` -> 0, ``ls`` -> ``mean_eps`` everywhere,
    ``ual`` -> ``scores`` mapped by ``mapping`` (``rescale``: authors'; ``minmax``: onto ``eps_range``)."""
    if method == "sft":
        return np.zeros(n)
    if method == "ls":
        return uniform(n, mean_eps)
    if method != "ual":
        raise ValueError(f"method must be sft, ls or ual, got {method!r}")
    if scores is None:
        raise ValueError("method 'ual' needs uncertainty scores")
    s = check_scores(scores, score_range, n)
    if mapping == "rescale":
        return rescale_to_mean(s - score_range[0], mean_eps, cap)
    if mapping == "minmax":
        lo, hi = eps_range if eps_range is not None else (0.0, min(2 * mean_eps, cap))
        return minmax_to_range(s, lo, hi, score_range)
    raise ValueError(f"mapping must be one of {MAPPINGS[:2]}, got {mapping!r}")


def describe(eps: np.ndarray) -> dict[str, float]:
    """Summary of an eps vector: mean, std, min, max, share at zero (for logs and manifests)."""
    e = np.asarray(eps, dtype=np.float64)
    if e.size == 0:
        return {"n": 0}
    return {"n": int(e.size), "mean": float(e.mean()), "std": float(e.std()), "min": float(e.min()),
            "max": float(e.max()), "frac_zero": float((e == 0).mean())}


__all__ = ["rescale_to_mean", "minmax_to_range", "uniform", "eps_for_method", "check_scores", "describe",
           "MAPPINGS", "DEFAULT_CAP"]
