"""Controlled-benchmark metrics: pure functions of saved score rows and the dataset spec (no model).

- low: greedy exact-match accuracy (percent; answer protocols ``strict`` and ``flexible`` of
  :mod:`ual.evaluate.metrics.answers`), gold-solution and gold-answer NLL per token (nats), ECE, Brier score and
  AUROC of the confidence in the greedy answer (an output with no extractable answer counts as confidence 0 and
  wrong: :func:`ual.evaluate.metrics.answers.answer_confidence`).
- high, exact: every valid answer scored as the response (``log p(answer + end-of-turn)``): validity mass (sum of
  their probabilities; only the canonical spelling of each answer is counted, so it is a lower bound on the mass
  of valid answers), the model's distribution renormalised over the valid set, KL(true || model) and its entropy
  against the true entropy (nats).
- high, sampled: K samples at temperature 1: validity rate (percent of samples that, normalised, are a valid
  answer), coverage (percent of the valid set hit by at least one sample), and the KL of the true distribution to
  the samples' distribution with add-``SAMPLE_KL_ALPHA`` smoothing over the valid set (our choice: the Jeffreys
  prior, which keeps the KL finite when an answer is never sampled), per prompt and pooled over the prompts of a
  category; undefined for a prompt (category) without any valid sample. That raw sample KL falls with the number of
  valid samples even for a perfect sampler, so ``sample_kl_excess`` subtracts the perfect sampler's expectation
  (:func:`expected_sample_kl`) at the same count.
- reference lines for the exact KL (:func:`reference_kls`): the uniform distribution over the valid set and the
  smoothed training draws of the category.

Nothing here knows which training method produced the model, so any outcome can show.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from scipy.special import logsumexp, rel_entr

from ual.common.errors import InputError
from ual.common.io import atomic_write_json, iter_jsonl, read_json
from ual.data.controlled import HIGH_SOURCE, LOW_SOURCE, NORMALISATION, SAMPLE_KL_ALPHA, entropy, normalise_answer
from ual.data.records import Record
from ual.evaluate.metrics.answers import answer_confidence, gold_answer, score_math
from ual.evaluate.metrics.separation import separation_auroc
from ual.evaluate.metrics.calibration import expected_calibration_error, reliability_bins


def kl_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """KL(p || q) in nats; ``inf`` when q is 0 where p is not (p and q are used as given, not renormalised)."""
    return float(np.sum(rel_entr(np.asarray(p, dtype=float), np.asarray(q, dtype=float))))


def _mean(xs: Sequence[float]) -> float | None:
    return float(sum(xs) / len(xs)) if xs else None


def _median(xs: Sequence[float]) -> float | None:
    s = sorted(xs)
    if not s:
        return None
    k = len(s) // 2
    return float(s[k] if len(s) % 2 else (s[k - 1] + s[k]) / 2)


_NUMBER = (int, float)


def _need(row: dict, key: str, line: int, path, types: type | tuple = object, what: str = "") -> Any:
    """``row[key]``, which must be present and of ``types`` (a bool is not a number), else an InputError."""
    if key not in row or row[key] is None:
        raise InputError(path, line, key, "is missing")
    v = row[key]
    if not isinstance(v, types) or (types == _NUMBER and isinstance(v, bool)):
        raise InputError(path, line, key, f"expected {what or getattr(types, '__name__', 'a number')}, "
                         f"got {type(v).__name__}")
    return v


def _is_number(v: Any) -> bool:
    return isinstance(v, _NUMBER) and not isinstance(v, bool)


def check_spec(spec: Any, path=None) -> dict:
    """A controlled benchmark's ``spec.json`` as the metrics read it: ``categories`` maps each name to distinct
    string ``items`` and their ``probs`` (finite, non-negative, as many as items); the optional
    ``train_answer_counts`` gives each category one non-negative count per item. InputError naming the field."""
    if not isinstance(spec, dict):
        raise InputError(path, None, None, f"expected a JSON object (a benchmark spec), got {type(spec).__name__}")
    cats = spec.get("categories")
    if not isinstance(cats, dict) or not cats:
        raise InputError(path, None, "categories", "expected a non-empty mapping of category -> items and probs")
    counts = spec.get("train_answer_counts") or {}
    if not isinstance(counts, dict):
        raise InputError(path, None, "train_answer_counts", "expected a mapping of category -> counts")
    for name, cat in cats.items():
        field = f"categories.{name}"
        items = cat.get("items") if isinstance(cat, dict) else None
        probs = cat.get("probs") if isinstance(cat, dict) else None
        if (not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items)
                or len(set(items)) != len(items)):
            raise InputError(path, None, f"{field}.items", "expected a non-empty list of distinct strings")
        if (not isinstance(probs, list) or len(probs) != len(items)
                or not all(_is_number(x) and math.isfinite(x) and x >= 0 for x in probs)):
            raise InputError(path, None, f"{field}.probs", f"expected {len(items)} finite non-negative numbers")
        c = counts.get(name)
        if c is not None and (not isinstance(c, list) or len(c) != len(items)
                              or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in c)):
            raise InputError(path, None, f"train_answer_counts.{name}", f"expected {len(items)} non-negative integers")
    return spec


def _n_tokens(row: dict, key: str, line: int, path) -> int:
    n = _need(row, key, line, path, _NUMBER)
    if n <= 0:
        raise InputError(path, line, key, f"expected a positive token count, got {n}")
    return n


def brier_score(confidences: Sequence[float], correct: Sequence[bool]) -> float:
    """Mean squared error of the confidence as a probability of being right, in [0, 1] (Brier 1950)."""
    c, y = np.asarray(confidences, dtype=float), np.asarray(correct, dtype=float)
    return float(np.mean((c - y) ** 2))


def confidence_auroc(confidences: Sequence[float], correct: Sequence[bool]) -> float | None:
    """AUROC of the confidence for telling right answers from wrong ones (0.5 = chance), ties counted half
    (scikit-learn's ``roc_auc_score``); None when every answer is right or every answer is wrong. ECE rewards a
    confidence level that matches the accuracy on average; this asks whether the confidence ranks items at all."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(correct, dtype=bool)
    if y.all() or not y.any():
        return None
    return float(roc_auc_score(y, np.asarray(confidences, dtype=float)))


def sample_kl(p: Sequence[float], counts: Sequence[int]) -> float | None:
    """KL(p || add-alpha smoothed sample distribution) in nats; None when no sample was valid (with no valid
    sample the smoothed distribution is the uniform prior alone, which says nothing about the model)."""
    n = sum(counts)
    if n == 0:
        return None
    total = n + SAMPLE_KL_ALPHA * len(counts)
    return kl_divergence(p, [(c + SAMPLE_KL_ALPHA) / total for c in counts])


def expected_sample_kl(p: Sequence[float], n: int, alpha: float = SAMPLE_KL_ALPHA) -> float | None:
    """E[KL(p || (counts + alpha) / (n + alpha K))] over counts ~ Multinomial(n, p): what a perfect sampler scores
    with ``n`` valid samples (nats; None for n = 0). Exact: the KL is a sum of per-answer terms, so only each
    count's Binomial(n, p_i) marginal is needed. It falls with n (for example 0.53 nats at n = 1 and 0.26 at n = 16
    on a 30-answer Zipf set), which is why the raw sample KL measures how many valid samples a model drew as much
    as its distribution."""
    from scipy.stats import binom

    if n <= 0:
        return None
    p = np.asarray(p, dtype=float)
    c = np.arange(n + 1)
    e_log = np.array([(binom.pmf(c, n, pi) * np.log(c + alpha)).sum() for pi in p])
    return float(np.sum(rel_entr(p, np.ones_like(p))) - np.sum(p * e_log) + math.log(n + alpha * len(p)))


def reference_kls(spec: dict, category: str) -> dict:
    """Reference lines for KL(true || model) on one category's prompts (nats): ``uniform`` (the uniform distribution
    over the valid set) and ``train_draws`` (the category's training draws, add-``SAMPLE_KL_ALPHA`` smoothed like
    the sample KL; None when the spec has no ``train_answer_counts``, i.e. benchmark version 1). A model that
    learnt exactly what its training data shows would sit near ``train_draws``."""
    cat = spec["categories"][category]
    p = cat["probs"]
    out = {"uniform": kl_divergence(p, [1.0 / len(p)] * len(p)), "train_draws": None}
    counts = (spec.get("train_answer_counts") or {}).get(category)
    if counts:
        total = sum(counts) + SAMPLE_KL_ALPHA * len(counts)
        out["train_draws"] = kl_divergence(p, [(c + SAMPLE_KL_ALPHA) / total for c in counts])
    return out


def high_item_metrics(row: dict, spec: dict, *, line: int | None = None, path=None) -> dict:
    """Exact and sampled metrics of one high-entropy score row (see :func:`controlled_metrics`)."""
    cat = _need(row, "category", line, path, str)
    if cat not in spec["categories"]:
        raise InputError(path, line, "category", f"{cat!r} is not a category of the spec")
    items = spec["categories"][cat]["items"]
    p = spec["categories"][cat]["probs"]
    lps = _need(row, "valid_logprobs", line, path)
    if not isinstance(lps, dict) or set(lps) != set(items):
        raise InputError(path, line, "valid_logprobs", f"must hold exactly the {len(items)} valid answers of "
                         f"category {cat!r}")
    if not all(_is_number(v) and not math.isnan(v) and v != math.inf for v in lps.values()):
        raise InputError(path, line, "valid_logprobs", "expected log-probabilities: numbers (or -Infinity)")
    lp = [float(lps[it]) for it in items]
    lse = float(logsumexp(lp))
    q = [math.exp(x - lse) for x in lp]
    ref = reference_kls(spec, cat)
    out = {"validity_mass": math.exp(lse), "log_validity_mass": lse, "kl_true_model": kl_divergence(p, q),
           "entropy_model": entropy(q), "entropy_true": entropy(p), "reference_kl_uniform": ref["uniform"],
           "reference_kl_train_draws": ref["train_draws"]}
    if "samples" in row and row["samples"] is not None:
        samples = row["samples"]
        if not isinstance(samples, list) or not samples or not all(isinstance(s, str) for s in samples):
            raise InputError(path, line, "samples", "expected a non-empty list of strings")
        canon = {normalise_answer(it): k for k, it in enumerate(items)}
        counts = [0] * len(items)
        n_valid = 0
        for s in samples:
            k = canon.get(normalise_answer(s))
            if k is not None:
                counts[k] += 1
                n_valid += 1
        out.update({"n_samples": len(samples), "validity_rate_pct": 100.0 * n_valid / len(samples),
                    "coverage_pct": 100.0 * sum(c > 0 for c in counts) / len(items),
                    "n_distinct_valid": sum(c > 0 for c in counts), "valid_counts": counts,
                    "sample_kl_true_model": sample_kl(p, counts)})
        if n_valid:
            out["sample_kl_excess"] = out["sample_kl_true_model"] - expected_sample_kl(p, n_valid)
    greedy = row.get("greedy")
    if isinstance(greedy, str):
        out["greedy_valid"] = normalise_answer(greedy) in {normalise_answer(it) for it in items}
    return out


def _low_metrics(low_rows: list[tuple[int, dict]], ece_protocol: str, n_bins: int, path) -> dict:
    """Accuracy, gold NLL and the calibration of the greedy answer's confidence over the low-entropy rows."""
    acc = score_math([{"output": _need(r, "greedy", ln, path, str),
                       "answer": _need(r, "answer", ln, path, (str, int, float), "a string or a number")}
                      for ln, r in low_rows], ("strict", "flexible"), path=path,
                     lines=[ln for ln, _ in low_rows])
    conf, correct = [], []
    for ln, r in low_rows:
        ans = _need(r, "greedy_answers", ln, path, dict).get(ece_protocol)
        lp = _need(r, "greedy_answer_logprobs", ln, path, dict).get(ece_protocol)
        if not (ans is None or isinstance(ans, str)) or not (lp is None or _is_number(lp)):
            raise InputError(path, ln, "greedy_answers", f"expected a string answer and a numeric log-probability "
                             f"(or nulls) for protocol {ece_protocol!r}")
        for k in ("gold_answer_logprob", "gold_answer_n_tokens"):
            if r.get(k) is not None and not _is_number(r[k]):
                raise InputError(path, ln, k, f"expected a number, got {type(r[k]).__name__}")
        conf.append(answer_confidence(ans, lp))
        correct.append(lp is not None and ans is not None and ans == gold_answer(r["answer"]))
    gold_nll = [-_need(r, "gold_logprob", ln, path, _NUMBER) / _n_tokens(r, "gold_n_tokens", ln, path)
                for ln, r in low_rows]
    ans_nll = [-r["gold_answer_logprob"] / r["gold_answer_n_tokens"] for _, r in low_rows
               if r.get("gold_answer_logprob") is not None and r.get("gold_answer_n_tokens")]
    return {
        "n_items": len(low_rows),
        "accuracy_strict_pct": acc["protocols"]["strict"]["accuracy"],
        "accuracy_flexible_pct": acc["protocols"]["flexible"]["accuracy"],
        "invalid_strict_pct": acc["protocols"]["strict"]["invalid_rate"],
        "gold_nll_per_token": _mean(gold_nll),
        "gold_answer_nll_per_token": _mean(ans_nll),
        "ece": expected_calibration_error(conf, correct, n_bins=n_bins),
        "brier": brier_score(conf, correct),
        "auroc": confidence_auroc(conf, correct),
        "ece_protocol": ece_protocol,
        "mean_confidence": _mean(conf),
        "reliability_bins": reliability_bins(conf, correct, n_bins=n_bins),
        "answer_protocol_version": acc["protocol_version"],
    }


def _summarise_high(ms: list[dict]) -> dict:
    """Means over the prompts of per-prompt high-entropy metrics (a metric missing for any prompt is None)."""
    keys = ["validity_mass", "log_validity_mass", "kl_true_model", "entropy_model", "entropy_true",
            "reference_kl_uniform", "reference_kl_train_draws"]
    out = {"n_prompts": len(ms)}
    for k in keys:
        vals = [m[k] for m in ms if m.get(k) is not None]
        out[k] = _mean(vals) if len(vals) == len(ms) else None
    out["validity_mass_median"] = _median([m["validity_mass"] for m in ms])
    sampled = [m for m in ms if "n_samples" in m]
    if sampled:
        for k in ("validity_rate_pct", "coverage_pct", "n_distinct_valid"):
            out[k] = _mean([m[k] for m in sampled])
        defined = [m["sample_kl_true_model"] for m in sampled if m["sample_kl_true_model"] is not None]
        out["sample_kl_true_model"] = _mean(defined)
        out["sample_kl_excess"] = _mean([m["sample_kl_excess"] for m in sampled if "sample_kl_excess" in m])
        out["n_prompts_with_valid_samples"] = len(defined)
        out["n_samples_per_prompt"] = sampled[0]["n_samples"]
    greedy = [m["greedy_valid"] for m in ms if "greedy_valid" in m]
    if greedy:
        out["greedy_validity_pct"] = 100.0 * sum(greedy) / len(greedy)
    return out


def _high_metrics(high_items: list[tuple[str, dict]], spec: dict) -> dict:
    """``{"high": ..., "high_by_category": ...}`` from the per-prompt metrics, samples pooled per category."""
    result: dict = {}
    result["high"] = _summarise_high([m for _, m in high_items])
    by_cat = {}
    for c in sorted({c for c, _ in high_items}):
        ms = [m for cc, m in high_items if cc == c]
        by_cat[c] = _summarise_high(ms)
        if any("valid_counts" in m for m in ms):
            # prompts of one category share the true distribution, so their samples can be pooled
            pooled = [sum(col) for col in zip(*(m["valid_counts"] for m in ms if "valid_counts" in m))]
            by_cat[c]["sample_kl_pooled"] = sample_kl(spec["categories"][c]["probs"], pooled)
    result["high_by_category"] = by_cat
    pooled_kls = [v["sample_kl_pooled"] for v in by_cat.values() if v.get("sample_kl_pooled") is not None]
    if any("sample_kl_pooled" in v for v in by_cat.values()):
        result["high"]["sample_kl_pooled"] = _mean(pooled_kls)
        result["high"]["n_categories_with_valid_samples"] = len(pooled_kls)
    return result


def _definitions(n_bins: int) -> dict:
    """What each reported metric means (stored in metrics.json beside the numbers)."""
    return {
        "validity_mass": "sum over valid answers of p(answer + end-of-turn | prompt), canonical spelling only",
        "kl_true_model": "KL(true || model renormalised over the valid set), nats",
        "sample_kl_true_model": f"KL(true || (counts + {SAMPLE_KL_ALPHA}) / (valid samples + "
                                f"{SAMPLE_KL_ALPHA} * |valid set|)), nats, per prompt; undefined (left out of "
                                "the mean, see n_prompts_with_valid_samples) when no sample is valid",
        "sample_kl_pooled": "the same with the valid samples of all prompts of a category pooled; mean over "
                            "categories with a valid sample",
        "sample_kl_excess": "sample_kl_true_model minus what a perfect sampler scores in expectation with the same "
                            "number of valid samples (expected_sample_kl): the raw sample KL falls with the number "
                            "of valid samples alone, the excess does not; > 0 is worse than sampling the truth",
        "reference_kl_uniform": "KL(true || uniform over the valid set), nats, mean over the same prompts",
        "reference_kl_train_draws": f"KL(true || training draws of the prompt's category + {SAMPLE_KL_ALPHA}), "
                                    "nats, mean over the same prompts (benchmark version >= 2)",
        "coverage_pct": "distinct valid answers among the samples / valid-set size, percent",
        "answer_normalisation": NORMALISATION,
        "ece": f"{n_bins} uniform bins; confidence = p(greedy answer tokens | prompt, greedy reasoning); no answer "
               "read -> confidence 0, wrong",
        "brier": "mean (confidence - correct)^2 over the low-entropy items, same confidence",
        "auroc": "AUROC of the same confidence for right vs wrong greedy answers; null when all or none are right",
        "gold_nll_per_token": "NLL of the whole reference solution given the prompt, nats/token (the outcome)",
        "gold_answer_nll_per_token": "NLL of the final answer's tokens given the prompt and the reference solution "
                                     "before them, nats/token (a manipulation check: the solution contains the "
                                     "answer already)",
    }


def controlled_metrics(scored_rows: Iterable[dict], spec: dict, *, ece_protocol: str = "flexible",
                       n_bins: int = 10, path: str | Path | None = None) -> dict:
    """Benchmark metrics from saved score rows (no model needed).

    Row schema (``scores.jsonl`` written by :func:`score_controlled`), all rows::

        {"id", "family": "low" | "high", "category", "source", "greedy": str, "greedy_finished": bool, "settings"}

    high rows add ``"valid_logprobs": {answer: log p(answer + end-of-turn) in nats}`` (every valid answer of the
    category), ``"valid_n_tokens": {answer: int}`` and optionally ``"samples": [str]`` (K samples).
    low rows add ``"answer"`` (gold), ``"gold_logprob"``/``"gold_n_tokens"`` (whole reference response),
    ``"gold_answer_logprob"``/``"gold_answer_n_tokens"`` (its final-answer tokens), ``"greedy_answers": {protocol:
    str | None}`` and ``"greedy_answer_logprobs": {protocol: float | None}`` (log-probability of the greedy
    output's answer tokens; None when no answer was read) for protocols ``strict`` and ``flexible``.

    Returns ``{"low": {...}, "high": {...}, "high_by_category": {cat: {...}}, "definitions": {...}}``. Rates are
    percent, probabilities and ECE in [0, 1], KL and entropies in nats; each high metric is a mean over prompts.
    """
    spec = check_spec(spec)
    low_rows, high_items = [], []
    for i, row in enumerate(scored_rows):
        line = i + 1
        fam = _need(row, "family", line, path)
        if fam == "low":
            low_rows.append((line, row))
        elif fam == "high":
            high_items.append((row.get("category"), high_item_metrics(row, spec, line=line, path=path)))
        else:
            raise InputError(path, line, "family", f"expected 'low' or 'high', got {fam!r}")
    result: dict = {"benchmark_version": spec.get("version"), "distribution": spec.get("distribution")}

    if low_rows:
        result["low"] = _low_metrics(low_rows, ece_protocol, n_bins, path)
    if high_items:
        result.update(_high_metrics(high_items, spec))
    result["definitions"] = _definitions(n_bins)
    return result


def controlled_metrics_file(scores_path: str | Path, spec_path: str | Path, **kwargs) -> dict:
    """:func:`controlled_metrics` on a saved ``scores.jsonl`` and ``spec.json``."""
    rows = [row for _, row in iter_jsonl(scores_path)]
    return controlled_metrics(rows, check_spec(read_json(spec_path), spec_path), path=scores_path, **kwargs)


def entropy_class_auroc(scores_by_id: dict[str, float], records: Sequence[Record]) -> float:
    """AUROC of an uncertainty score for telling high-entropy records (label 1) from low-entropy ones (label 0)."""
    return separation_auroc(scores_by_id, records, [HIGH_SOURCE], [LOW_SOURCE])


# ----------------------------------------------------------------------------------------------- CLI

def configure_controlled_metrics(p) -> None:
    p.add_argument("--scores", required=True, help="scores.jsonl written by score_controlled")
    p.add_argument("--spec", required=True, help="spec.json of the dataset")
    p.add_argument("--out", help="write the metrics JSON here (atomically) as well as printing it")


def run_controlled_metrics(args) -> int:
    m = controlled_metrics_file(args.scores, args.spec)
    if args.out:
        atomic_write_json(args.out, m)
    print(json.dumps(m, indent=2))
    return 0
