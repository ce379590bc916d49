"""Every figure of a run, drawn from its saved result files alone (``ual.figures.results``): no model, no torch.

Each function takes a run directory (and optionally an output path), draws one figure with labelled axes and
units, saves it when asked, and returns the matplotlib Figure. :func:`make_all` writes all of them to
``<run_dir>/figures/``; ``python -m ual figures --run DIR`` calls it.

One look for all of them: seaborn's "whitegrid" style in its "paper" context, one colour per method (the same in
every figure, with a legend), every seed visible as a dot or a thin line beside the group's estimate. Intervals are
those of the tables (``ual.figures.bootstrap``: two-level paired bootstrap, seeds then items), so a figure and a
table never disagree. Figures that need the bootstrap take its result as ``stats`` (computed once by
:func:`make_all`).
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

import matplotlib

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ual.figures import results  # noqa: E402

# seaborn's colour-blind palette, one colour per method, fixed so that a method looks the same in every figure.
_PALETTE = sns.color_palette("colorblind", 10)
METHOD_COLOURS = {"base": "#7f7f7f", "sft": _PALETTE[0], "ls": _PALETTE[1], "ual": _PALETTE[2],
                  "oracle": _PALETTE[4], "shuffled": _PALETTE[5], "dft": _PALETTE[3], "eaft": _PALETTE[9]}
OTHER_COLOUR = _PALETTE[7]


def _colour(group: str):
    return METHOD_COLOURS.get(results.group_method(group), OTHER_COLOUR)


@contextlib.contextmanager
def _style():
    """The one theme of every figure (seaborn whitegrid, paper context), without changing global state."""
    with sns.axes_style("whitegrid"), sns.plotting_context("paper"):
        yield


def _method_legend(fig, groups, **kw):
    """A figure-level legend: one colour patch per method present in ``groups``."""
    methods = list(dict.fromkeys(results.group_method(g) for g in results.group_order(groups)))
    handles = [Patch(color=METHOD_COLOURS.get(m, OTHER_COLOUR), label=m) for m in methods]
    fig.legend(handles=handles, loc=kw.pop("loc", "lower center"), ncol=kw.pop("ncol", min(len(handles), 8)),
               fontsize=kw.pop("fontsize", 8), frameon=False, title="method", title_fontsize=8, **kw)


def _save(fig, out: str | Path | None, dpi: int = 150):
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        tmp.replace(out)  # atomic: a kill never leaves half an image under the final name
    return fig


def _grid(n: int, ncol: int = 3, w: float = 4.2, h: float = 3.2):
    ncol = max(1, min(ncol, n))
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(w * ncol, h * nrow), squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return fig, list(axes.flat)[:n]


def _stats(run_dir, stats, n_boot):
    if stats is not None:
        return stats
    from ual.figures.bootstrap import bootstrap_table

    return bootstrap_table(run_dir, n_boot=n_boot)


def score_distribution(run_dir, out=None, dpi=150, **_):
    """Histogram of elicited uncertainty scores per training source (score units as the backend reports them)."""
    rows = [r for r in results.scores_with_sources(run_dir) if r["score"] is not None]
    if not rows:
        raise FileNotFoundError(f"{run_dir}/elicit/scores.jsonl has no scores")
    with _style():
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        sources = sorted({r["source"] for r in rows})
        all_scores = np.array([r["score"] for r in rows], dtype=float)
        bins = np.linspace(all_scores.min(), all_scores.max() + 1e-9, 25)
        for s in sources:
            ax.hist([r["score"] for r in rows if r["source"] == s], bins=bins, alpha=0.6,
                    label=f"{s} (n={sum(r['source'] == s for r in rows)})")
        backend = rows[0].get("backend") or "?"
        ax.set_xlabel(f"uncertainty score ({backend} backend; higher = more uncertain)")
        ax.set_ylabel("training samples")
        ax.set_title("Elicited uncertainty per source")
        ax.legend(fontsize=8)
    return _save(fig, out, dpi)


def eps_panels(run_dir) -> dict[str, str]:
    """The variant drawn for each method group in :func:`eps_distribution`: ``{group: variant folder}``, the
    lowest seed of every group whose eps is not 0 everywhere (every method of the run appears, UAL included)."""
    tables = results.eps_tables(run_dir)
    out: dict[str, str] = {}
    for name in sorted(tables, key=lambda n: (len(n), n)):
        rows = tables[name]
        if not rows or all(r["eps"] == 0 for r in rows):
            continue
        manifest = Path(run_dir) / "train" / name / "manifest.json"
        if manifest.exists():
            c = results.read_json(manifest).get("config", {})
            group = results.method_label(c.get("method", name.split("_")[0]), c.get("mean_eps"))
        else:
            group = name.rsplit("_seed", 1)[0].replace("_eps", " eps=")
        out.setdefault(group, name)
    return {g: out[g] for g in results.group_order(out)}


def eps_distribution(run_dir, out=None, dpi=150, **_):
    """Per-sample label-smoothing value (eps) of each method group (one seed), split by source."""
    panels = eps_panels(run_dir)
    if not panels:
        raise FileNotFoundError(f"{run_dir}/train/*/eps.jsonl not found (or every eps is 0)")
    tables = results.eps_tables(run_dir)
    with _style():
        fig, axes = _grid(len(panels), ncol=4, w=3.0, h=3.0)
        for ax, (group, name) in zip(axes, panels.items()):
            rows = tables[name]
            sources = sorted({r["source"] for r in rows})
            data = {"source": [r["source"] for r in rows], "eps": [r["eps"] for r in rows]}
            sns.boxplot(data=data, x="source", y="eps", order=sources, ax=ax, color=_colour(group), fliersize=0,
                        width=0.5, boxprops={"alpha": 0.5})
            sns.stripplot(data=data, x="source", y="eps", order=sources, ax=ax, color="k", size=1.5, alpha=0.4,
                          jitter=0.25)
            ax.axhline(np.mean(data["eps"]), color="k", lw=0.8, ls="--")
            ax.set_title(f"{group} ({name.rsplit('_', 1)[-1]})", fontsize=8)
            ax.set_xlabel("")
            ax.set_ylabel("eps (0-1)")
            ax.tick_params(axis="x", labelsize=7, rotation=15)
        fig.suptitle("Per-sample smoothing by source (dots: samples; dashed: mean eps)", fontsize=10)
        fig.tight_layout()
    return _save(fig, out, dpi)


def loss_curves(run_dir, out=None, dpi=150, smooth: int = 5, **_):
    """Training loss (nats per target token, the method's own loss) against optimiser step, every variant."""
    logs = results.loss_logs(run_dir)
    if not logs:
        raise FileNotFoundError(f"{run_dir}/train/*/log.jsonl not found")
    with _style():
        fig, ax = plt.subplots(figsize=(6.8, 4.0))
        groups = set()
        for name, rows in sorted(logs.items()):
            steps = np.array([r["step"] for r in rows])
            loss = np.array([r["loss"] for r in rows], dtype=float)
            k = max(1, min(smooth, len(loss)))
            sm = np.convolve(loss, np.ones(k) / k, mode="valid")
            group = name.split("_")[0]
            groups.add(group)
            ax.plot(steps[k - 1:], sm, color=_colour(group), alpha=0.75, lw=1.0)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel(f"training loss (nats/token, {smooth}-step mean)")
        ax.set_title("Training loss, every variant (one line per seed and eps)")
        _method_legend(fig, groups, loc="upper right", ncol=1, bbox_to_anchor=(0.98, 0.88))
    return _save(fig, out, dpi)


def _panel_rows(stats: dict, max_panels: int) -> list[tuple[str, str, list[dict]]]:
    """(metric key, label, group rows) per metric of the bootstrap table, dropping metrics where every group's
    estimate and interval are exactly 0 (nothing to see) - the selection rule of :func:`method_comparison`."""
    out = []
    for key in dict.fromkeys(r["metric"] for r in stats["groups"]):
        rows = [r for r in stats["groups"] if r["metric"] == key]
        vals = [v for r in rows for v in (r["estimate"], r["lo"], r["hi"], *r["per_seed"].values())]
        if all(v == 0 for v in vals if not (isinstance(v, float) and math.isnan(v))):
            continue
        out.append((key, rows[0]["label"], rows))
    return out[:max_panels]


def method_comparison(run_dir, out=None, dpi=150, max_panels: int = 16, n_boot: int = 2000, stats=None, **_):
    """One panel per metric: each group's estimate (bar) with its two-level bootstrap interval (the tables'),
    each seed as a dot; KL reference lines where known; a win rate whose judge failed its check is hatched and
    labelled as such instead of being drawn as data."""
    stats = _stats(run_dir, stats, n_boot)
    panels = _panel_rows(stats, max_panels)
    if not panels:
        raise FileNotFoundError(f"{run_dir}: no per-item results to compare")
    checks = results.judge_checks(run_dir)
    refs = results.kl_reference_lines(run_dir)
    order = results.group_order({r["group"] for _, _, rows in panels for r in rows})
    with _style():
        fig, axes = _grid(len(panels), ncol=4, w=3.6, h=3.0)
        for ax, (key, label, rows) in zip(axes, panels):
            by = {r["group"]: r for r in rows}
            parts = key.split(".")
            check = checks.get(parts[1]) if parts[0] == "winrate" else None
            failed = check is not None and not check["passed"]
            for i, g in enumerate(order):
                r = by.get(g)
                if r is None:
                    continue
                est = r["estimate"]
                err = [[max(est - r["lo"], 0)], [max(r["hi"] - est, 0)]] if not math.isnan(r["lo"]) else None
                ax.bar(i, est, color="#d0d0d0" if failed else _colour(g), alpha=0.8, yerr=err, capsize=2,
                       hatch="//" if failed else None, error_kw={"lw": 0.8})
                seeds = [v for v in r["per_seed"].values() if v is not None and not math.isnan(v)]
                ax.scatter(np.full(len(seeds), i), seeds, color="k", s=7, zorder=3)
            if key == "controlled.high.kl_true_model":
                for name, y, ls in (("uniform over valid set", refs.get("uniform"), "--"),
                                    ("training draws", refs.get("train_draws"), ":")):
                    if y is not None:
                        ax.axhline(y, color="k", lw=0.8, ls=ls, label=name)
                ax.legend(fontsize=6, loc="upper right")
            if failed:
                ax.text(0.5, 0.5, f"judge failed its check\n(position agreement {check['position_agreement']:.2f}"
                        f" < {results.JUDGE_MIN_POSITION_AGREEMENT})\nnot evidence", transform=ax.transAxes,
                        ha="center", va="center", fontsize=7, color="#b00000",
                        bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "#b00000"})
            ax.set_xticks(range(len(order)), order, rotation=40, fontsize=6, ha="right")
            ax.set_xlim(-0.6, len(order) - 0.4)
            better = "higher" if rows[0]["higher_is_better"] else "lower"
            ax.set_title(f"{label}\n({better} is better)", fontsize=7)
            ax.tick_params(axis="y", labelsize=7)
        _method_legend(fig, order, bbox_to_anchor=(0.5, -0.02))
        pct = round(100 * stats["level"])
        fig.suptitle(f"Evaluation per method: bars = estimate, whiskers = {pct}% two-level bootstrap interval "
                     "(seeds, then items), dots = seeds", fontsize=9)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
    return _save(fig, out, dpi)


