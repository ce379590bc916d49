import json
import math

import numpy as np
import pytest

from ual.figures.bootstrap import bootstrap_table, default_comparisons, item_metrics, markdown_tables, pair_wins
from ual.evaluate.metrics.calibration import expected_calibration_error


def _model(run, name, method, eps, seed, rows, pairs=None):
    d = run / "evaluate" / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"model": name, "method": method, "mean_eps": eps, "seed": seed}))
    with open(d / "math_gsm8k.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    if pairs is not None:
        (d / "clustering.json").write_text(json.dumps({"pairs": [{"a": a, "b": b, "silhouette": s}
                                                                  for (a, b), s in pairs.items()]}))


def _rows(correct, conf, nll):
    return [{"id": f"q{i}", "correct": bool(c), "confidence": float(p), "gold_nll_per_token": float(n)}
            for i, (c, p, n) in enumerate(zip(correct, conf, nll))]


@pytest.fixture
def run(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    for seed in (1, 2):
        c_sft = rng.random(n) < 0.3
        _model(tmp_path, f"sft_seed{seed}", "sft", 0.0, seed, _rows(c_sft, rng.random(n), rng.random(n) + 1),
               {(1, 2): 0.1 * seed, (1, 3): 0.2})
        c_ual = rng.random(n) < 0.6
        _model(tmp_path, f"ual_eps0.1_seed{seed}", "ual", 0.1, seed, _rows(c_ual, rng.random(n), rng.random(n)),
               {(1, 2): 0.5, (1, 3): 0.1})
    return tmp_path


def test_point_estimates_pool_seeds_and_match_dense_reference(run):
    stats = bootstrap_table(run, n_boot=200)
    per = item_metrics(run)
    acc = {r["group"]: r for r in stats["groups"] if r["metric"] == "math.gsm8k.accuracy_flexible_pct"}
    for group, names in (("sft", ["sft_seed1", "sft_seed2"]), ("ual eps=0.1", ["ual_eps0.1_seed1", "ual_eps0.1_seed2"])):
        vals = [v for n in names for v in per[n]["math.gsm8k.accuracy_flexible_pct"].values.values()]
        assert acc[group]["estimate"] == pytest.approx(np.mean(vals))
        assert acc[group]["lo"] <= acc[group]["estimate"] <= acc[group]["hi"]
        assert acc[group]["n_items"] == 40 and acc[group]["n_seeds"] == 2
        pairs = [v for n in names for v in per[n]["math.gsm8k.ece"].values.values()]
        ece = next(r for r in stats["groups"] if r["metric"] == "math.gsm8k.ece" and r["group"] == group)
        assert ece["estimate"] == pytest.approx(expected_calibration_error([c for c, _ in pairs],
                                                                           [k for _, k in pairs]))


def test_difference_is_paired(run):
    stats = bootstrap_table(run, n_boot=500)
    d = next(r for r in stats["differences"] if r["metric"] == "math.gsm8k.gold_nll_per_token")
    assert (d["a"], d["b"]) == ("ual eps=0.1", "sft")
    assert d["estimate"] == pytest.approx(-1.0, abs=0.3)
    assert d["hi"] < 0 and d["p_a_better"] == 1.0  # lower NLL is better
    # a method against an exact copy of itself: every paired resample differs by exactly 0
    same = bootstrap_table(run, n_boot=200, comparisons=[("sft", "sft")])
    for r in same["differences"]:
        assert r["lo"] == r["hi"] == r["estimate"] == 0


def test_constant_shift_gives_zero_width_difference(tmp_path):
    base = np.linspace(0, 1, 30)
    _model(tmp_path, "sft_seed1", "sft", 0.0, 1, _rows(base > 0.5, base, base))
    _model(tmp_path, "ual_eps0.1_seed1", "ual", 0.1, 1, _rows(base > 0.5, base, base + 0.25))
    d = next(r for r in bootstrap_table(tmp_path, n_boot=100)["differences"]
             if r["metric"] == "math.gsm8k.gold_nll_per_token")
    assert d["lo"] == pytest.approx(0.25) and d["hi"] == pytest.approx(0.25)


def test_pair_wins_and_markdown(run):
    wins = pair_wins(run)
    assert wins == [{"a": "ual eps=0.1", "b": "sft", "n_pairs": 2, "n_a_higher": 1}]
    text = markdown_tables(bootstrap_table(run, n_boot=50))
    assert "ual eps=0.1 − sft" in text and "math accuracy" in text


def test_default_comparisons():
    assert default_comparisons(["base", "sft", "ls eps=0.1", "ual eps=0.1", "ual eps=0.3"]) == [
        ("ual eps=0.1", "sft"), ("ual eps=0.1", "ls eps=0.1"), ("ual eps=0.3", "sft"), ("ls eps=0.1", "sft")]


def test_reference_run_matches_its_metrics():
    from pathlib import Path

    from ual.figures.results import load_metrics

    ref = Path(__file__).resolve().parents[2] / "results" / "quickstart"
    if not (ref / "evaluate").exists():
        pytest.skip("no committed reference run")
    stats = bootstrap_table(ref, n_boot=50)
    got = {r["group"]: r["estimate"] for r in stats["groups"] if r["metric"] == "controlled.high.kl_true_model"}
    ms = [m for m in load_metrics(ref) if m["method"] == "sft"]
    assert got["sft"] == pytest.approx(np.mean([m["controlled"]["high"]["kl_true_model"] for m in ms]))
    assert not any(math.isnan(r["estimate"]) for r in stats["groups"] if r["metric"].startswith("controlled.low"))


def test_stage_costs_reads_manifests(tmp_path):
    from ual.figures.results import stage_costs

    (tmp_path / "manifest.json").write_text(json.dumps({"stages": {"train": {"status": "complete", "seconds": 12.5,
                                                                             "peak_rss_gib": 1.25}}}))
    (tmp_path / "train" / "sft_seed1").mkdir(parents=True)
    (tmp_path / "train" / "sft_seed1" / "manifest.json").write_text(
        json.dumps({"status": "complete", "metrics": {"wall_seconds_this_session": 7.0}}))
    assert stage_costs(tmp_path) == [
        {"stage": "train", "status": "complete", "seconds": 12.5, "peak_rss_gib": 1.25, "earlier": []},
        {"stage": "train/sft_seed1", "status": "complete", "seconds": 7.0, "peak_rss_gib": None}]
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": {"evaluate": {
        "status": "complete", "seconds": 3.0, "peak_rss_gib": 1.0,
        "history": [{"status": "complete", "started": "t0", "seconds": 900.0, "peak_rss_gib": 1.5}]}}}))
    assert stage_costs(tmp_path)[0]["earlier"] == [{"seconds": 900.0, "peak_rss_gib": 1.5, "status": "complete"}]


