"""Calibration of answer confidences: expected calibration error and reliability-diagram bins.

Pure numbers in, plain lists/dicts out, so ``ual.figures.plots`` can draw reliability diagrams from saved files.

Binning: ``uniform`` splits [0, 1] into ``n_bins`` equal-width bins (right-closed: a confidence of exactly 1
falls in the last bin, 0 in the first); ``quantile`` uses bins with (near) equal counts, edges at the empirical
quantiles of the confidences. ECE = sum over non-empty bins of (n_bin / N) * |accuracy_bin - mean confidence_bin|,
a number in [0, 1] (Guo et al., 2017).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

STRATEGIES = ("uniform", "quantile")


def _check(confidences, correct) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidences, dtype=np.float64)
    corr = np.asarray(correct, dtype=np.float64)
    if conf.ndim != 1 or conf.shape != corr.shape:
        raise ValueError(f"confidences {conf.shape} and correct {corr.shape} must be 1-D of the same length")
    if conf.size == 0:
        raise ValueError("no confidences given")
    if np.isnan(conf).any() or (conf < 0).any() or (conf > 1).any():
        raise ValueError("confidences must lie in [0, 1]")
    if not np.isin(corr, (0.0, 1.0)).all():
        raise ValueError("correct must be booleans or 0/1")
    return conf, corr


def _bin_index(conf: np.ndarray, n_bins: int, strategy: str) -> tuple[np.ndarray, np.ndarray]:
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        edges = np.quantile(conf, np.linspace(0.0, 1.0, n_bins + 1))
        edges[0], edges[-1] = 0.0, 1.0
    else:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    # bin b holds (edges[b], edges[b + 1]]; 0 goes to the first bin
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    return idx, edges


def reliability_bins(confidences: Sequence[float], correct: Sequence[bool], n_bins: int = 10,
                     strategy: str = "uniform") -> list[dict]:
    """Per-bin ``{"lower", "upper", "count", "confidence" (mean), "accuracy" (fraction correct)}``, in bin order.

    ``confidences`` in [0, 1]; ``correct`` booleans. Empty bins have count 0 and None for the means.
    """
    conf, corr = _check(confidences, correct)
    idx, edges = _bin_index(conf, n_bins, strategy)
    bins = []
    for b in range(n_bins):
        sel = idx == b
        count = int(sel.sum())
        bins.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count,
                     "confidence": float(conf[sel].mean()) if count else None,
                     "accuracy": float(corr[sel].mean()) if count else None})
    return bins


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool], n_bins: int = 10,
                               strategy: str = "uniform") -> float:
    """ECE in [0, 1]: count-weighted mean over bins of |accuracy - mean confidence| (see the module doc)."""
    bins = reliability_bins(confidences, correct, n_bins, strategy)
    total = sum(b["count"] for b in bins)
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]))