def reliability_diagram(run_dir, out=None, dpi=150, **_):
    """Accuracy against confidence per bin on the low-entropy items: every method group (bins pooled over its
    seeds, bold) and every seed (thin), with the diagonal."""
    curves: dict[str, list[list[dict]]] = {}
    for m in results.load_metrics(run_dir):
        bins = (m.get("controlled", {}).get("low", {}) or {}).get("reliability_bins")
        if bins is None:
            for v in (m.get("math") or {}).values():
                bins = v.get("reliability_bins") if isinstance(v, dict) else None
                if bins:
                    break
        if bins:
            group = results.method_label(m.get("method", m["model"]), m.get("mean_eps"))
            curves.setdefault(group, []).append(_bins_as_rows(bins))
    if not curves:
        raise FileNotFoundError(f"no reliability bins in {run_dir}/evaluate/*/metrics.json")
    order = results.group_order(curves)
    styles = ["-", "--", ":", "-."]
    with _style():
        fig, ax = plt.subplots(figsize=(5.6, 5.0))
        ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--", label="perfect calibration")
        seen: dict[str, int] = {}
        for g in order:
            k = seen.setdefault(results.group_method(g), 0)
            seen[results.group_method(g)] += 1
            for rows in curves[g]:
                pts = [(b["confidence"], b["accuracy"]) for b in rows if b["count"] > 0]
                if pts:
                    ax.plot(*zip(*pts), color=_colour(g), lw=0.5, alpha=0.35)
            pooled = _pool_bins(curves[g])
            if pooled:
                x, y = zip(*pooled)
                ax.plot(x, y, marker="o", ms=3, lw=1.6, ls=styles[k % len(styles)], color=_colour(g),
                        label=f"{g} (n={len(curves[g])})")
        ax.set_xlabel("confidence in the greedy answer (0-1)")
        ax.set_ylabel("accuracy (0-1)")
        ax.set_title("Calibration on low-entropy items\n(bold: seeds pooled per bin; thin: one seed)", fontsize=9)
        ax.legend(fontsize=6, ncol=2, loc="upper left")
    return _save(fig, out, dpi)