def test_scores_get_sources_from_eps_tables_when_training_text_is_not_exported(tmp_path):
    from ual.figures.results import scores_with_sources

    (tmp_path / "elicit").mkdir()
    (tmp_path / "elicit" / "scores.jsonl").write_text(json.dumps({"id": "a", "score": 1.5, "backend": "likelihood"})
                                                      + "\n")
    (tmp_path / "train" / "ual_eps0.1_seed1").mkdir(parents=True)
    (tmp_path / "train" / "ual_eps0.1_seed1" / "eps.jsonl").write_text(
        json.dumps({"id": "a", "source": "gsm8k", "category": None, "eps": 0.1}) + "\n")
    assert scores_with_sources(tmp_path) == [{"id": "a", "source": "gsm8k", "category": None, "score": 1.5,
                                              "backend": "likelihood"}]


def test_win_rate_items_skip_failed_verdicts(tmp_path):
    from ual.figures.bootstrap import _winrate_items

    path = tmp_path / "annotations_alpaca_eval.json"
    path.write_text(json.dumps([{"instruction": "a", "preference": 2.0}, {"instruction": "b", "preference": 1.5},
                                {"instruction": "c", "preference": None}]))
    (m,) = _winrate_items(path, "alpaca_eval")
    assert m.values["a"] == 100.0 and m.values["b"] == 50.0 and math.isnan(m.values["c"])


def test_math_protocols_come_from_generations_when_present(run):
    from ual.evaluate.metrics.answers import score_math_file
    from ual.common.errors import InputError

    outputs = {"q0": "so #### 3", "q1": "The answer is: 4", "q2": "maybe 5 or 6"}
    gold = {"q0": "3", "q1": "4", "q2": "5"}
    for name in ("sft_seed1", "sft_seed2", "ual_eps0.1_seed1", "ual_eps0.1_seed2"):
        d = run / "evaluate" / name
        rows = [json.loads(x) for x in (d / "math_gsm8k.jsonl").read_text().splitlines()][:3]
        (d / "math_gsm8k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (d / "generations_gsm8k.jsonl").write_text("".join(
            json.dumps({"id": i, "output": o, "answer": gold[i]}) + "\n" for i, o in outputs.items()))
    per = item_metrics(run)["sft_seed1"]
    metrics = score_math_file(run / "evaluate" / "sft_seed1" / "generations_gsm8k.jsonl")["protocols"]
    stats = bootstrap_table(run, n_boot=100)
    for proto in ("strict", "flexible", "metamath", "substring"):
        key = f"math.gsm8k.accuracy_{proto}_pct"
        assert np.mean(list(per[key].values.values())) == pytest.approx(metrics[proto]["accuracy"])
        est = next(r["estimate"] for r in stats["groups"] if r["metric"] == key and r["group"] == "sft")
        assert est == pytest.approx(metrics[proto]["accuracy"])
    # q0 strict right, q1 metamath right, q2 substring right (5 appears), flexible reads 6 there
    assert per["math.gsm8k.accuracy_strict_pct"].values == {"q0": 100.0, "q1": 0.0, "q2": 0.0}
    assert per["math.gsm8k.accuracy_substring_pct"].values["q2"] == 100.0
    # a generations row without an id names the file and line
    gens = run / "evaluate" / "sft_seed1" / "generations_gsm8k.jsonl"
    gens.write_text(json.dumps({"id": "q0", "output": "3", "answer": "3"}) + "\n"
                    + json.dumps({"output": "3", "answer": "3"}) + "\n")
    with pytest.raises(InputError) as e:
        item_metrics(run)
    assert (e.value.path, e.value.line, e.value.field) == (str(gens), 2, "id")


