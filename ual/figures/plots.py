"""Every figure of a run, drawn from its saved result files alone (``ual.figures.results``): no model, no torch.

Each function takes a run directory (and optionally an output path), draws one figure with labelled axes and
units, saves it when asked, and returns the matplotlib Figure. :func:`make_all` writes all of them to
``<run_dir>/figures/``; ``python -m ual figures --run DIR`` calls it.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ual.figures import results  # noqa: E402

METHOD_COLOURS = {"base": "#7f7f7f", "sft": "#1f77b4", "ls": "#ff7f0e", "ual": "#2ca02c"}


def _colour(group: str) -> str:
    return METHOD_COLOURS.get(group.split()[0], "#9467bd")


def _save(fig, out: str | Path | None, dpi: int = 150):
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        tmp.replace(out)  # atomic: a kill never leaves half an image under the final name
    return fig


def score_distribution(run_dir, out=None, dpi=150):
    """Histogram of elicited uncertainty scores per training source (score units as the backend reports them)."""
    rows = [r for r in results.scores_with_sources(run_dir) if r["score"] is not None]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    if not rows:
        raise FileNotFoundError(f"{run_dir}/elicit/scores.jsonl has no scores")
    sources = sorted({r["source"] for r in rows})
    all_scores = np.array([r["score"] for r in rows], dtype=float)
    bins = np.linspace(all_scores.min(), all_scores.max() + 1e-9, 25)
    for s in sources:
        ax.hist([r["score"] for r in rows if r["source"] == s], bins=bins, alpha=0.6, label=f"{s} (n={sum(r['source'] == s for r in rows)})")
    backend = rows[0].get("backend") or "?"
    ax.set_xlabel(f"uncertainty score ({backend} backend; higher = more uncertain)")
    ax.set_ylabel("training samples")
    ax.set_title("Elicited uncertainty per source")
    ax.legend(fontsize=8)
    return _save(fig, out, dpi)


def eps_distribution(run_dir, out=None, dpi=150):
    """Per-sample label-smoothing value (eps) of each variant, split by source: the score-to-eps mapping's result."""
    tables = results.eps_tables(run_dir)
    tables = {k: v for k, v in tables.items() if not k.startswith("sft")}
    if not tables:
        raise FileNotFoundError(f"{run_dir}/train/*/eps.jsonl not found (or only sft)")
    names = sorted(tables)[: 6]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], names):
        rows = tables[name]
        sources = sorted({r["source"] for r in rows})
        data = [[r["eps"] for r in rows if r["source"] == s] for s in sources]
        ax.boxplot(data, showfliers=True)
        ax.set_xticks(range(1, len(sources) + 1), sources, rotation=20, fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.axhline(np.mean([r["eps"] for r in rows]), color="k", lw=0.8, ls="--", label="mean eps")
    axes[0][0].set_ylabel("label smoothing eps (0-1)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Per-sample smoothing by source")
    return _save(fig, out, dpi)


def loss_curves(run_dir, out=None, dpi=150, smooth: int = 5):
    """Training loss (nats per target token, smoothed loss incl. the smoothing term) against optimiser step."""
    logs = results.loss_logs(run_dir)
    if not logs:
        raise FileNotFoundError(f"{run_dir}/train/*/log.jsonl not found")
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for name, rows in sorted(logs.items()):
        steps = np.array([r["step"] for r in rows])
        loss = np.array([r["loss"] for r in rows], dtype=float)
        k = max(1, min(smooth, len(loss)))
        sm = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], sm, label=name, color=_colour(name.split("_")[0]), alpha=0.9,
                ls="-" if "seed" not in name or name.endswith(sorted(logs)[0].split("_")[-1]) else ":")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(f"training loss (nats/token, {smooth}-step mean)")
    ax.set_title("Training loss per variant")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out, dpi)


