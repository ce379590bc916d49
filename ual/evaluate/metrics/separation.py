"""How well an uncertainty score separates two groups of samples (the one AUROC every stage uses)."""
from __future__ import annotations

from typing import Mapping, Sequence

from ual.common.errors import InputError


def separation_auroc(scores_by_id: Mapping[str, float | None], records: Sequence, positive_sources: Sequence[str],
                     negative_sources: Sequence[str] | None = None) -> float:
    """AUROC of a score (higher = more uncertain) for telling records of ``positive_sources`` (label 1, e.g. the
    high-entropy family or role-play) from the others (label 0): 1 = every positive above every negative, 0.5 =
    chance. ``records`` need ``.id`` and ``.source``; every record needs a score. With ``negative_sources``, a
    record of any other source is an error."""
    from sklearn.metrics import roc_auc_score

    pos = set(positive_sources)
    neg = None if negative_sources is None else set(negative_sources)
    y, s = [], []
    for i, r in enumerate(records):
        if neg is not None and r.source not in pos | neg:
            raise InputError(None, i + 1, "source", f"expected one of {sorted(pos | neg)}, got {r.source!r}")
        if scores_by_id.get(r.id) is None:
            raise InputError(None, i + 1, "id", f"no score for record {r.id!r}")
        y.append(int(r.source in pos))
        s.append(float(scores_by_id[r.id]))
    if len(set(y)) < 2:
        raise InputError(None, None, "source", "AUROC needs records of both groups")
    return float(roc_auc_score(y, s))
