"""Read scores files back for display: per-source statistics, agreement between elicitors, source separation."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from ual.data.records import Record
from ual.elicit.scoring import latest_rows


def _scores(path: str | Path) -> dict[str, float]:
    return {i: float(row["score"]) for i, (_, row) in latest_rows(path).items() if row.get("score") is not None}


def scores_summary(path: str | Path, records: Sequence[Record]):
    """Per-source statistics of a scores file, as a pandas DataFrame indexed by source (plus an ``all`` row).

    Columns: ``n`` (records), ``scored``, ``parse_failures``, ``errors``, ``missing`` (no row yet), and ``mean``,
    ``std``, ``min``, ``median``, ``max`` of the scores (in the file's ``scale``).
    """
    import pandas as pd

    rows = {i: row for i, (_, row) in latest_rows(path).items()}
    table = []
    for r in records:
        row = rows.get(r.id)
        table.append({"source": r.source, "score": None if row is None else row.get("score"),
                      "status": "missing" if row is None else row.get("status")})
    df = pd.DataFrame(table, columns=["source", "score", "status"])
    df["score"] = pd.to_numeric(df["score"])

    def stats(g) -> dict:
        s = g["score"].dropna()
        return {"n": len(g), "scored": int(s.size), "parse_failures": int((g["status"] == "parse_failure").sum()),
                "errors": int((g["status"] == "error").sum()), "missing": int((g["status"] == "missing").sum()),
                "mean": s.mean(), "std": s.std(), "min": s.min(), "median": s.median(), "max": s.max()}

    out = {src: stats(g) for src, g in df.groupby("source", sort=True)}
    out["all"] = stats(df)
    return pd.DataFrame.from_dict(out, orient="index")


def rank_agreement(paths: Sequence[str | Path] | Mapping[str, str | Path]):
    """Spearman rank correlation between the scores of several files, on the ids scored in both (pairwise).

    ``paths``: a list (labels = ``backend:model`` of each file's first row, or the file name) or ``{label: path}``.
    Returns a square pandas DataFrame; ``.attrs["n"]`` holds the matching DataFrame of common-id counts.
    """
    import pandas as pd
    from scipy.stats import spearmanr

    if isinstance(paths, Mapping):
        labelled = dict(paths)
    else:
        labelled = {}
        for p in paths:
            rows = latest_rows(p)
            first = next(iter(rows.values()), (0, {}))[1]
            label = f"{first.get('backend')}:{first.get('model')}" if first else Path(p).name
            labelled[label if label not in labelled else str(p)] = p
    scores = {k: _scores(p) for k, p in labelled.items()}
    names = list(scores)
    rho = pd.DataFrame(index=names, columns=names, dtype=float)
    n = pd.DataFrame(index=names, columns=names, dtype=int)
    for a in names:
        for b in names:
            common = sorted(set(scores[a]) & set(scores[b]))
            n.loc[a, b] = len(common)
            if len(common) >= 2:
                rho.loc[a, b] = spearmanr([scores[a][i] for i in common], [scores[b][i] for i in common]).statistic
    rho.attrs["n"] = n
    return rho


def separation_auroc(path: str | Path, records: Sequence[Record], positive_sources: Sequence[str]) -> float:
    """AUROC of a scores file for telling ``positive_sources`` (expected high-uncertainty, e.g. role-play) from the
    rest, over the scored records (:func:`ual.evaluate.metrics.separation.separation_auroc`)."""
    from ual.evaluate.metrics.separation import separation_auroc as auroc

    scores = _scores(path)
    return auroc(scores, [r for r in records if r.id in scores], positive_sources)
