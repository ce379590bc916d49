"""Controlled mixed-entropy benchmark: generation, split hygiene, metrics on hand-made rows, an end-to-end run."""
from __future__ import annotations

import json
import math
import re

import pytest

from ual.data.controlled import (CATEGORIES, HIGH_SOURCE, HIGH_TEMPLATES, LOW_SOURCE, LOW_TEMPLATES, SAMPLE_KL_ALPHA,
                                 entropy, load_dataset, make_dataset, normalise_answer, save_dataset)
from ual.evaluate.controlled import score_controlled
from ual.evaluate.metrics.controlled import controlled_metrics, controlled_metrics_file, entropy_class_auroc
from ual.data.records import Record
from ual.common.errors import InputError
from ual.common.io import read_jsonl


def _as_json(records):
    return [r.to_dict() for r in records]


def _pattern(template: str) -> re.Pattern:
    parts = re.split(r"\{\w+\}", template)
    return re.compile("^" + "(.+?)".join(re.escape(p) for p in parts) + "$")


def test_deterministic_per_seed():
    a = make_dataset(30, 30, 8, 10, seed=3)
    b = make_dataset(30, 30, 8, 10, seed=3)
    c = make_dataset(30, 30, 8, 10, seed=4)
    assert (_as_json(a[0]), _as_json(a[1]), a[2]) == (_as_json(b[0]), _as_json(b[1]), b[2])
    assert _as_json(a[0]) != _as_json(c[0])
    json.dumps(a[2])  # the spec is JSON-serialisable
    # the eval set does not depend on the training set size
    d = make_dataset(5, 70, 8, 10, seed=3)
    assert _as_json(d[1]) == _as_json(a[1])


def test_held_out_templates_never_in_train():
    train, evals, spec = make_dataset(300, 300, 40, 30, seed=0)
    low_train = [_pattern(t["text"]) for t in LOW_TEMPLATES["train"]]
    low_held = [_pattern(t["text"]) for t in LOW_TEMPLATES["heldout"]]
    high_train = {t.format(x=c["phrase"]) for t in HIGH_TEMPLATES["train"] for c in CATEGORIES.values()}
    high_held = {t.format(x=c["phrase"]) for t in HIGH_TEMPLATES["heldout"] for c in CATEGORIES.values()}
    assert not high_train & high_held
    for r in train:
        if r.source == LOW_SOURCE:
            assert any(p.match(r.prompt) for p in low_train) and not any(p.match(r.prompt) for p in low_held)
        else:
            assert r.prompt in high_train
    for r in evals:
        if r.source == LOW_SOURCE:
            assert any(p.match(r.prompt) for p in low_held) and not any(p.match(r.prompt) for p in low_train)
        else:
            assert r.prompt in high_held
    assert len({r.prompt for r in evals if r.source == HIGH_SOURCE}) == 30  # distinct held-out prompts
    assert {r.id for r in evals} == set(spec["eval_items"])


@pytest.mark.parametrize("distribution", ["zipf", "uniform"])
def test_true_distributions_and_valid_responses(distribution):
    train, evals, spec = make_dataset(200, 400, 10, 10, seed=1, distribution=distribution)
    assert len(spec["categories"]) >= 8
    for name, cat in spec["categories"].items():
        assert 4 <= len(cat["items"]) <= 8 and len(set(cat["items"])) == len(cat["items"])
        assert math.fsum(cat["probs"]) == pytest.approx(1.0, abs=1e-12) and min(cat["probs"]) > 0
        assert cat["entropy_nats"] == pytest.approx(entropy(cat["probs"]))
        if distribution == "uniform":
            assert cat["entropy_nats"] == pytest.approx(math.log(len(cat["items"])))
        else:
            assert cat["entropy_nats"] < math.log(len(cat["items"])) - 0.1
    counts = {"low": 0, "high": 0}
    for r in train:
        if r.source == HIGH_SOURCE:
            counts["high"] += 1
            assert r.response in spec["categories"][r.category]["items"] and r.answer is None
        else:
            counts["low"] += 1
            lines = r.response.split("\n")
            assert lines[-1] == f"#### {r.answer}" and r.category == "math"
            for line in lines[:-1]:  # every worked step is right
                lhs, rhs = line.split(" = ")
                assert eval(lhs) == int(rhs)  # noqa: S307 - our own arithmetic strings
            assert int(lines[-2].split(" = ")[1]) == int(r.answer) >= 1
    assert counts == {"low": 200, "high": 400}
    drawn = {c: [0] * len(v["items"]) for c, v in spec["categories"].items()}
    for r in train:
        if r.source == HIGH_SOURCE:
            drawn[r.category][spec["categories"][r.category]["items"].index(r.response)] += 1
    assert spec["train_answer_counts"] == drawn  # the reference line's counts are the training draws


