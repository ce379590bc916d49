"""Answer classes, predictive entropy and OUR RECONSTRUCTION of the label-confidence-aware (LCA) score
(reconstruction-v2, with the unsound reconstruction-v1 kept as an option).

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


def _gibbs_weight(nll: float, length: int) -> float:
    """``exp(-NLL / len)``: the geometric-mean token probability of a reply, in (0, 1]."""
    return math.exp(-nll / length)


def _check_lca_inputs(sample_classes, sample_nll, sample_len, label_len) -> None:
    if not (len(sample_classes) == len(sample_nll) == len(sample_len)) or not sample_classes:
        raise ValueError("need K >= 1 samples with one class, NLL and length each")
    if min(sample_len) < 1 or label_len < 1:
        raise ValueError("lengths must be >= 1 token")


LCA_VARIANTS = ("full", "pointwise", "v1")


def lca_reconstruction(sample_classes: Sequence[str], sample_nll: Sequence[float], sample_len: Sequence[int],
                       label_class: str, label_nll: float, label_len: int, *, variant: str = "full",
                       floor: float = LOG_FLOOR) -> dict:
    """Label-confidence-aware uncertainty (LCA), OUR RECONSTRUCTION (the published formula is not available offline;
    ual-method.md section 7). Higher = more uncertain, nats, >= 0.

    Reconstruction-v2 (``variant="full"``, the default, and ``"pointwise"``). Each reply gets its Gibbs weight
    ``w = exp(-NLL / len)`` (NLL summed over its tokens, nats; len in tokens). The label g (the candidate answer
    whose correctness is at stake: the greedy reply, or a training sample's reference) joins the K samples as one
    more weighted reply, its weight being its own confidence ``q_g = exp(-NLL(g) / len(g))``:
    ``P+(c) = (sum_{k in c} w_k + q_g [c = c_g]) / (sum_k w_k + q_g)``.

    - ``pointwise``: ``KL(delta_g || P+) = -log P+(c_g)``, the candidate's own term of a KL divergence from the
      point mass on the candidate's class to the label-augmented sample distribution ("pointwise KL", LCA-UQ's v2
      abstract).
    - ``full``: ``H(P+) - log P+(c_g)``: the samples' global entropy plus the pointwise term.

    Both fall strictly as q_g rises and as a sample's weight moves from another class onto c_g (proof:
    docs/elicitation.md; tests/unit/test_lca.py pins it), and both are 0 when every sample agrees
    with the label. ``variant="v1"`` is reconstruction-v1, kept for comparison only: ``Q(c_g) = q_g`` with ``1 - q_g``
    spread over the other classes in proportion to P (samples only), ``u = H(P) + KL(P || Q)``; it is unsound
    (it rises with q_g when no sample hits c_g).

    Returns the chosen ``lca`` plus every variant (``lca_full``, ``lca_pointwise``, ``lca_v1``), the v1 parts
    (``lca_entropy`` = H(P), ``lca_kl``), ``label_confidence`` (q_g), ``label_agreement`` (P+(c_g)),
    ``P`` (samples only), ``P_plus`` and ``Q`` (v1's label distribution), and ``variant``.
    """
    if variant not in LCA_VARIANTS:
        raise ValueError(f"variant must be one of {LCA_VARIANTS}, got {variant!r}")
    _check_lca_inputs(sample_classes, sample_nll, sample_len, label_len)
    w = [_gibbs_weight(nll, n) for nll, n in zip(sample_nll, sample_len)]
    total = sum(w)
    p: dict[str, float] = {}
    for c, wk in zip(sample_classes, w):
        p[c] = p.get(c, 0.0) + wk / total
    q_g = _gibbs_weight(label_nll, label_len)
    # ---- reconstruction-v2: the label is one more reply, weighted by its confidence
    p_plus: dict[str, float] = {}
    for c, wk in zip(sample_classes, w):
        p_plus[c] = p_plus.get(c, 0.0) + wk / (total + q_g)
    p_plus[label_class] = p_plus.get(label_class, 0.0) + q_g / (total + q_g)
    h_plus = -sum(pc * math.log(pc) for pc in p_plus.values() if pc > 0)
    pointwise = -math.log(max(p_plus[label_class], floor))
    # ---- reconstruction-v1 (unsound; kept selectable for comparison)
    q: dict[str, float] = {label_class: q_g}
    others = [c for c in p if c != label_class]
    mass_other = sum(p[c] for c in others)
    for c in others:
        q[c] = (1.0 - q_g) * (p[c] / mass_other if mass_other > floor else 1.0 / len(others))
    h = -sum(pc * math.log(max(pc, floor)) for pc in p.values())
    kl = sum(pc * (math.log(max(pc, floor)) - math.log(max(q.get(c, 0.0), floor))) for c, pc in p.items())
    out = {"lca_full": max(0.0, h_plus + pointwise), "lca_pointwise": max(0.0, pointwise),
           "lca_v1": max(0.0, h + kl), "lca_entropy": max(0.0, h), "lca_kl": kl, "label_confidence": q_g,
           "label_agreement": p_plus[label_class], "P": p, "P_plus": p_plus, "Q": q, "variant": variant}
    out["lca"] = out[f"lca_{variant}"]
    return out