def _pool_bins(per_seed: list[list[dict]]) -> list[tuple[float, float]]:
    """Count-weighted (confidence, accuracy) per bin over seeds' bins (same bin edges), non-empty bins only."""
    out = []
    for col in zip(*per_seed):
        n = sum(b["count"] for b in col)
        if n:
            out.append((sum(b["count"] * b["confidence"] for b in col if b["count"]) / n,
                        sum(b["count"] * b["accuracy"] for b in col if b["count"]) / n))
    return out


def _bins_as_rows(bins) -> list[dict]:
    """Reliability bins as a list of {confidence, accuracy, count}, from either a list of dicts or a dict of lists."""
    if isinstance(bins, dict):
        keys = {"confidence": ("confidence", "mean_confidence"), "accuracy": ("accuracy",), "count": ("count",)}
        cols = {k: next(bins[c] for c in cands if c in bins) for k, cands in keys.items()}
        return [dict(zip(cols, vals)) for vals in zip(*cols.values())]
    return [{"confidence": b.get("confidence", b.get("mean_confidence")), "accuracy": b["accuracy"],
             "count": b["count"]} for b in bins]


def clustering_distribution(run_dir, out=None, dpi=150, **_):
    """Distribution of the per-pair silhouette score over all token pairs, per model (the paper's analysis)."""
    ms = [m for m in results.load_metrics(run_dir) if (m.get("clustering") or {}).get("pairs")]
    if not ms:
        raise FileNotFoundError(f"no clustering results in {run_dir}/evaluate/*/metrics.json")
    with _style():
        fig, ax = plt.subplots(figsize=(6.8, 3.8))
        data = [[p["silhouette"] for p in m["clustering"]["pairs"]] for m in ms]
        parts = ax.violinplot(data, showmeans=True)
        for body, m in zip(parts["bodies"], ms):
            body.set_facecolor(_colour(m.get("method", "base")))
        ax.set_xticks(range(1, len(ms) + 1), [m["model"] for m in ms], rotation=30, fontsize=7, ha="right")
        ax.set_ylabel("silhouette of a token pair in 2-D PCA (-1 to 1)")
        ax.set_title(f"Token clustering in feature space (all {len(data[0])} pairs per model)")
        _method_legend(fig, {m.get("method", "base") for m in ms}, loc="upper right", ncol=1)
    return _save(fig, out, dpi)


