"""Answer classes, predictive entropy and OUR RECONSTRUCTION of the label-confidence-aware (LCA) score.

Pure Python (no torch): the sampling backend computes NLLs and calls these. Units: nats.
"""
from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from typing import Sequence

LOG_FLOOR = 1e-12  # the "small floor inside the logs" of ual-method.md section 7
_WS_RE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """Unicode NFKC, case-folded, punctuation removed, whitespace collapsed: the exact-match key for free text."""
    t = unicodedata.normalize("NFKC", text).casefold()
    t = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in t)
    return _WS_RE.sub(" ", t).strip()


def answer_class(text: str, *, math_answer: bool) -> str | None:
    """Equivalence class of one answer: ``num:<final number>`` for math (lm-eval's flexible rule: the last number,
    normalised), else ``text:<normalised text>``. None when there is no answer (no number / empty text); the
    caller gives each such answer a class of its own, so unanswered samples count as disagreeing."""
    if math_answer:
        from ual.evaluate.metrics.answers import extract_answer

        a = extract_answer(text, "flexible")
        return None if a is None else f"num:{a}"
    t = normalise_text(text)
    return f"text:{t}" if t else None


def assign_classes(classes: Sequence[str | None], tag: str = "s") -> list[str]:
    """Replace each None by a unique ``invalid:<tag><index>`` class."""
    return [c if c is not None else f"invalid:{tag}{i}" for i, c in enumerate(classes)]


def predictive_entropy(classes: Sequence[str]) -> float:
    """Entropy (nats) of the empirical distribution of the K samples' answer classes (each sample weight 1/K)."""
    counts = Counter(classes)
    k = len(classes)
    return max(0.0, -sum(n / k * math.log(n / k) for n in counts.values()))


def lca_reconstruction(sample_classes: Sequence[str], sample_nll: Sequence[float], sample_len: Sequence[int],
                       label_class: str, label_nll: float, label_len: int, *, floor: float = LOG_FLOOR) -> dict:
    """Label-confidence-aware uncertainty, RECONSTRUCTED (the published formula is not available offline).

    Exactly ual-method.md section 7: Gibbs weights ``w_k = exp(-NLL(s_k) / len(s_k))`` (NLL summed over a sample's
    tokens, nats; len in tokens); sampling distribution ``P(c) = sum_{k in c} w_k / sum_k w_k``; label
    distribution ``Q(c_g) = exp(-NLL(g) / len(g))`` with the rest, ``1 - Q(c_g)``, spread over the other classes
    in proportion to P (uniformly when P puts no mass on them); ``u = H(P) + KL(P || Q)`` with ``floor`` inside
    every log. ``u`` equals the cross-entropy ``-sum P log Q`` >= 0. Higher = more uncertain.

    Returns ``{"lca": u, "lca_entropy": H(P), "lca_kl": KL, "label_confidence": Q(c_g), "P": {...}, "Q": {...}}``.
    """
    if not (len(sample_classes) == len(sample_nll) == len(sample_len)) or not sample_classes:
        raise ValueError("need K >= 1 samples with one class, NLL and length each")
    if min(sample_len) < 1 or label_len < 1:
        raise ValueError("lengths must be >= 1 token")
    w = [math.exp(-nll / n) for nll, n in zip(sample_nll, sample_len)]
    total = sum(w)
    p: dict[str, float] = {}
    for c, wk in zip(sample_classes, w):
        p[c] = p.get(c, 0.0) + wk / total
    q_g = math.exp(-label_nll / label_len)
    q: dict[str, float] = {label_class: q_g}
    others = [c for c in p if c != label_class]
    mass_other = sum(p[c] for c in others)
    for c in others:
        q[c] = (1.0 - q_g) * (p[c] / mass_other if mass_other > floor else 1.0 / len(others))
    h = -sum(pc * math.log(max(pc, floor)) for pc in p.values())
    kl = sum(pc * (math.log(max(pc, floor)) - math.log(max(q.get(c, 0.0), floor))) for c, pc in p.items())
    return {"lca": max(0.0, h + kl), "lca_entropy": max(0.0, h), "lca_kl": kl, "label_confidence": q_g,
            "P": p, "Q": q}