def test_expected_sample_kl_matches_monte_carlo_and_the_issue_numbers():
    import random

    import numpy as np

    from ual.evaluate.metrics.controlled import expected_sample_kl, sample_kl

    p = [0.5, 0.3, 0.15, 0.05]
    rng = np.random.default_rng(0)
    mc = np.mean([sample_kl(p, list(rng.multinomial(6, p))) for _ in range(20000)])
    assert expected_sample_kl(p, 6) == pytest.approx(mc, abs=0.005)
    assert expected_sample_kl(p, 0) is None
    # version 1's 30-answer Zipf category: a perfect sampler scores 0.53 with one valid sample, 0.26 with 16
    ranks = list(range(1, 31))
    random.Random("1337-rank-fruit").shuffle(ranks)
    w = [r ** -1.0 for r in ranks]
    q = [x / sum(w) for x in w]
    assert expected_sample_kl(q, 1) == pytest.approx(0.526, abs=1e-3)
    assert expected_sample_kl(q, 16) == pytest.approx(0.262, abs=1e-3)


def test_reference_kls_and_excess_in_metrics():
    from ual.evaluate.metrics.controlled import expected_sample_kl, reference_kls

    spec = {"categories": {"c": {"items": ["A", "B"], "probs": [0.75, 0.25]}},
            "train_answer_counts": {"c": [3, 1]}}
    ref = reference_kls(spec, "c")
    assert ref["uniform"] == pytest.approx(0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5))
    assert ref["train_draws"] == pytest.approx(0.75 * math.log(0.75 / (3.5 / 5)) + 0.25 * math.log(0.25 / (1.5 / 5)))
    assert reference_kls({"categories": spec["categories"]}, "c")["train_draws"] is None  # version 1 spec
    row = {"id": "h", "family": "high", "category": "c", "greedy": "A",
           "valid_logprobs": {"A": math.log(0.6), "B": math.log(0.2)}, "samples": ["A", "A", "B", "zz"]}
    m = controlled_metrics([row], spec)["high"]
    assert m["reference_kl_uniform"] == pytest.approx(ref["uniform"])
    assert m["reference_kl_train_draws"] == pytest.approx(ref["train_draws"])
    raw = 0.75 * math.log(0.75 / (2.5 / 4)) + 0.25 * math.log(0.25 / (1.5 / 4))
    assert m["sample_kl_true_model"] == pytest.approx(raw)
    assert m["sample_kl_excess"] == pytest.approx(raw - expected_sample_kl([0.75, 0.25], 3))


def test_bad_sizes():
    with pytest.raises(InputError, match="n_eval_high"):
        make_dataset(1, 1, 1, 41, seed=0)
    with pytest.raises(InputError, match="distribution"):
        make_dataset(1, 1, 1, 1, seed=0, distribution="pareto")


def test_save_and_load_roundtrip(tmp_path):
    train, evals, spec = make_dataset(5, 5, 3, 3, seed=2)
    save_dataset(tmp_path / "d", train, evals, spec)
    t2, e2, s2 = load_dataset(tmp_path / "d")
    assert _as_json(t2) == _as_json(train) and _as_json(e2) == _as_json(evals) and s2 == spec


def test_normalise_answer():
    assert normalise_answer("  Sea   Otter. ") == "sea otter"
    assert normalise_answer('"Mango"!') == "mango"
    assert normalise_answer("12") == "12"


SPEC = {"version": 1, "distribution": "zipf",
        "categories": {"c": {"items": ["A", "B"], "probs": [0.75, 0.25]}}}


