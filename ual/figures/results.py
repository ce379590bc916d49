"""Read a run's saved result files into tables (no model, no torch): the layer figures and reports stand on.

Layout read: ``evaluate/<model>/metrics.json`` (one per evaluated model: ``base`` or a training variant),
``train/<variant>/{log.jsonl,eps.jsonl,manifest.json}``, ``elicit/scores.jsonl``, ``data/train.jsonl``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ual.common.io import read_json, read_jsonl

# (flattened metric key pattern, label with unit, higher is better). "*" matches one path component.
HEADLINE: list[tuple[str, str, bool]] = [
    ("controlled.low.accuracy_flexible_pct", "low-entropy accuracy, flexible (%)", True),
    ("controlled.low.accuracy_strict_pct", "low-entropy accuracy, strict (%)", True),
    ("controlled.low.gold_nll_per_token", "whole-solution NLL (nats/token)", False),
    ("controlled.low.gold_answer_nll_per_token", "answer NLL given the gold solution (nats/token)", False),
    ("controlled.low.ece", "calibration ECE (0-1)", False),
    ("controlled.low.brier", "Brier score of answer confidence (0-1)", False),
    ("controlled.low.auroc", "confidence-vs-correctness AUROC (0.5 = chance)", True),
    ("controlled.high.kl_true_model", "exact KL(true ‖ model) over valid set (nats)", False),
    ("controlled.high.validity_mass", "valid-answer probability mass (0-1)", True),
    ("controlled.high.coverage_pct", "sampled coverage of valid set (%)", True),
    ("controlled.high.validity_rate_pct", "sampled validity (%)", True),
    ("controlled.high.sample_kl_excess", "sampled-answer KL above a perfect sampler's (nats)", False),
    ("math.*.protocols.*.accuracy", "math accuracy (%)", True),
    ("math.*.gold_nll_per_token", "gold solution NLL (nats/token)", False),
    ("math.*.ece", "math calibration ECE (0-1)", False),
    ("chat.*.reference_nll_per_token", "reference-response NLL (nats/token)", False),
    ("chat.*.distinct_2", "distinct-2 of outputs (0-1)", True),
    ("winrate.*.win_rate", "win rate vs reference (%)", True),
    ("winrate.*.length_controlled_winrate", "length-controlled win rate (%)", True),
    ("clustering.mean_silhouette", "token-clustering silhouette (mean over pairs)", True),
    ("clustering.class_separation_r2", "class separation R² over the top-k tokens (Kornblith et al.)", True),
    ("clustering.nc1", "within-class variability NC1 over the top-k tokens", False),
]


# The top-level metrics.json sections the headline reads: a section added to HEADLINE is read with no other change.
_HEADLINE_SECTIONS = frozenset(pattern.split(".")[0] for pattern, _, _ in HEADLINE)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": value} for scalar leaves (lists are skipped)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) or v is None:
            out[key] = v
    return out


def _match(pattern: str, key: str) -> bool:
    p, k = pattern.split("."), key.split(".")
    return len(p) == len(k) and all(a == "*" or a == b for a, b in zip(p, k))


def headline_keys(keys) -> list[tuple[str, str, bool]]:
    """The headline metrics present among ``keys``: (key, label, higher_is_better), in HEADLINE order."""
    out = []
    for pattern, label, hib in HEADLINE:
        for k in sorted(keys):
            if _match(pattern, k):
                detail = [b for a, b in zip(pattern.split("."), k.split(".")) if a == "*"]
                out.append((k, label + (f" [{', '.join(detail)}]" if detail else ""), hib))
    return out


def load_metrics(run_dir: str | Path) -> list[dict]:
    """Every ``evaluate/*/metrics.json`` of a run, each with ``model``, ``method``, ``mean_eps``, ``seed``."""
    out = []
    for p in sorted(Path(run_dir).glob("evaluate/*/metrics.json")):
        m = read_json(p)
        m.setdefault("model", p.parent.name)
        out.append(m)
    return out


def metrics_frame(run_dir: str | Path):
    """A long table: one row per (model, metric) with method, mean_eps, seed and value."""
    import pandas as pd

    rows = []
    for m in load_metrics(run_dir):
        flat = flatten({k: v for k, v in m.items() if k in _HEADLINE_SECTIONS})
        for key, label, hib in headline_keys(flat):
            v = flat[key]
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            rows.append({"model": m["model"], "method": m.get("method", m["model"]), "mean_eps": m.get("mean_eps"),
                         "seed": m.get("seed"), "metric": key, "label": label, "higher_is_better": hib,
                         "value": float(v)})
    return pd.DataFrame(rows, columns=["model", "method", "mean_eps", "seed", "metric", "label", "higher_is_better",
                                       "value"])


# Methods whose variants carry no eps (the training stage names them <method>_seed<N>); ual.train.config knows the
# same set, but ual.figures imports no training code.
NO_EPS_METHODS = ("base", "sft", "dft", "eaft", "ava_d", "ava_p", "bt_rm")
METHOD_ORDER = ("base", "sft", "ls", "ual", "oracle", "shuffled", "dft", "eaft", "ava_d", "ava_p", "bt_rm")