def test_committed_real_data_study_matches_its_metrics():
    """The per-item files of the committed real-data study rebuild every pooled mean in its metrics.json."""
    from pathlib import Path

    from ual.figures.results import load_metrics

    ref = Path(__file__).resolve().parents[2] / "results" / "study-real"
    if not (ref / "evaluate").exists():
        pytest.skip("no committed real-data study")
    stats = bootstrap_table(ref, n_boot=20)
    est = {(r["metric"], r["group"]): r["estimate"] for r in stats["groups"]}
    ms = [m for m in load_metrics(ref) if m["method"] == "ual"]
    for proto in ("strict", "flexible", "metamath", "substring"):
        assert est[(f"math.gsm8k.accuracy_{proto}_pct", "ual eps=0.1")] == pytest.approx(
            np.mean([m["math"]["gsm8k"]["protocols"][proto]["accuracy"] for m in ms]))
    assert est[("chat.alpaca_eval.reference_nll_per_token", "ual eps=0.1")] == pytest.approx(
        np.mean([m["chat"]["alpaca_eval"]["reference_nll_per_token"] for m in ms]))
    assert est[("clustering.silhouette", "ual eps=0.1")] == pytest.approx(
        np.mean([m["clustering"]["mean_silhouette"] for m in ms]))


# ----------------------------------------------------------------------------------------------- statistics (v2)

from ual.figures.bootstrap import (bootstrap_p, holm, mcnemar_exact, p_first_better, primary_comparisons,  # noqa: E402
                                   tost)


def test_holm_matches_hand_computation_and_skips_nan():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = holm([0.02, math.nan, 0.5])
    assert out[0] == pytest.approx(0.04) and math.isnan(out[1]) and out[2] == pytest.approx(0.5)


def test_mcnemar_exact_on_the_issue_case():
    """4 item-runs right under the first method only, none the other way: exact two-sided p = 2 / 2**4."""
    a = np.array([[100, 100, 0, 0, 0], [100, 0, 0, 0, 0], [100, 0, 0, 0, 0]], float)
    b = np.zeros_like(a)
    r = mcnemar_exact(a, b)
    assert (r["n_a_only"], r["n_b_only"]) == (4, 0) and r["p"] == pytest.approx(0.125)
    assert mcnemar_exact(b, b)["p"] == 1.0


def test_ties_are_half_and_p_values_never_zero():
    assert p_first_better(np.zeros(100), True) == (0.5, 1.0)
    assert p_first_better(np.array([1.0, -1.0, 0.0, 2.0]), True) == (pytest.approx(0.625), 0.25)
    assert p_first_better(np.array([1.0, -1.0, 0.0, 2.0]), False) == (pytest.approx(0.375), 0.25)
    p = bootstrap_p(np.full(999, 3.0))
    assert p == pytest.approx(2 / 1000) and p > 0
    assert bootstrap_p(np.zeros(10)) == 1.0


def test_tost_equivalence_only_inside_the_margin():
    rng = np.random.default_rng(0)
    assert tost(rng.normal(0.01, 0.02, 4000), 0.1)["equivalent"]
    far = tost(rng.normal(0.2, 0.02, 4000), 0.1)
    assert not far["equivalent"] and far["p"] > 0.9
    wide = tost(rng.normal(0.0, 0.2, 4000), 0.1)  # centred on 0 but too uncertain to claim equivalence
    assert not wide["equivalent"] and wide["lo"] < -0.1 < 0.1 < wide["hi"]


