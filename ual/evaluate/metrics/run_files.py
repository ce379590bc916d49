"""Metrics of a run's evaluated models from their saved files alone (no model): what ``metrics.json`` holds."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ual.common.errors import InputError
from ual.common.io import read_json, read_jsonl
from ual.evaluate.metrics.controlled import controlled_metrics_file


def eval_sets(run_dir: str | Path) -> dict[str, dict]:
    """The run's evaluation sets: ``{name: {"kind": "controlled"|"math"|"chat", "path": ...}}``."""
    from ual.data.records import load_records

    run_dir = Path(run_dir)
    out = {}
    for p in sorted((run_dir / "data").glob("eval_*.jsonl")):
        name = p.stem[len("eval_"):]
        if name == "controlled":
            out[name] = {"kind": "controlled", "path": p, "spec": run_dir / "data" / "controlled_spec.json"}
            continue
        recs = load_records(p)
        kind = "math" if recs and all(r.answer is not None for r in recs) else "chat"
        if kind == "chat" and not all(r.response for r in recs):
            raise InputError(p, None, "messages", "chat evaluation sets need a reference response in every record")
        out[name] = {"kind": kind, "path": p}
    return out


CHAT_FIELDS = ("reference_nll_per_token", "distinct_1", "distinct_2", "output_chars")


def chat_metrics(path: str | Path) -> dict:
    """Means over records of a ``chat_<set>.jsonl`` file (null entries left out), plus ``n``."""
    rows = read_jsonl(path)
    out: dict = {"n": len(rows)}
    for k in CHAT_FIELDS:
        vals = [float(r[k]) for r in rows if r.get(k) is not None]
        out[k] = sum(vals) / len(vals) if vals else None
    return out


def metrics_from_files(run_dir: str | Path, entry: dict, cfg) -> dict:
    """All metrics of one model from its saved files (no model needed); ``cfg`` is the stage's ``EvalConfig``."""
    from ual.evaluate.metrics.answers import score_math_file
    from ual.evaluate.metrics.calibration import expected_calibration_error, reliability_bins

    run_dir = Path(run_dir)
    out = run_dir / "evaluate" / entry["name"]
    m: dict = {"model": entry["name"], "method": entry["method"], "mean_eps": entry["mean_eps"],
               "seed": entry["seed"], "base_model": entry["model"], "adapter": entry["adapter"],
               "template": entry["template"], "config": dataclasses.asdict(cfg)}
    for name, s in eval_sets(run_dir).items():
        if s["kind"] == "controlled" and (out / "controlled" / "scores.jsonl").exists():
            m["controlled"] = controlled_metrics_file(out / "controlled" / "scores.jsonl", s["spec"])
        elif s["kind"] == "math" and (out / f"generations_{name}.jsonl").exists():
            res = score_math_file(out / f"generations_{name}.jsonl")
            extras = out / f"math_{name}.jsonl"
            if extras.exists():
                rows = read_jsonl(extras)
                res["gold_nll_per_token"] = sum(r["gold_nll_per_token"] for r in rows) / len(rows)
                conf = [r["confidence"] for r in rows]
                corr = [r["correct"] for r in rows]
                res["ece"] = expected_calibration_error(conf, corr)
                res["reliability_bins"] = reliability_bins(conf, corr)
            m.setdefault("math", {})[name] = res
        elif s["kind"] == "chat":
            if (out / f"chat_{name}.jsonl").exists():
                m.setdefault("chat", {})[name] = chat_metrics(out / f"chat_{name}.jsonl")
            if (out / f"annotations_{name}.json").exists():
                from ual.evaluate.metrics.winrate import evaluate_annotations

                ann = [a for a in read_json(out / f"annotations_{name}.json")]
                m.setdefault("winrate", {})[name] = evaluate_annotations(ann, lc_method=cfg.lc_method)
    if (out / "clustering.json").exists():
        c = read_json(out / "clustering.json")
        m["clustering"] = {"mean_silhouette": c["mean"], "median_silhouette": c["median"], "n_pairs": c["n_pairs"],
                           "pairs": c["pairs"], "probe": c.get("probe")}
        sep = c.get("class_separation")  # absent in clustering files written before it existed
        if sep:
            m["clustering"].update({"class_separation_r2": sep["r2"], "nc1": sep["nc1"]})
    return m