def method_label(method: str, mean_eps: float | None) -> str:
    """``"ual eps=0.1"``-style label of a method group (``base``, ``sft``, ``dft``, ``eaft`` and the AVA methods carry
    no eps)."""
    if method in NO_EPS_METHODS or mean_eps is None:
        return method
    return f"{method} eps={mean_eps:g}"


def group_method(group: str) -> str:
    """The method of a group label (``"ual eps=0.1"`` -> ``"ual"``)."""
    return group.split()[0]


def group_eps(group: str) -> float | None:
    """The mean eps of a group label, None for groups without one."""
    return float(group.split("eps=")[1]) if "eps=" in group else None


def group_order(groups) -> list[str]:
    """Group labels in reading order: base, sft, ls, ual, oracle, shuffled, dft, eaft, others; by eps within."""
    def key(g):
        m = group_method(g)
        return (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), group_eps(g) or 0.0, g)

    return sorted(groups, key=key)


def kl_reference_lines(run_dir: str | Path) -> dict:
    """Reference lines for the exact KL on the run's held-out open prompts (``ual.evaluate.metrics.controlled.
    reference_kls`` averaged over the spec's high-entropy eval items): ``{"uniform", "train_draws"}`` in nats
    (``train_draws`` None for benchmark version 1, whose spec has no training counts); ``{}`` without a spec."""
    from ual.evaluate.metrics.controlled import reference_kls

    path = Path(run_dir) / "data" / "controlled_spec.json"
    if not path.exists():
        return {}
    spec = read_json(path)
    cats = [it["category"] for it in spec.get("eval_items", {}).values() if it.get("family") == "high"]
    if not cats:
        return {}
    refs = [reference_kls(spec, c) for c in cats]
    out = {"uniform": sum(r["uniform"] for r in refs) / len(refs), "train_draws": None}
    if all(r["train_draws"] is not None for r in refs):
        out["train_draws"] = sum(r["train_draws"] for r in refs) / len(refs)
    return out


# A pairwise judge whose two presentation orders pick the same winner in fewer than half of the pairs is no better
# than its position bias (a judge that ignores the answers and always prefers one position scores 0); our rule.
JUDGE_MIN_POSITION_AGREEMENT = 0.5


def judge_checks(run_dir: str | Path) -> dict[str, dict]:
    """Per evaluation set with judge annotations: ``{set: {"position_agreement" (0-1, pooled over every model's
    judged pairs), "n_pairs", "passed"}}``. Position agreement: share of pairs whose two orders pick the same winner
    (both preferences above 1.5 or both below), as ``ual.evaluate.judge.position_agreement`` computes it per file
    (not imported here: ual.figures imports no evaluation-running code)."""
    pairs: dict[str, list[tuple[float, float]]] = {}
    for p in sorted(Path(run_dir).glob("evaluate/*/annotations_*.json")):
        name = p.stem[len("annotations_"):]
        for a in read_json(p):
            x, y = a.get("preference_reference_first"), a.get("preference_model_first")
            if x is not None and y is not None:
                pairs.setdefault(name, []).append((float(x), float(y)))
    out = {}
    for name, both in pairs.items():
        agree = sum((x > 1.5) == (y > 1.5) for x, y in both) / len(both)
        out[name] = {"position_agreement": agree, "n_pairs": len(both),
                     "passed": agree >= JUDGE_MIN_POSITION_AGREEMENT}
    return out


def summary_table(run_dir: str | Path):
    """Mean, standard deviation and count over seeds per method group and headline metric (wide table)."""
    import pandas as pd

    df = metrics_frame(run_dir)
    if df.empty:
        return df
    df["group"] = [method_label(m, e) for m, e in zip(df["method"], df["mean_eps"])]
    g = df.groupby(["label", "group"])["value"].agg(["mean", "std", "count"]).reset_index()
    g["cell"] = [f"{m:.3g} ± {s:.2g} (n={c})" if c > 1 else f"{m:.3g}" for m, s, c in zip(g["mean"], g["std"].fillna(0),
                                                                                            g["count"])]
    table = g.pivot(index="label", columns="group", values="cell")
    return table[group_order(table.columns)]


def loss_logs(run_dir: str | Path) -> dict[str, list[dict]]:
    """Training log rows (with a ``loss``) per variant folder name."""
    out = {}
    for p in sorted(Path(run_dir).glob("train/*/log.jsonl")):
        out[p.parent.name] = [r for r in read_jsonl(p) if "loss" in r]
    return out


def eps_tables(run_dir: str | Path) -> dict[str, list[dict]]:
    """Per-sample eps rows (id, source, category, eps) per variant folder name."""
    return {p.parent.name: read_jsonl(p) for p in sorted(Path(run_dir).glob("train/*/eps.jsonl"))}