def paired_differences(run_dir, out=None, dpi=150, max_panels: int = 16, n_boot: int = 2000, stats=None, **_):
    """Paired differences per metric, signed so that right of zero means the first method is better (for a
    lower-is-better metric the difference is negated, and the panel says so): two-level bootstrap interval (thick),
    items-only interval with seeds pooled (thin), per-seed differences (dots); * marks a primary test that survives
    Holm correction. Metrics whose differences are all exactly 0 get no panel; a win rate whose judge failed its
    check is labelled as not evidence."""
    stats = _stats(run_dir, stats, n_boot)
    diffs = [r for r in stats["differences"] if not math.isnan(r["estimate"])]
    if not diffs:
        raise FileNotFoundError(f"{run_dir}: no per-item results of two comparable methods")
    holm = {(r["metric"], r["a"], r["b"]): r["reject"] for r in stats.get("primary", [])}
    checks = results.judge_checks(run_dir)

    def all_zero(label):  # every difference, interval and seed exactly 0 (e.g. an accuracy nobody scores): no panel
        return all(v == 0 for r in diffs if r["label"] == label
                   for v in (r["estimate"], r["lo"], r["hi"], *r["per_seed"].values()))

    labels = [lab for lab in dict.fromkeys(r["label"] for r in diffs) if not all_zero(lab)][:max_panels]
    if not labels:
        raise FileNotFoundError(f"{run_dir}: every paired difference is exactly 0")
    n_rows = max(len([r for r in diffs if r["label"] == lab]) for lab in labels)
    with _style():
        fig, axes = _grid(len(labels), ncol=3, w=4.6, h=0.9 + 0.32 * n_rows)
        for ax, label in zip(axes, labels):
            rows = [r for r in diffs if r["label"] == label]
            sign = 1.0 if rows[0]["higher_is_better"] else -1.0
            for i, r in enumerate(rows):
                est = sign * r["estimate"]
                for (lo, hi), lw in (((r["lo_pooled"], r["hi_pooled"]), 0.8), ((r["lo"], r["hi"]), 2.4)):
                    if not math.isnan(lo):
                        a, b = sorted([sign * lo, sign * hi])
                        ax.plot([a, b], [i, i], color=_colour(r["a"]), lw=lw, alpha=0.9 if lw > 1 else 0.5)
                ax.plot(est, i, "o", color=_colour(r["a"]), ms=4, mec="k", mew=0.4)
                seeds = [sign * v for v in r["per_seed"].values() if v is not None and not math.isnan(v)]
                ax.scatter(seeds, np.full(len(seeds), i + 0.22), color="k", s=5, zorder=3)
                if holm.get((r["metric"], r["a"], r["b"])):
                    ax.annotate("*", (est, i - 0.35), ha="center", fontsize=9, color="#b00000")
            parts = rows[0]["metric"].split(".")
            check = checks.get(parts[1]) if parts[0] == "winrate" else None
            if check is not None and not check["passed"]:
                ax.text(0.5, 0.5, f"judge failed its check\n(position agreement {check['position_agreement']:.2f})"
                        ": not evidence", transform=ax.transAxes, ha="center", va="center", fontsize=6,
                        color="#b00000", bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "#b00000"})
            ax.axvline(0, color="k", lw=0.8)
            ax.set_yticks(range(len(rows)), [f"{r['a']} − {r['b']}" for r in rows], fontsize=6)
            ax.set_ylim(len(rows) - 0.4, -0.7)
            ax.xaxis.set_major_locator(ticker.MaxNLocator(nbins=4))
            fmt = ticker.ScalarFormatter(useMathText=True)
            fmt.set_powerlimits((-2, 3))
            ax.xaxis.set_major_formatter(fmt)
            ax.tick_params(axis="x", labelsize=7)
            flip = "" if sign > 0 else "\nlower is better: sign flipped, > 0 = first is lower"
            ax.set_title(f"{label}{flip}", fontsize=7)
            ax.set_xlabel("first − second, > 0: first is better", fontsize=7)
        pct = round(100 * stats["level"])
        fig.suptitle(f"Paired differences: thick = {pct}% two-level bootstrap (seeds, then items); thin = items "
                     "only, seeds pooled; dots = per-seed differences; * = primary test significant after Holm",
                     fontsize=8)
        fig.tight_layout(rect=(0, 0, 1, 0.97))
    return _save(fig, out, dpi)