def _seeded_run(tmp_path, seed_effect: dict[int, float], n=60):
    """sft and ual with 3 seeds; ual's NLL is sft's minus seed_effect[seed] on every item (items share noise)."""
    rng = np.random.default_rng(1)
    base = rng.random(n) + 1
    for seed in (1, 2, 3):
        _model(tmp_path, f"sft_seed{seed}", "sft", 0.0, seed, _rows(rng.random(n) < 0.3, rng.random(n), base))
        _model(tmp_path, f"ual_eps0.1_seed{seed}", "ual", 0.1, seed,
               _rows(rng.random(n) < 0.3, rng.random(n), base - seed_effect[seed]))
    return tmp_path


def test_two_level_interval_carries_seed_variance_that_pooling_hides(tmp_path):
    """When the difference varies by seed and not by item, resampling items alone gives a zero-width interval;
    resampling seeds first spans the per-seed differences."""
    stats = bootstrap_table(_seeded_run(tmp_path, {1: 0.0, 2: 0.3, 3: 0.6}), n_boot=1000)
    d = next(r for r in stats["differences"] if r["metric"] == "math.gsm8k.gold_nll_per_token")
    assert d["estimate"] == pytest.approx(-0.3)
    assert d["lo_pooled"] == pytest.approx(-0.3) and d["hi_pooled"] == pytest.approx(-0.3)
    assert d["lo"] == pytest.approx(-0.6) and d["hi"] == pytest.approx(0.0)  # all-one-seed resamples at the ends
    assert d["per_seed"] == {"1": pytest.approx(0.0), "2": pytest.approx(-0.3), "3": pytest.approx(-0.6)}
    g = next(r for r in stats["groups"] if r["metric"] == "math.gsm8k.gold_nll_per_token" and r["group"] == "sft")
    assert set(g["per_seed"]) == {"1", "2", "3"} and g["n_seeds"] == 3


def test_primary_family_is_declared_pairs_with_replicated_arms():
    groups = ["sft", "ls eps=0.2", "ual eps=0.2", "oracle eps=0.2", "shuffled eps=0.2", "ls eps=0.1", "ual eps=0.1"]
    n = {g: 3 for g in groups} | {"ls eps=0.1": 1, "ual eps=0.1": 1}
    assert primary_comparisons(groups, n) == [("ual eps=0.2", "ls eps=0.2"), ("ual eps=0.2", "sft"),
                                              ("oracle eps=0.2", "ls eps=0.2"), ("ual eps=0.2", "shuffled eps=0.2")]


def test_primary_tests_are_holm_corrected_with_tost(run, monkeypatch):
    stats = bootstrap_table(run, n_boot=300, primary=[("ual eps=0.1", "sft")])
    # the run has math items only: no declared controlled endpoint, so the family is empty
    assert stats["primary"] == []
    from ual.figures import bootstrap as bs

    monkeypatch.setattr(bs, "PRIMARY_ENDPOINTS", ("math.gsm8k.gold_nll_per_token", "math.gsm8k.accuracy_flexible_pct"))
    monkeypatch.setattr(bs, "EQUIVALENCE_MARGINS", {"math.gsm8k.gold_nll_per_token": 0.05,
                                                    "math.gsm8k.accuracy_flexible_pct": 5.0})
    prim = bootstrap_table(run, n_boot=300, primary=[("ual eps=0.1", "sft")])["primary"]
    assert [r["metric"] for r in prim] == ["math.gsm8k.gold_nll_per_token", "math.gsm8k.accuracy_flexible_pct"]
    assert all(r["family_size"] == 2 for r in prim)
    assert prim[0]["p_holm"] == pytest.approx(holm([r["p"] for r in prim])[0])
    assert prim[0]["reject"] and prim[0]["lo_simultaneous"] <= prim[0]["lo"] and not prim[0]["tost"]["equivalent"]
    text = markdown_tables(bootstrap_table(run, n_boot=50))
    assert "P(first better)" in text and "seeds pooled" in text


def test_default_comparisons_cover_controls_and_peers():
    groups = ["sft", "ls eps=0.2", "ual eps=0.2", "oracle eps=0.2", "shuffled eps=0.2", "dft", "eaft"]
    comps = default_comparisons(groups)
    for pair in [("ual eps=0.2", "ls eps=0.2"), ("oracle eps=0.2", "ls eps=0.2"), ("oracle eps=0.2", "ual eps=0.2"),
                 ("ual eps=0.2", "shuffled eps=0.2"), ("dft", "sft"), ("eaft", "sft"), ("ual eps=0.2", "dft")]:
        assert pair in comps
    with_sweep = default_comparisons(groups + ["ual eps=0.1"], {g: 3 for g in groups} | {"ual eps=0.1": 1})
    assert ("ual eps=0.1", "sft") in with_sweep and ("ual eps=0.1", "dft") not in with_sweep  # a sweep point
    assert ("ual eps=0.2", "eaft") in with_sweep