def scores_with_sources(run_dir: str | Path) -> list[dict]:
    """Elicited scores joined with each training sample's source: rows (id, source, category, score, backend)."""
    run_dir = Path(run_dir)
    src: dict[str, dict] = {}
    if (run_dir / "data" / "train.jsonl").exists():
        src = {r["id"]: r for r in read_jsonl(run_dir / "data" / "train.jsonl")}
    else:  # exported results carry no training text, but every variant's eps.jsonl has each id's source
        for p in sorted(run_dir.glob("train/*/eps.jsonl"))[:1]:
            src = {r["id"]: r for r in read_jsonl(p)}
    latest: dict[str, dict] = {}  # a rerun may append a later line for the same id; the last one counts
    path = run_dir / "elicit" / "scores.jsonl"
    for r in read_jsonl(path) if path.exists() else []:
        latest[r.get("id")] = r
    rows = []
    for r in latest.values():
        d = src.get(r.get("id"), {})
        rows.append({"id": r.get("id"), "source": d.get("source", "?"), "category": d.get("category"),
                     "score": r.get("score"), "backend": r.get("backend")})
    return rows


# Small result files worth keeping with a reference run: no weights or checkpoints; the generations of the math
# and chat evaluation sets are kept (tens of kB per model) because per-item answers are re-scored from them.
EXPORT_GLOBS = ("manifest.json", "data/controlled_spec.json", "elicit/scores.jsonl", "elicit_backends/*.jsonl",
                "train/*/log.jsonl",
                "train/*/eps.jsonl", "train/*/manifest.json", "evaluate/*/metrics.json",
                "evaluate/*/controlled/scores.jsonl", "evaluate/*/math_*.jsonl", "evaluate/*/generations_*.jsonl",
                "evaluate/*/chat_*.jsonl", "evaluate/*/annotations_*.json",
                "evaluate/*/clustering.json",
                # AVA (ual.train.ava, ual.evaluate.reward): objective settings, reward-model scores and summaries
                "train/*/ava.json", "evaluate/*/rm_scores*.jsonl", "evaluate/*/rm_eval.json",
                "evaluate/reward_models.json", "evaluate/ava_policy_stats.json")


def export_results(run_dir: str | Path, dest: str | Path, *, max_file_mb: float = 5.0) -> list[str]:
    """Copy a run's small result files (``EXPORT_GLOBS``) to ``dest`` with the same layout, so that
    ``python -m ual figures --run DEST`` rebuilds every figure; returns the copied relative paths."""
    import shutil

    run_dir, dest = Path(run_dir), Path(dest)
    copied = []
    for pattern in EXPORT_GLOBS:
        for src in sorted(run_dir.glob(pattern)):
            if src.stat().st_size > max_file_mb * 2**20:
                print(f"skipped {src} ({src.stat().st_size / 2**20:.1f} MB > {max_file_mb} MB)")
                continue
            rel = src.relative_to(run_dir)
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            tmp = dest / rel.with_name(f".{rel.name}.tmp")
            shutil.copyfile(src, tmp)
            tmp.replace(dest / rel)
            copied.append(str(rel))
    return copied


def markdown_summary(run_dir: str | Path, *, digits: int = 3) -> str:
    """Headline metrics per method group as a Markdown table: mean ± standard deviation over seeds (n)."""
    df = metrics_frame(run_dir)
    if df.empty:
        return "(no metrics)"
    df["group"] = [method_label(m, e) for m, e in zip(df["method"], df["mean_eps"])]
    order = group_order(df["group"].unique())
    lines = ["| metric | " + " | ".join(order) + " |", "|---|" + "---|" * len(order)]
    for label in dict.fromkeys(df["label"]):
        sub = df[df["label"] == label]
        hib = bool(sub["higher_is_better"].iloc[0])
        cells = []
        for g in order:
            v = sub[sub["group"] == g]["value"]
            if v.empty:
                cells.append("")
            elif len(v) == 1:
                cells.append(f"{v.iloc[0]:.{digits}g}")
            else:
                cells.append(f"{v.mean():.{digits}g} ± {v.std(ddof=1):.2g} (n={len(v)})")
        lines.append(f"| {label} ({'↑' if hib else '↓'}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stage_costs(run_dir: str | Path) -> list[dict]:
    """Wall time (s) and peak resident memory (GiB, the stage's notebook kernel and its children) of each stage of
    a run, from its manifest (``earlier``: the stage's previous attempts, when it was rerun), plus the training wall
    time of each variant (``train/*/manifest.json``)."""
    run_dir = Path(run_dir)
    manifest = read_json(run_dir / "manifest.json")
    rows = [{"stage": name, "status": st.get("status"), "seconds": st.get("seconds"),
             "peak_rss_gib": st.get("peak_rss_gib"),
             "earlier": [{"seconds": h.get("seconds"), "peak_rss_gib": h.get("peak_rss_gib"), "status": h.get("status")}
                         for h in st.get("history", [])]}
            for name, st in manifest.get("stages", {}).items()]
    for p in sorted(run_dir.glob("train/*/manifest.json")):
        m = read_json(p)
        secs = (m.get("metrics") or {}).get("wall_seconds_this_session")  # a resumed run counts its last session
        rows.append({"stage": f"train/{p.parent.name}", "status": m.get("status"), "seconds": secs,
                     "peak_rss_gib": None})
    return rows
