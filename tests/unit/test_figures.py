"""Figure selection and content (ual.figures.plots): every method group shown, intervals from the bootstrap,
failed judges marked, all-zero panels dropped, the sign flip stated. Built on a small synthetic run."""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from ual.figures import plots, results  # noqa: E402
from ual.figures.bootstrap import bootstrap_table  # noqa: E402

GROUPS = [("sft", 0.0), ("ls", 0.1), ("ls", 0.2), ("ls", 0.3), ("ual", 0.2), ("oracle", 0.2), ("shuffled", 0.2),
          ("dft", 0.0), ("eaft", 0.0)]


def _variant(method, eps, seed):
    return f"{method}_seed{seed}" if method in ("sft", "dft", "eaft") else f"{method}_eps{eps:g}_seed{seed}"


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Nine method groups, two seeds each (plus base): eps tables, training logs, math items with a zero-only
    strict-accuracy metric, reliability bins, and judge annotations from a position-locked judge."""
    d = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    n = 24
    models = [("base", None, None)] + [(m, e, s) for m, e in GROUPS for s in (1, 2)]
    for method, eps, seed in models:
        name = "base" if method == "base" else _variant(method, eps, seed)
        if method != "base":
            e = {"sft": 0.0, "dft": 0.0, "eaft": 0.0}.get(method, eps)
            rows = [{"id": f"t{i}", "source": "low" if i % 2 else "high", "category": None,
                     "eps": (e * 2 if i % 2 == 0 else 0.0) if method in ("ual", "oracle", "shuffled") else e}
                    for i in range(10)]
            _jsonl(d / "train" / name / "eps.jsonl", rows)
            _jsonl(d / "train" / name / "log.jsonl", [{"step": k, "loss": 2.0 / k} for k in range(1, 8)])
            _write(d / "train" / name / "manifest.json", {"status": "complete", "config": {
                "method": method, "mean_eps": eps, "seed": seed}})
        correct = rng.random(n) < 0.4
        conf = rng.random(n)
        bins = [{"count": 3, "confidence": 0.1 * k + 0.05, "accuracy": min(1.0, 0.1 * k + 0.1 * rng.random())}
                for k in range(10)]
        _write(d / "evaluate" / name / "metrics.json", {"model": name, "method": method, "mean_eps": eps,
                                                         "seed": seed, "math": {"gsm8k": {"reliability_bins": bins}}})
        _jsonl(d / "evaluate" / name / "math_gsm8k.jsonl",
               [{"id": f"q{i}", "correct": bool(c), "confidence": float(p), "gold_nll_per_token": float(1 + p)}
                for i, (c, p) in enumerate(zip(correct, conf))])
        _jsonl(d / "evaluate" / name / "generations_gsm8k.jsonl",
               [{"id": f"q{i}", "output": f"the answer is {i + 1}", "answer": str(i + 1) if c else "999"}
                for i, c in enumerate(correct)])
        _write(d / "evaluate" / name / "annotations_alpaca_eval.json",
               [{"instruction": f"i{k}", "preference": 1.5 + 0.01 * rng.random(), "preference_reference_first": 1.99,
                 "preference_model_first": 1.01} for k in range(6)])
    return d


@pytest.fixture(scope="module")
def stats(run):
    return bootstrap_table(run, n_boot=200)


def test_eps_distribution_has_a_panel_for_every_smoothing_group(run):
    panels = plots.eps_panels(run)
    assert list(panels) == ["ls eps=0.1", "ls eps=0.2", "ls eps=0.3", "ual eps=0.2", "oracle eps=0.2",
                            "shuffled eps=0.2"]  # sft, dft, eaft smooth nothing; ual is never cut off
    assert all(v.endswith("_seed1") for v in panels.values())
    fig = plots.eps_distribution(run)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert any(t.startswith("ual eps=0.2") for t in titles) and len(titles) == 6


def test_reliability_diagram_keeps_every_group(run):
    fig = plots.reliability_diagram(run)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    expected = results.group_order(["base"] + [results.method_label(m, e) for m, e in GROUPS])
    assert [l.split(" (n=")[0] for l in labels[1:]] == expected
    assert "ual eps=0.2 (n=2)" in labels


def test_method_comparison_uses_the_bootstrap_intervals_and_marks_the_failed_judge(run, stats):
    fig = plots.method_comparison(run, stats=stats)
    panels = {ax.get_title().split("\n")[0]: ax for ax in fig.axes if ax.get_title()}
    # all-zero panels are dropped: a strict-protocol accuracy that nobody scores
    assert "math accuracy, strict [gsm8k] (%)" not in panels
    assert "math accuracy, flexible [gsm8k] (%)" in panels
    # whiskers are the two-level bootstrap interval of the table, never below 0 for an accuracy
    ax = panels["math accuracy, flexible [gsm8k] (%)"]
    rows = {r["group"]: r for r in stats["groups"] if r["metric"] == "math.gsm8k.accuracy_flexible_pct"}
    order = [t.get_text() for t in ax.get_xticklabels()]
    segs = [c for c in ax.collections if c.__class__.__name__ == "LineCollection"]
    ends = sorted(tuple(sorted(s[:, 1])) for c in segs for s in c.get_segments())
    want = sorted((rows[g]["lo"], rows[g]["hi"]) for g in order if g in rows)
    assert np.allclose(ends, want)
    assert min(lo for lo, _ in ends) >= 0
    # the win-rate panel says the judge failed its check instead of drawing its 50 % as data
    wr = panels["win rate vs reference [alpaca_eval] (%)"]
    assert any("judge failed its check" in t.get_text() for t in wr.texts)
    # a colour legend with every method
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["base", "sft", "ls", "ual", "oracle", "shuffled", "dft", "eaft"]


def test_paired_differences_states_the_sign_flip(run, stats):
    fig = plots.paired_differences(run, stats=stats)
    titles = {ax.get_title() for ax in fig.axes if ax.get_title()}
    nll = next(t for t in titles if t.startswith("gold solution NLL"))
    assert "sign flipped" in nll
    acc = next(t for t in titles if t.startswith("math accuracy, flexible"))
    assert "sign flipped" not in acc
    assert not any(t.startswith("math accuracy, strict") for t in titles)  # every difference 0: no panel
    wr = next(ax for ax in fig.axes if ax.get_title().startswith("win rate"))
    assert any("judge failed its check" in t.get_text() for t in wr.texts)


def test_eps_sweep_reads_sft_as_eps_zero(run, stats):
    fig = plots.eps_sweep(run, stats=stats)
    ax = fig.axes[0]
    xs = sorted({round(float(x), 2) for line in ax.get_lines() for x in line.get_xdata()})
    assert xs[0] == pytest.approx(0.0, abs=0.01) and 0.3 in xs


def test_judge_checks_and_labels(run):
    check = results.judge_checks(run)["alpaca_eval"]
    assert check["position_agreement"] == 0.0 and not check["passed"] and check["n_pairs"] == 6 * 19
    assert results.method_label("dft", 0.0) == "dft" and results.method_label("ual", 0.2) == "ual eps=0.2"
    assert results.group_order(["eaft", "ual eps=0.3", "sft", "ual eps=0.1", "base"]) == [
        "base", "sft", "ual eps=0.1", "ual eps=0.3", "eaft"]


def test_make_all_writes_every_figure_it_has_inputs_for(run, tmp_path):
    written = plots.make_all(run, out_dir=tmp_path, n_boot=50)
    names = sorted(Path(p).stem for p in written)
    # no elicited scores and no token clustering in this run: those three are skipped, every other one is drawn
    assert names == sorted(set(plots.FIGURES) - {"score_distribution", "clustering_distribution", "token_pair_pca"})


def test_kl_reference_lines_from_the_spec(tmp_path):
    spec = {"categories": {"c": {"items": ["A", "B"], "probs": [0.75, 0.25]}}, "train_answer_counts": {"c": [3, 1]},
            "eval_items": {"e1": {"family": "high", "category": "c"}, "e2": {"family": "low", "category": "math"}}}
    _write(tmp_path / "data" / "controlled_spec.json", spec)
    ref = results.kl_reference_lines(tmp_path)
    assert ref["uniform"] == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert ref["train_draws"] == pytest.approx(0.75 * math.log(0.75 / 0.7) + 0.25 * math.log(0.25 / 0.3))


# ----------------------------------------------------------------------------------------------- token clustering

def test_class_separation_matches_dense_reference():
    from ual.evaluate.clustering import class_separation

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 1.0, size=(n, 5)) for c, n in ((0.0, 7), (1.5, 4), (-1.0, 6))])
    y = np.repeat([10, 20, 30], [7, 4, 6])
    got = class_separation(x, y)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    cls = [unit[y == c] for c in (10, 20, 30)]
    within = np.mean([np.mean([1 - a @ b for a in u for b in u]) for u in cls])
    total = np.mean([np.mean([1 - a @ b for a in u for b in v]) for u in cls for v in cls])
    assert got["r2"] == pytest.approx(1 - within / total) and got["k"] == 3
    means = np.stack([x[y == c].mean(0) for c in (10, 20, 30)])
    s_b = sum(np.outer(m - means.mean(0), m - means.mean(0)) for m in means) / 3
    s_w = sum(sum(np.outer(r - x[y == c].mean(0), r - x[y == c].mean(0)) for r in x[y == c]) / (y == c).sum()
              for c in (10, 20, 30)) / 3
    assert got["nc1"] == pytest.approx(np.trace(s_w @ np.linalg.pinv(s_b)) / 3)


def test_pairwise_silhouette_saves_the_projections_it_scores():
    from sklearn.metrics import silhouette_score

    from ual.evaluate.clustering import PROJECTION_TOKENS, pairwise_silhouette

    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(8), [30, 28, 26, 24, 22, 20, 18, 16])
    feats = rng.normal(size=(len(labels), 6)) + labels[:, None] * 0.3
    res = pairwise_silhouette(feats, labels, top_k=8)
    assert len(res["projections"]) == PROJECTION_TOKENS * (PROJECTION_TOKENS - 1) // 2
    sil = {(p["a"], p["b"]): p["silhouette"] for p in res["pairs"]}
    for p in res["projections"]:  # fewer points than the cap: the saved coordinates are the scored projection
        xy = np.array(p["xa"] + p["xb"])
        lab = [0] * len(p["xa"]) + [1] * len(p["xb"])
        assert silhouette_score(xy, lab) == pytest.approx(sil[(p["a"], p["b"])], abs=1e-3)
    assert 0 < res["class_separation"]["r2"] <= 1 and res["class_separation"]["k"] == 8


def test_token_pair_figure_draws_the_median_difference_pair(tmp_path):
    pairs = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3)]
    delta = {(0, 1): 0.30, (0, 2): 0.10, (1, 2): -0.20, (0, 3): 0.05, (1, 3): 0.12}  # median 0.10 -> (0, 2)
    for method, eps, seed in (("sft", 0.0, 1), ("ual", 0.1, 1), ("ual", 0.1, 2)):
        name = "sft_seed1" if method == "sft" else f"ual_eps0.1_seed{seed}"
        sil = {p: 0.4 + (delta[p] if method == "ual" else 0.0) for p in pairs}
        rows = [{"a": a, "b": b, "silhouette": sil[(a, b)]} for a, b in pairs]
        _write(tmp_path / "evaluate" / name / "metrics.json", {
            "model": name, "method": method, "mean_eps": eps, "seed": seed,
            "clustering": {"pairs": rows, "mean_silhouette": 0.4}})
        _write(tmp_path / "evaluate" / name / "clustering.json", {
            "pairs": rows, "tokens": [{"id": i, "text": f"t{i}"} for i in range(4)],
            "class_separation": {"r2": 0.2, "nc1": 3.0, "k": 4},
            "projections": [{"a": a, "b": b, "xa": [[0.0, 1.0], [0.1, 0.9]], "xb": [[1.0, 0.0], [0.9, 0.2]]}
                            for a, b in pairs if b < 3]})  # pairs with token 3 have no saved projection
    choice = plots.token_pair_choice(tmp_path)
    assert (choice["a"], choice["b"]) == ("ual eps=0.1", "sft")
    assert choice["median_difference"] == pytest.approx(0.10) and choice["pair"] == (0, 2)
    fig = plots.token_pair_pca(tmp_path)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert any(t.startswith("sft") for t in titles) and any(t.startswith("ual eps=0.1") for t in titles)
    assert "closest to the median" in fig._suptitle.get_text()
    stats = bootstrap_table(tmp_path, n_boot=50)
    r2 = [r for r in stats["groups"] if r["metric"] == "clustering.class_separation_r2"]
    assert {r["group"] for r in r2} == {"sft", "ual eps=0.1"} and r2[0]["estimate"] == pytest.approx(0.2)