def method_comparison(run_dir, out=None, dpi=150, max_panels: int = 12):
    """One panel per headline metric: mean over seeds per method group, 95% t-interval bars, seeds as dots."""
    df = results.metrics_frame(run_dir)
    if df.empty:
        raise FileNotFoundError(f"{run_dir}/evaluate/*/metrics.json not found")
    df["group"] = [results.method_label(m, e) for m, e in zip(df["method"], df["mean_eps"])]
    labels = list(dict.fromkeys(df["label"]))[:max_panels]
    ncol = min(3, len(labels))
    nrow = math.ceil(len(labels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    order = sorted(df["group"].unique(), key=lambda g: (["base", "sft", "ls", "ual"].index(g.split()[0])
                                                         if g.split()[0] in ("base", "sft", "ls", "ual") else 9, g))
    from scipy import stats

    for ax, label in zip(axes.flat, labels):
        sub = df[df["label"] == label]
        for i, g in enumerate(order):
            vals = sub[sub["group"] == g]["value"].to_numpy()
            if vals.size == 0:
                continue
            mean = vals.mean()
            half = stats.t.ppf(0.975, vals.size - 1) * vals.std(ddof=1) / math.sqrt(vals.size) if vals.size > 1 else 0
            ax.bar(i, mean, color=_colour(g), alpha=0.75, yerr=half, capsize=3)
            ax.scatter(np.full(vals.size, i), vals, color="k", s=8, zorder=3)
        ax.set_xticks(range(len(order)), order, rotation=30, fontsize=7, ha="right")
        better = "higher" if sub["higher_is_better"].iloc[0] else "lower"
        ax.set_title(f"{label}\n({better} is better)", fontsize=8)
    for ax in list(axes.flat)[len(labels):]:
        ax.axis("off")
    fig.suptitle("Evaluation per method (bars: mean over seeds, 95% t-interval; dots: seeds)", fontsize=10)
    fig.tight_layout()
    return _save(fig, out, dpi)


def reliability_diagram(run_dir, out=None, dpi=150):
    """Accuracy against confidence per bin for each evaluated model (low-entropy items), with the diagonal."""
    ms = results.load_metrics(run_dir)
    curves = []
    for m in ms:
        bins = (m.get("controlled", {}).get("low", {}) or {}).get("reliability_bins")
        if bins is None:
            for v in (m.get("math") or {}).values():
                bins = v.get("reliability_bins") if isinstance(v, dict) else None
                if bins:
                    break
        if bins:
            curves.append((m["model"], m.get("method", m["model"]), bins))
    if not curves:
        raise FileNotFoundError(f"no reliability bins in {run_dir}/evaluate/*/metrics.json")
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--", label="perfect calibration")
    for name, method, bins in curves[:8]:
        pts = [(b["confidence"], b["accuracy"]) for b in _bins_as_rows(bins) if b["count"] > 0]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, marker="o", ms=3, label=name, color=_colour(method))
    ax.set_xlabel("confidence in the greedy answer (0-1)")
    ax.set_ylabel("accuracy (0-1)")
    ax.set_title("Calibration on low-entropy items")
    ax.legend(fontsize=6)
    return _save(fig, out, dpi)


def _bins_as_rows(bins) -> list[dict]:
    """Reliability bins as a list of {confidence, accuracy, count}, from either a list of dicts or a dict of lists."""
    if isinstance(bins, dict):
        keys = {"confidence": ("confidence", "mean_confidence"), "accuracy": ("accuracy",), "count": ("count",)}
        cols = {k: next(bins[c] for c in cands if c in bins) for k, cands in keys.items()}
        return [dict(zip(cols, vals)) for vals in zip(*cols.values())]
    return [{"confidence": b.get("confidence", b.get("mean_confidence")), "accuracy": b["accuracy"],
             "count": b["count"]} for b in bins]


def clustering_distribution(run_dir, out=None, dpi=150):
    """Distribution of the per-pair silhouette score over all token pairs, per model (the paper's analysis)."""
    ms = [m for m in results.load_metrics(run_dir) if (m.get("clustering") or {}).get("pairs")]
    if not ms:
        raise FileNotFoundError(f"no clustering results in {run_dir}/evaluate/*/metrics.json")
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    data = [[p["silhouette"] for p in m["clustering"]["pairs"]] for m in ms]
    ax.violinplot(data, showmeans=True)
    ax.set_xticks(range(1, len(ms) + 1), [m["model"] for m in ms], rotation=25, fontsize=7, ha="right")
    ax.set_ylabel("silhouette of a token pair in 2-D PCA (-1 to 1)")
    ax.set_title(f"Token clustering in feature space (all {len(data[0])} pairs per model)")
    return _save(fig, out, dpi)


def paired_differences(run_dir, out=None, dpi=150, max_panels: int = 12, n_boot: int = 2000):
    """Paired differences (UAL - SFT, UAL - LS, LS - SFT) per metric with 95% bootstrap intervals over items
    pooled over seeds (``ual.figures.bootstrap``), signed so that right of zero means the first method is better."""
    from ual.figures.bootstrap import bootstrap_table

    diffs = [r for r in bootstrap_table(run_dir, n_boot=n_boot)["differences"] if not math.isnan(r["estimate"])]
    if not diffs:
        raise FileNotFoundError(f"{run_dir}: no per-item results of two comparable methods")
    labels = list(dict.fromkeys(r["label"] for r in diffs))[:max_panels]
    ncol = min(3, len(labels))
    nrow = math.ceil(len(labels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.4 * ncol, 2.4 * nrow), squeeze=False)
    for ax, label in zip(axes.flat, labels):
        rows = [r for r in diffs if r["label"] == label]
        for i, r in enumerate(rows):
            sign = 1.0 if r["higher_is_better"] else -1.0
            est = sign * r["estimate"]
            lo, hi = sorted([sign * r["lo"], sign * r["hi"]])
            ax.errorbar(est, i, xerr=[[max(est - lo, 0)], [max(hi - est, 0)]], fmt="o", color=_colour(r["a"]),
                        capsize=3)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(rows)), [f"{r['a']} − {r['b']}" for r in rows], fontsize=7)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.set_title(label, fontsize=8)
        ax.set_xlabel("improvement of first over second\n(metric units; > 0: first is better)", fontsize=7)
    for ax in list(axes.flat)[len(labels):]:
        ax.axis("off")
    fig.suptitle("Paired differences, 95% bootstrap intervals (items resampled, seeds pooled)", fontsize=10)
    fig.tight_layout()
    return _save(fig, out, dpi)


FIGURES = {
    "score_distribution": score_distribution,
    "eps_distribution": eps_distribution,
    "loss_curves": loss_curves,
    "method_comparison": method_comparison,
    "paired_differences": paired_differences,
    "reliability_diagram": reliability_diagram,
    "clustering_distribution": clustering_distribution,
}


def make_all(run_dir, *, out_dir=None, formats=("png",), dpi: int = 150) -> list[str]:
    """Write every figure whose inputs exist to ``out_dir`` (default ``<run_dir>/figures``); returns the paths.

    A figure whose result files are absent (e.g. no clustering in this run) is skipped and reported.
    """
    out_dir = Path(out_dir) if out_dir else Path(run_dir) / "figures"
    written = []
    for name, fn in FIGURES.items():
        try:
            fig = fn(run_dir)
        except FileNotFoundError as e:
            print(f"skipped {name}: {e}")
            continue
        for fmt in formats:
            _save(fig, out_dir / f"{name}.{fmt}", dpi)
            written.append(str(out_dir / f"{name}.{fmt}"))
        plt.close(fig)
    return written