def token_pair_choice(run_dir, a: str | None = None, b: str | None = None) -> dict:
    """The token pair :func:`token_pair_pca` draws, by a stated rule: among the pairs whose 2-D projections were
    saved (every pair of the most frequent tokens), the one whose silhouette difference between groups ``a`` and
    ``b`` (each averaged over its seeds; default UAL at its lowest eps against SFT, else the first two groups) is
    closest to the median difference over all pairs of the run (ties: smaller token ids). Returns ``{"a", "b",
    "pair": (id_a, id_b), "difference", "median_difference", "differences": {pair: diff}}``."""
    per_group: dict[str, dict[tuple, list]] = {}
    for m in results.load_metrics(run_dir):
        c = m.get("clustering") or {}
        if not c.get("pairs"):
            continue
        g = results.method_label(m.get("method", m["model"]), m.get("mean_eps"))
        for p in c["pairs"]:
            per_group.setdefault(g, {}).setdefault((p["a"], p["b"]), []).append(p["silhouette"])
    groups = results.group_order(per_group)
    if a is None or b is None:
        uals = [g for g in groups if results.group_method(g) == "ual"]
        a, b = (uals[0], "sft") if uals and "sft" in per_group else (groups[-1], groups[0]) if len(groups) > 1 \
            else (None, None)
    if a is None:
        raise FileNotFoundError(f"{run_dir}: token clustering of fewer than two method groups")
    diffs = {k: float(np.mean(per_group[a][k]) - np.mean(per_group[b][k])) for k in per_group[a] if k in per_group[b]}
    median = float(np.median(list(diffs.values())))
    saved = set()
    for p in Path(run_dir).glob("evaluate/*/clustering.json"):
        saved |= {(q["a"], q["b"]) for q in results.read_json(p).get("projections", [])}
    candidates = sorted(k for k in diffs if k in saved)
    if not candidates:
        raise FileNotFoundError(f"{run_dir}: no saved 2-D projections of token pairs (clustering.json before v2)")
    pair = min(candidates, key=lambda k: (abs(diffs[k] - median), k))
    return {"a": a, "b": b, "pair": pair, "difference": diffs[pair], "median_difference": median,
            "differences": diffs}