def test_metrics_on_hand_made_rows():
    rows = [
        {"id": "h1", "family": "high", "category": "c", "greedy": "A.",
         "valid_logprobs": {"A": math.log(0.3), "B": math.log(0.1)},
         "samples": ["a.", "A", " b ", "C", "x"]},
        {"id": "h2", "family": "high", "category": "c", "greedy": "Zebra",
         "valid_logprobs": {"A": math.log(0.2), "B": math.log(0.2)}, "samples": ["A", "A"]},
        {"id": "l1", "family": "low", "category": "math", "answer": "4", "greedy": "2 + 2 = 4\n#### 4",
         "gold_logprob": -2.0, "gold_n_tokens": 4, "gold_answer_logprob": -0.5, "gold_answer_n_tokens": 1,
         "greedy_answers": {"strict": "4", "flexible": "4"},
         "greedy_answer_logprobs": {"strict": math.log(0.9), "flexible": math.log(0.9)}},
        {"id": "l2", "family": "low", "category": "math", "answer": "5", "greedy": "I think 6",
         "gold_logprob": -6.0, "gold_n_tokens": 2, "gold_answer_logprob": -1.5, "gold_answer_n_tokens": 1,
         "greedy_answers": {"strict": None, "flexible": "6"},
         "greedy_answer_logprobs": {"strict": None, "flexible": math.log(0.6)}},
    ]
    m = controlled_metrics(rows, SPEC)
    h = m["high"]
    kl2 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert h["n_prompts"] == 2
    assert h["validity_mass"] == pytest.approx(0.4)
    assert h["kl_true_model"] == pytest.approx((0.0 + kl2) / 2)
    h_true = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert h["entropy_true"] == pytest.approx(h_true)
    assert h["entropy_model"] == pytest.approx((h_true + math.log(2)) / 2)
    # samples: h1 has 3 valid of 5 (A, A, B), h2 2 of 2 (A, A)
    assert h["validity_rate_pct"] == pytest.approx((60.0 + 100.0) / 2)
    assert h["coverage_pct"] == pytest.approx((100.0 + 50.0) / 2)
    a = SAMPLE_KL_ALPHA
    q1 = [(2 + a) / (3 + 2 * a), (1 + a) / (3 + 2 * a)]
    q2 = [(2 + a) / (2 + 2 * a), a / (2 + 2 * a)]

    def kl(q):
        return 0.75 * math.log(0.75 / q[0]) + 0.25 * math.log(0.25 / q[1])

    assert h["sample_kl_true_model"] == pytest.approx((kl(q1) + kl(q2)) / 2)
    assert h["n_prompts_with_valid_samples"] == 2
    qp = [(4 + a) / (5 + 2 * a), (1 + a) / (5 + 2 * a)]  # pooled counts A: 4, B: 1
    assert m["high_by_category"]["c"]["sample_kl_pooled"] == pytest.approx(kl(qp))
    assert h["sample_kl_pooled"] == pytest.approx(kl(qp))
    # no valid sample: the sampled KL is undefined, not the uniform prior's KL
    none_valid = dict(rows[0], samples=["zzz", "yyy"])
    m0 = controlled_metrics([none_valid], SPEC)["high"]
    assert m0["sample_kl_true_model"] is None and m0["n_prompts_with_valid_samples"] == 0
    assert m0["validity_rate_pct"] == 0.0 and m0["coverage_pct"] == 0.0
    assert h["greedy_validity_pct"] == pytest.approx(50.0)
    assert m["high_by_category"]["c"]["n_prompts"] == 2
    low = m["low"]
    assert low["accuracy_strict_pct"] == pytest.approx(50.0) and low["accuracy_flexible_pct"] == pytest.approx(50.0)
    assert low["gold_nll_per_token"] == pytest.approx((0.5 + 3.0) / 2)
    assert low["gold_answer_nll_per_token"] == pytest.approx((0.5 + 1.5) / 2)
    # confidences 0.9 (right) and 0.6 (wrong), in different bins: ECE = (0.1 + 0.6) / 2
    assert low["ece"] == pytest.approx(0.35)
    assert sum(b["count"] for b in low["reliability_bins"]) == 2


def test_metrics_reject_bad_rows(tmp_path):
    bad = {"id": "h", "family": "high", "category": "c", "valid_logprobs": {"A": -1.0}}
    with pytest.raises(InputError, match="valid_logprobs"):
        controlled_metrics([bad], SPEC)
    with pytest.raises(InputError, match="family"):
        controlled_metrics([{"id": "x", "family": "mid"}], SPEC)
    with pytest.raises(InputError, match="category"):
        controlled_metrics([dict(bad, category="zzz")], SPEC)


