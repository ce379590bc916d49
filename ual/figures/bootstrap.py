"""Confidence intervals for a run's results: paired bootstrap over evaluation items, pooled over seeds.

Every method is evaluated on the same items, so the honest interval for "UAL minus SFT" resamples *items* (the
source of most of the noise at these sizes) and applies the same resample to both methods: the pairing removes the
item-difficulty variance that two independent intervals would double count. Seeds are pooled: a resampled item
brings the values of every seed of a method with it, so seed-to-seed variance is in the interval too.

Per-item values are read from the saved result files (no model): ``evaluate/<model>/controlled/scores.jsonl``
(+ ``data/controlled_spec.json``), ``evaluate/<model>/math_<set>.jsonl`` (+ ``generations_<set>.jsonl``),
``evaluate/<model>/chat_<set>.jsonl``, ``evaluate/<model>/annotations_<set>.json`` and
``evaluate/<model>/clustering.json`` (there the "items" are token pairs). ECE is not a mean of per-item values,
so it is recomputed on each resample from the pooled (confidence, correct) pairs.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ual.common.errors import InputError
from ual.common.io import iter_jsonl, read_json, read_jsonl
from ual.figures.results import load_metrics, method_label


@dataclass
class ItemMetric:
    """One metric's per-item values for one model: ``values[item_id]`` (float; NaN = undefined for that item) or,
    for ``kind == "ece"``, ``(confidence, correct)`` pairs."""

    key: str
    label: str
    higher_is_better: bool
    kind: str = "mean"  # "mean" or "ece"
    values: dict[str, Any] = field(default_factory=dict)


# (key, label with unit, higher is better, kind)
METRICS: dict[str, tuple[str, bool, str]] = {
    "controlled.low.accuracy_flexible_pct": ("low-entropy accuracy, flexible (%)", True, "mean"),
    "controlled.low.accuracy_strict_pct": ("low-entropy accuracy, strict (%)", True, "mean"),
    "controlled.low.gold_answer_nll_per_token": ("gold-answer NLL (nats/token)", False, "mean"),
    "controlled.low.ece": ("calibration ECE (0-1)", False, "ece"),
    "controlled.high.kl_true_model": ("KL(true ‖ model) over valid set (nats)", False, "mean"),
    "controlled.high.validity_mass": ("valid-answer probability mass (0-1)", True, "mean"),
    "controlled.high.validity_rate_pct": ("sampled validity (%)", True, "mean"),
    "controlled.high.coverage_pct": ("sampled coverage of valid set (%)", True, "mean"),
    "controlled.high.sample_kl_true_model": ("KL(true ‖ sampled answers) (nats)", False, "mean"),
}


def _controlled_items(model_dir: Path, spec: dict) -> list[ItemMetric]:
    from ual.evaluate.metrics.answers import answer_confidence, gold_answer
    from ual.evaluate.metrics.controlled import high_item_metrics

    path = model_dir / "controlled" / "scores.jsonl"
    # a resumed run may repeat an id; the last row counts (its file line is kept for error messages)
    latest = {r["id"]: (line, r) for line, r in iter_jsonl(path)}
    out = {k: ItemMetric(k, *METRICS[k]) for k in METRICS}
    for rid, (line, r) in latest.items():
        if r["family"] == "low":
            gold = gold_answer(r["answer"])
            for proto in ("flexible", "strict"):
                out[f"controlled.low.accuracy_{proto}_pct"].values[rid] = 100.0 * (r["greedy_answers"][proto] == gold)
            lp, n = r.get("gold_answer_logprob"), r.get("gold_answer_n_tokens")
            out["controlled.low.gold_answer_nll_per_token"].values[rid] = -lp / n if lp is not None and n else math.nan
            ans, alp = r["greedy_answers"]["flexible"], r["greedy_answer_logprobs"]["flexible"]
            out["controlled.low.ece"].values[rid] = (answer_confidence(ans, alp),
                                                      ans is not None and alp is not None and ans == gold)
        else:
            m = high_item_metrics(r, spec, line=line, path=path)
            for k in ("kl_true_model", "validity_mass", "validity_rate_pct", "coverage_pct", "sample_kl_true_model"):
                v = m.get(k)
                out[f"controlled.high.{k}"].values[rid] = math.nan if v is None else float(v)
    return [m for m in out.values() if m.values]


def _math_items(path: Path, name: str) -> list[ItemMetric]:
    """Flexible accuracy, gold-solution NLL and (confidence, correct) pairs from ``math_<set>.jsonl``; when the
    generations file ``generations_<set>.jsonl`` lies beside it, accuracy under every answer protocol from it instead
    (the same per-row values that ``metrics.json``'s protocol accuracies average)."""
    from ual.evaluate.metrics.answers import PROTOCOLS, row_accuracy

    nll = ItemMetric(f"math.{name}.gold_nll_per_token", f"gold solution NLL [{name}] (nats/token)", False)
    ece = ItemMetric(f"math.{name}.ece", f"math calibration ECE [{name}] (0-1)", False, "ece")
    rows = read_jsonl(path)
    for r in rows:
        nll.values[r["id"]] = float(r["gold_nll_per_token"])
        ece.values[r["id"]] = (float(r["confidence"]), bool(r["correct"]))
    gens = path.with_name(f"generations_{name}.jsonl")
    if not gens.exists():
        acc = ItemMetric(f"math.{name}.accuracy_flexible_pct", f"math accuracy, flexible [{name}] (%)", True)
        acc.values = {r["id"]: 100.0 * bool(r["correct"]) for r in rows}
        return [acc, nll, ece]
    pairs = list(iter_jsonl(gens, tolerate_torn=False))
    for line, r in pairs:
        if "id" not in r:
            raise InputError(gens, line, "id", "is missing")
    per = row_accuracy([r for _, r in pairs], PROTOCOLS, path=gens, lines=[line for line, _ in pairs])
    accs = []
    for proto in PROTOCOLS:
        m = ItemMetric(f"math.{name}.accuracy_{proto}_pct", f"math accuracy, {proto} [{name}] (%)", True)
        m.values = {r["id"]: 100.0 * v for (_, r), v in zip(pairs, per[proto])}
        accs.append(m)
    return accs + [nll, ece]


def _winrate_items(path: Path, name: str) -> list[ItemMetric]:
    m = ItemMetric(f"winrate.{name}.win_rate", f"win rate vs reference [{name}] (%)", True)
    for a in read_json(path):
        # AlpacaEval preference: 1 = reference (generator_1) wins, 2 = model wins, 1.5 = tie; None = judge failed
        pref = a.get("preference")
        m.values[a["instruction"]] = math.nan if pref is None else 100.0 * (float(pref) - 1.0)
    return [m]


def _chat_items(path: Path, name: str) -> list[ItemMetric]:
    nll = ItemMetric(f"chat.{name}.reference_nll_per_token", f"reference-response NLL [{name}] (nats/token)", False)
    d2 = ItemMetric(f"chat.{name}.distinct_2", f"distinct-2 of outputs [{name}] (0-1)", True)
    for r in read_jsonl(path):
        nll.values[r["id"]] = float(r["reference_nll_per_token"])
        d2.values[r["id"]] = math.nan if r.get("distinct_2") is None else float(r["distinct_2"])
    return [nll, d2]


def _clustering_items(path: Path) -> list[ItemMetric]:
    m = ItemMetric("clustering.silhouette", "token-pair silhouette (−1 to 1)", True)
    for p in read_json(path)["pairs"]:
        m.values[f"{p['a']}|{p['b']}"] = float(p["silhouette"])
    return [m]


def item_metrics(run_dir: str | Path) -> dict[str, dict[str, ItemMetric]]:
    """``{model name: {metric key: ItemMetric}}`` for every evaluated model of a run (or exported results)."""
    run_dir = Path(run_dir)
    spec_path = run_dir / "data" / "controlled_spec.json"
    spec = read_json(spec_path) if spec_path.exists() else None
    out: dict[str, dict[str, ItemMetric]] = {}
    for mdir in sorted(p for p in (run_dir / "evaluate").glob("*") if p.is_dir()):
        ms: list[ItemMetric] = []
        if spec is not None and (mdir / "controlled" / "scores.jsonl").exists():
            ms += _controlled_items(mdir, spec)
        for p in sorted(mdir.glob("math_*.jsonl")):
            ms += _math_items(p, p.stem[len("math_"):])
        for p in sorted(mdir.glob("chat_*.jsonl")):
            ms += _chat_items(p, p.stem[len("chat_"):])
        for p in sorted(mdir.glob("annotations_*.json")):
            ms += _winrate_items(p, p.stem[len("annotations_"):])
        if (mdir / "clustering.json").exists():
            ms += _clustering_items(mdir / "clustering.json")
        if ms:
            out[mdir.name] = {m.key: m for m in ms}
    return out


def _statistic(kind: str, data, cols: np.ndarray) -> float:
    """The statistic on the items ``cols`` (indices into the item axis), pooled over seeds."""
    if kind == "ece":
        from ual.evaluate.metrics.calibration import expected_calibration_error

        conf, corr = data
        return expected_calibration_error(conf[:, cols].ravel(), corr[:, cols].ravel())
    v = data[:, cols]
    return float(np.nanmean(v)) if np.isfinite(v).any() else math.nan


def _boot(kind: str, data, idx: np.ndarray) -> np.ndarray:
    """The statistic on each resample; ``idx``: [n_boot, n_items] item indices."""
    if kind == "ece":
        return np.array([_statistic(kind, data, row) for row in idx])
    v = data[:, idx]  # [seeds, n_boot, n_items]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample whose items are all undefined -> NaN
        return np.nanmean(v, axis=(0, 2))


def default_comparisons(groups: list[str]) -> list[tuple[str, str]]:
    """UAL at each eps against SFT and against LS at the same eps (and LS against SFT), where present."""
    out = []
    for g in groups:
        if g.startswith("ual"):
            eps = g[len("ual"):]
            if "sft" in groups:
                out.append((g, "sft"))
            if f"ls{eps}" in groups:
                out.append((g, f"ls{eps}"))
    for g in groups:
        if g.startswith("ls") and "sft" in groups:
            out.append((g, "sft"))
    return out


def bootstrap_table(run_dir: str | Path, *, n_boot: int = 2000, seed: int = 1337, level: float = 0.95,
                    comparisons: list[tuple[str, str]] | None = None) -> dict:
    """Point estimates with paired-bootstrap intervals per method group and metric, and paired differences.

    Returns ``{"groups": [{metric, label, higher_is_better, group, estimate, lo, hi, n_items, n_seeds}],
    "differences": [{metric, label, higher_is_better, a, b, estimate, lo, hi, p_a_better}], "n_boot", "level",
    "seed"}``. Units are those of the metric; ``p_a_better`` is the share of resamples in which ``a`` beats ``b``
    in the metric's better direction. Items are those every model of the run has (intersection).
    """
    per_model = item_metrics(run_dir)
    info = {m["model"]: m for m in load_metrics(run_dir)}
    groups: dict[str, list[str]] = {}
    for name in per_model:
        m = info.get(name, {"method": name, "mean_eps": None})
        groups.setdefault(method_label(m.get("method", name), m.get("mean_eps")), []).append(name)
    order = sorted(groups, key=lambda g: (["base", "sft", "ls", "ual"].index(g.split()[0])
                                          if g.split()[0] in ("base", "sft", "ls", "ual") else 9, g))
    comps = default_comparisons(order) if comparisons is None else comparisons
    rng = np.random.default_rng(seed)
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    keys = list(dict.fromkeys(k for ms in per_model.values() for k in ms))
    out_groups, out_diffs = [], []
    for key in keys:
        having = [n for n in per_model if key in per_model[n]]
        items = sorted(set.intersection(*(set(per_model[n][key].values) for n in having)))
        if not items:
            continue
        proto = per_model[having[0]][key]
        idx = rng.integers(0, len(items), size=(n_boot, len(items)))
        full = np.arange(len(items))
        data, boots = {}, {}
        for g in order:
            names = [n for n in groups[g] if key in per_model[n]]
            if not names:
                continue
            if proto.kind == "ece":
                pairs = [[per_model[n][key].values[i] for i in items] for n in names]
                data[g] = (np.array([[c for c, _ in row] for row in pairs], float),
                           np.array([[float(k) for _, k in row] for row in pairs], float))
            else:
                data[g] = np.array([[per_model[n][key].values[i] for i in items] for n in names], float)
            boots[g] = _boot(proto.kind, data[g], idx)
            ok = np.isfinite(boots[g])
            out_groups.append({"metric": key, "label": proto.label, "higher_is_better": proto.higher_is_better,
                               "group": g, "estimate": _statistic(proto.kind, data[g], full),
                               "lo": float(np.percentile(boots[g][ok], lo_q)) if ok.any() else math.nan,
                               "hi": float(np.percentile(boots[g][ok], hi_q)) if ok.any() else math.nan,
                               "n_items": len(items), "n_seeds": len(names)})
        for a, b in comps:
            if a not in data or b not in data:
                continue
            d = boots[a] - boots[b]
            ok = np.isfinite(d)
            better = (d[ok] > 0) if proto.higher_is_better else (d[ok] < 0)
            out_diffs.append({"metric": key, "label": proto.label, "higher_is_better": proto.higher_is_better,
                              "a": a, "b": b,
                              "estimate": _statistic(proto.kind, data[a], full) - _statistic(proto.kind, data[b], full),
                              "lo": float(np.percentile(d[ok], lo_q)) if ok.any() else math.nan,
                              "hi": float(np.percentile(d[ok], hi_q)) if ok.any() else math.nan,
                              "p_a_better": float(better.mean()) if ok.any() else math.nan,
                              "n_items": len(items)})
    return {"groups": out_groups, "differences": out_diffs, "n_boot": n_boot, "level": level, "seed": seed}


def pair_wins(run_dir: str | Path) -> list[dict]:
    """Token-clustering pairs where one group's silhouette (mean over its seeds) beats another's: for each of
    :func:`default_comparisons`, ``{a, b, n_pairs, n_a_higher}`` (the paper counts pairs where UAL beats LS/SFT)."""
    per_model = item_metrics(run_dir)
    info = {m["model"]: m for m in load_metrics(run_dir)}
    means: dict[str, dict[str, float]] = {}
    for name, ms in per_model.items():
        if "clustering.silhouette" not in ms:
            continue
        m = info.get(name, {"method": name, "mean_eps": None})
        g = method_label(m.get("method", name), m.get("mean_eps"))
        for pair, v in ms["clustering.silhouette"].values.items():
            means.setdefault(g, {}).setdefault(pair, []).append(v)
    avg = {g: {p: float(np.mean(v)) for p, v in d.items()} for g, d in means.items()}
    out = []
    for a, b in default_comparisons(sorted(avg)):
        common = sorted(set(avg[a]) & set(avg[b]))
        out.append({"a": a, "b": b, "n_pairs": len(common), "n_a_higher": sum(avg[a][p] > avg[b][p] for p in common)})
    return out


def _fmt(x: float, digits: int) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def markdown_tables(stats: dict, *, digits: int = 3) -> str:
    """Two Markdown tables: estimate [95% CI] per group and metric, and the paired differences."""
    groups = list(dict.fromkeys(r["group"] for r in stats["groups"]))
    labels = list(dict.fromkeys(r["label"] for r in stats["groups"]))
    cell = {(r["label"], r["group"]): r for r in stats["groups"]}
    pct = round(100 * stats["level"])
    lines = [f"| metric | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
    for lab in labels:
        hib = next(r["higher_is_better"] for r in stats["groups"] if r["label"] == lab)
        cells = []
        for g in groups:
            r = cell.get((lab, g))
            cells.append("" if r is None else f"{_fmt(r['estimate'], digits)} [{_fmt(r['lo'], digits)}, "
                                              f"{_fmt(r['hi'], digits)}]")
        lines.append(f"| {lab} ({'↑' if hib else '↓'}) | " + " | ".join(cells) + " |")
    out = "\n".join(lines)
    if stats["differences"]:
        d = ["", f"| metric | difference | estimate [{pct}% CI] | P(first is better) |", "|---|---|---|---|"]
        for r in stats["differences"]:
            d.append(f"| {r['label']} ({'↑' if r['higher_is_better'] else '↓'}) | {r['a']} − {r['b']} | "
                     f"{_fmt(r['estimate'], digits)} [{_fmt(r['lo'], digits)}, {_fmt(r['hi'], digits)}] | "
                     f"{_fmt(r['p_a_better'], 2)} |")
        out += "\n" + "\n".join(d)
    return out