def token_pair_pca(run_dir, out=None, dpi=150, **_):
    """The paper's token-pair figure: one token pair's final hidden states in the pair's own 2-D PCA, one panel per
    method group (its lowest seed), for the pair chosen by :func:`token_pair_choice`; beside them, the distribution
    of that silhouette difference over all pairs with the chosen pair marked, and each group's class separation R²
    over all top-k tokens at once."""
    choice = token_pair_choice(run_dir)
    models: dict[str, dict] = {}
    for m in sorted(results.load_metrics(run_dir), key=lambda m: (m.get("seed") or 0)):
        g = results.method_label(m.get("method", m["model"]), m.get("mean_eps"))
        path = Path(run_dir) / "evaluate" / m["model"] / "clustering.json"
        if g not in models and path.exists():
            models[g] = {"model": m["model"], **results.read_json(path)}
    order = results.group_order(models)
    ta, tb = choice["pair"]
    with _style():
        fig, axes = _grid(len(order) + 1, ncol=4, w=3.0, h=3.0)
        for ax, g in zip(axes, order):
            c = models[g]
            proj = next((p for p in c.get("projections", []) if (p["a"], p["b"]) == (ta, tb)), None)
            sil = next((p["silhouette"] for p in c["pairs"] if (p["a"], p["b"]) == (ta, tb)), math.nan)
            if proj is None:
                ax.text(0.5, 0.5, "no projection saved", ha="center", transform=ax.transAxes)
                continue
            texts = {t["id"]: t.get("text") for t in c.get("tokens", [])}
            for pts, tid, colour in ((proj["xa"], ta, "#1f77b4"), (proj["xb"], tb, "#d62728")):
                xy = np.array(pts)
                ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.6, color=colour, label=repr(texts.get(tid, tid)))
            sep = c.get("class_separation") or {}
            ax.set_title(f"{g} ({c['model'].rsplit('_', 1)[-1]})\nsilhouette {sil:.3f}; R² (all top-k) "
                         f"{sep.get('r2', math.nan):.3f}", fontsize=7)
            ax.tick_params(labelsize=6)
            ax.legend(fontsize=6, loc="best", markerscale=2)
        ax = axes[len(order)]
        d = np.array(list(choice["differences"].values()))
        ax.hist(d, bins=40, color="#999999")
        ax.axvline(choice["difference"], color="#b00000", lw=1.2, label="drawn pair")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel(f"silhouette {choice['a']} − {choice['b']}, per pair", fontsize=7)
        ax.set_ylabel("token pairs", fontsize=7)
        ax.set_title(f"all {len(d)} pairs (seeds averaged)", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6)
        fig.suptitle(f"Token pair in feature space (2-D PCA of the pair's final hidden states). Pair chosen by rule: "
                     f"among the saved pairs, the one whose {choice['a']} − {choice['b']} silhouette difference is "
                     f"closest to the median over all pairs ({choice['median_difference']:+.4f})", fontsize=7)
        fig.tight_layout(rect=(0, 0, 1, 0.95))
    return _save(fig, out, dpi)