def test_entropy_class_auroc():
    recs = [Record("a", LOW_SOURCE, []), Record("b", LOW_SOURCE, []), Record("c", HIGH_SOURCE, []),
            Record("d", HIGH_SOURCE, [])]
    assert entropy_class_auroc({"a": 1, "b": 2, "c": 80, "d": 90}, recs) == 1.0
    assert entropy_class_auroc({"a": 80, "b": 90, "c": 1, "d": 2}, recs) == 0.0
    assert entropy_class_auroc({"a": 1, "b": 90, "c": 2, "d": 80}, recs) == 0.5
    with pytest.raises(InputError, match="no score"):
        entropy_class_auroc({"a": 1}, recs)
    with pytest.raises(InputError, match="both groups"):
        entropy_class_auroc({"a": 1, "b": 2}, recs[:2])


def test_score_controlled_end_to_end_and_resume(tmp_path):
    from ual.common.models import build_tiny_model

    pair = build_tiny_model(None, seed=2)
    _, evals, spec = make_dataset(0, 0, 2, 2, seed=0)
    save_dataset(tmp_path / "data", [], evals, spec)
    kw = dict(batch_size=16, k_samples=2, max_new_tokens_low=6, max_new_tokens_high=4, progress=False)
    path = score_controlled(pair, evals, spec, tmp_path / "out", **kw)
    rows = read_jsonl(path)
    assert [r["id"] for r in rows] == [r.id for r in evals]
    high = [r for r in rows if r["family"] == "high"]
    assert set(high[0]["valid_logprobs"]) == set(spec["categories"][high[0]["category"]]["items"])
    assert len(high[0]["samples"]) == 2
    from ual.evaluate.likelihood import continuation_logprobs

    rec = next(r for r in evals if r.id == high[0]["id"])
    items = spec["categories"][rec.category]["items"][:3]
    ref = continuation_logprobs(*pair, [rec.messages] * 3, items, template="chat")
    assert [high[0]["valid_logprobs"][it] for it in items] == pytest.approx([s for s, _ in ref], abs=1e-4)
    low = [r for r in rows if r["family"] == "low"]
    assert low[0]["gold_logprob"] < 0 and low[0]["gold_n_tokens"] > 5
    # the shared forward pass gives what separate calls give: whole solution, gold answer span, greedy answer spans
    from ual.evaluate.likelihood import answer_logprobs, final_answer_text
    from ual.evaluate.metrics.answers import answer_as_written

    lrecs = [next(r for r in evals if r.id == row["id"]) for row in low]
    msgs = [r.messages for r in lrecs]
    sol = continuation_logprobs(*pair, msgs, [r.response for r in lrecs], template="chat")
    ans = answer_logprobs(*pair, msgs, [r.response for r in lrecs], [final_answer_text(r.response) for r in lrecs],
                          template="chat")
    assert [row["gold_logprob"] for row in low] == pytest.approx([v for v, _ in sol], abs=1e-4)
    assert [row["gold_n_tokens"] for row in low] == [n for _, n in sol]
    assert all(a is not None for a in ans)
    assert [row["gold_answer_logprob"] for row in low] == pytest.approx([v for v, _ in ans], abs=1e-4)
    assert [row["gold_answer_n_tokens"] for row in low] == [n for _, n in ans]
    for proto in ("strict", "flexible"):
        own = answer_logprobs(*pair, msgs, [row["greedy"] for row in low],
                              [answer_as_written(row["greedy"], proto) for row in low], template="chat")
        assert [row["greedy_answer_logprobs"][proto] for row in low] == pytest.approx(
            [None if o is None else o[0] for o in own], abs=1e-4)
    # a random model spreads its mass: validity is tiny but the renormalised KL is finite
    m = controlled_metrics_file(path, tmp_path / "data" / "spec.json")
    assert 0 < m["high"]["validity_mass"] < 1 and math.isfinite(m["high"]["kl_true_model"])
    assert m["low"]["n_items"] == 2 and 0 <= m["low"]["ece"] <= 1
    # resume: a torn last row is redone, finished rows are kept
    text = path.read_text().splitlines(keepends=True)
    path.write_text("".join(text[:-1]) + text[-1][:40])
    score_controlled(pair, evals, spec, tmp_path / "out", **kw)
    again = read_jsonl(path)
    assert [r["id"] for r in again] == [r.id for r in evals]
    key = "valid_logprobs" if rows[-1]["family"] == "high" else "gold_logprob"
    assert again[-1][key] == pytest.approx(rows[-1][key], abs=1e-4)  # batch mates differ: float rounding only