SWEEP_METRICS = ("controlled.low.accuracy_flexible_pct", "controlled.low.gold_nll_per_token",
                 "controlled.high.kl_true_model", "controlled.high.validity_rate_pct", "controlled.low.ece",
                 "math.gsm8k.accuracy_flexible_pct", "math.gsm8k.gold_nll_per_token")


def eps_sweep(run_dir, out=None, dpi=150, n_boot: int = 2000, stats=None, **_):
    """Metric against mean eps for LS and UAL, the way the paper's eps grid is read: eps 0 is SFT (both methods
    reduce to it), each eps point is the group's estimate with its two-level interval, dots are seeds."""
    stats = _stats(run_dir, stats, n_boot)
    rows = [r for r in stats["groups"] if r["metric"] in SWEEP_METRICS
            and (results.group_method(r["group"]) in ("ls", "ual") or r["group"] == "sft")]
    keys = [k for k in SWEEP_METRICS if any(r["metric"] == k and r["group"] != "sft" for r in rows)]
    if not keys:
        raise FileNotFoundError(f"{run_dir}: no ls or ual results to sweep")
    with _style():
        fig, axes = _grid(len(keys), ncol=3, w=3.8, h=3.0)
        for ax, key in zip(axes, keys):
            sub = [r for r in rows if r["metric"] == key]
            sft = next((r for r in sub if r["group"] == "sft"), None)
            for j, method in enumerate(("ls", "ual")):
                pts = sorted((results.group_eps(r["group"]), r) for r in sub if results.group_method(r["group"]) == method)
                if sft is not None:
                    pts = [(0.0, sft)] + pts
                if not pts:
                    continue
                x = np.array([e for e, _ in pts]) + (j - 0.5) * 0.006  # a small offset keeps the two readable
                y = np.array([r["estimate"] for _, r in pts])
                err = np.array([[max(r["estimate"] - r["lo"], 0), max(r["hi"] - r["estimate"], 0)] for _, r in pts]).T
                ax.errorbar(x, y, yerr=err, color=_colour(method), marker="o", ms=4, capsize=2, lw=1.2, label=method)
                for xi, (_, r) in zip(x, pts):
                    seeds = [v for v in r["per_seed"].values() if v is not None and not math.isnan(v)]
                    ax.scatter(np.full(len(seeds), xi), seeds, color=_colour(method), s=8, alpha=0.6,
                               edgecolor="k", linewidth=0.3, zorder=3)
            better = "higher" if sub[0]["higher_is_better"] else "lower"
            ax.set_title(f"{sub[0]['label']}\n({better} is better)", fontsize=7)
            ax.set_xlabel("mean eps (0 = sft)", fontsize=7)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6)
        fig.suptitle("Eps sweep: estimate with two-level bootstrap interval; dots = seeds (a point with one dot "
                     "was trained with one seed)", fontsize=8)
        fig.tight_layout(rect=(0, 0, 1, 0.95))
    return _save(fig, out, dpi)


FIGURES = {
    "score_distribution": score_distribution,
    "eps_distribution": eps_distribution,
    "loss_curves": loss_curves,
    "method_comparison": method_comparison,
    "paired_differences": paired_differences,
    "eps_sweep": eps_sweep,
    "reliability_diagram": reliability_diagram,
    "clustering_distribution": clustering_distribution,
    "token_pair_pca": token_pair_pca,
}
NEEDS_STATS = ("method_comparison", "paired_differences", "eps_sweep")


def make_all(run_dir, *, out_dir=None, formats=("png",), dpi: int = 150, n_boot: int = 2000) -> list[str]:
    """Write every figure whose inputs exist to ``out_dir`` (default ``<run_dir>/figures``); returns the paths.

    The bootstrap behind the comparison figures runs once. A figure whose result files are absent (e.g. no
    clustering in this run) is skipped and reported.
    """
    out_dir = Path(out_dir) if out_dir else Path(run_dir) / "figures"
    written = []
    stats = None
    for name, fn in FIGURES.items():
        try:
            if name in NEEDS_STATS and stats is None:
                stats = _stats(run_dir, None, n_boot)
            fig = fn(run_dir, stats=stats)
        except FileNotFoundError as e:
            print(f"skipped {name}: {e}")
            continue
        for fmt in formats:
            _save(fig, out_dir / f"{name}.{fmt}", dpi)
            written.append(str(out_dir / f"{name}.{fmt}"))
        plt.close(fig)
    return written
