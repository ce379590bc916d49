"""``python -m ual rm-eval``: score preference pairs with a trained reward model and print its accuracy as JSON.

``--model`` is a folder ``ual train`` wrote for ``ava_d``, ``ava_p`` or ``bt_rm`` (``manifest.json`` + ``adapter/``
holding the LoRA adapter and the reward head; the base model is the one its manifest names). The score of a response
is the reward head's mean on its last token (``--score reward``), or its mean over the response (``reward_mean``).
``--score logprob`` scores a response by its summed log-likelihood under the language model instead: a reward-free
baseline for any trained folder or model name. ``--pairs`` takes any :mod:`ual.data.preferences` format, AlpacaEval
annotation files included (their ``output_1`` / ``output_2`` order is kept for the balanced accuracy and AUROC,
:mod:`ual.evaluate.metrics.reward`); several ``--pairs`` are concatenated. Rows scored so far are appended to
``--out`` as they are done, so a rerun after a kill scores only what is missing. The printed JSON also holds the
same metrics for the length baseline (the longer response wins).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ual.common.errors import InputError

SCORES = ("reward", "reward_mean", "logprob")
CHUNK_PAIRS = 32  # pairs scored between two appends to --out (what a kill can lose)


def configure_rm_eval(p) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="trained folder (ava_d / ava_p / bt_rm); with --score logprob also any "
                       "trained folder or model name")
    which.add_argument("--run", help="a run directory: every complete reward model under train/ (and the base "
                       "model's logprob baseline), scores and metrics into evaluate/<variant>/, summary with "
                       "seed x pair bootstrap intervals into evaluate/reward_models.json")
    p.add_argument("--pairs", required=True, action="append", help="pairs file or hub id (repeatable)")
    p.add_argument("--split", default="all", choices=("all", "train", "heldout"),
                   help="part of the prompt-hash split to score (as the training setting pairs_split)")
    p.add_argument("--heldout-fraction", type=float, default=0.25, help="share of prompts held out (default 0.25)")
    p.add_argument("--score", default="reward", choices=SCORES, help="what scores a response (default reward)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    p.add_argument("--max-length", type=int, default=None, help="tokens per sequence (default: the training one)")
    p.add_argument("--template", default=None, help="prompt template for a model name (default: the training one, "
                   "else chat)")
    p.add_argument("--out", default=None, help="JSONL of per-pair scores (appended; reused on a rerun)")
    p.add_argument("--metrics-out", default=None, help="also write the printed JSON to this file")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap draws for the intervals (default 2000)")
    p.add_argument("--seed", type=int, default=1337, help="bootstrap seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _load_scorer(model: str, score: str, template: str | None):
    """(model, tokenizer, template, training max_length or None, description)."""
    from ual.common.io import read_json
    from ual.common.models import load_model, load_tokenizer

    folder = Path(model)
    if score != "logprob":
        from ual.train.ava import load_trained

        m, tok, cfg = load_trained(folder)
        return m, tok, template or cfg["template"], cfg["max_length"], {"method": cfg["method"],
                                                                         "base_model": cfg["model"]}
    if (folder / "manifest.json").is_file():
        cfg = read_json(folder / "manifest.json").get("config") or {}
        m = load_model(cfg["model"], adapter=str(folder / "adapter"))
        return m, load_tokenizer(cfg["model"]), template or cfg["template"], cfg.get("max_length"), \
            {"method": cfg.get("method"), "base_model": cfg["model"]}
    return load_model(model), load_tokenizer(model), template or "chat", None, {"method": None, "base_model": model}


def score_pairs(model_path: str, pairs, *, score: str = "reward", batch_size: int = 8, max_length: int | None = None,
                template: str | None = None, out: str | Path | None = None, progress: bool = True) -> list[dict]:
    """One row per pair ``{id, source, first, chosen_score, rejected_score, chosen_chars, rejected_chars, model,
    score}``, in the order of ``pairs``; rows of the same model and score already in ``out`` are reused and new
    ones appended there."""
    from ual.common.io import JsonlAppender, read_jsonl
    from ual.evaluate.metrics.reward import hash_order
    from ual.train.ava import pair_rewards

    done = {}
    if out and Path(out).exists():
        done = {r["id"]: r for r in read_jsonl(out) if r.get("model") == str(model_path) and r.get("score") == score}
    todo = [p for p in pairs if p.id not in done]
    if todo:
        model, tok, tpl, train_len, _ = _load_scorer(model_path, score, template)
        length = max_length or train_len or 512
        chunks = range(0, len(todo), CHUNK_PAIRS)
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc=f"scoring {len(todo)} pairs", unit="chunk", file=sys.stderr)
        appender = JsonlAppender(out) if out else None
        try:
            for s in chunks:
                part = todo[s:s + CHUNK_PAIRS]
                vals = pair_rewards(model, tok, part, template=tpl, max_length=length, batch_size=batch_size,
                                    score=score)
                for p, (c, r) in zip(part, vals):
                    row = {"id": p.id, "source": p.source, "first": p.first or hash_order(p.id),
                           "first_from": "source" if p.first else "hash", "chosen_score": c, "rejected_score": r,
                           "chosen_chars": len(p.chosen), "rejected_chars": len(p.rejected),
                           "model": str(model_path), "score": score}
                    done[p.id] = row
                    if appender:
                        appender.write(row)
        finally:
            if appender:
                appender.close()
    return [done[p.id] for p in pairs]


def evaluate_pairs(rows: list[dict], *, n_boot: int = 2000, seed: int = 1337) -> dict:
    """Metrics of scored rows (:func:`score_pairs`) and of the length baseline on the same pairs."""
    from ual.evaluate.metrics.reward import pairwise_metrics

    skipped = [r["id"] for r in rows if r["chosen_score"] is None]
    rows = [r for r in rows if r["chosen_score"] is not None]
    if not rows:
        raise InputError(None, None, "max_length", "every pair's prompt fills max_length tokens: nothing scored")
    first = [r["first"] for r in rows]
    res = pairwise_metrics([r["chosen_score"] for r in rows], [r["rejected_score"] for r in rows], first,
                           n_boot=n_boot, seed=seed)
    res["n_prompt_too_long"] = len(skipped)
    length = pairwise_metrics([r["chosen_chars"] for r in rows], [r["rejected_chars"] for r in rows], first,
                              n_boot=n_boot, seed=seed)
    res["length_baseline"] = {k: length[k] for k in ("pairwise_accuracy", "pairwise_accuracy_ci", "balanced_accuracy",
                                                     "balanced_accuracy_ci", "auroc", "auroc_ci")}
    res["first_from"] = sorted({r["first_from"] for r in rows})
    return res


def reward_models(run_dir: str | Path) -> list[tuple[str, str]]:
    """(variant folder name, method) of every complete AVA / Bradley-Terry model under ``run_dir/train``."""
    from ual.common.io import read_json
    from ual.train.config import AVA_METHODS

    out = []
    for m in sorted(Path(run_dir).glob("train/*/manifest.json")):
        man = read_json(m)
        method = (man.get("config") or {}).get("method")
        if man.get("status") == "complete" and method in AVA_METHODS:
            out.append((m.parent.name, method))
    return out


def evaluate_run(run_dir: str | Path, pairs: list[str], *, split: str = "heldout", heldout_fraction: float = 0.25,
                 methods: tuple[str, ...] = ("ava_p", "bt_rm"), baseline_model: str | None = "auto",
                 batch_size: int = 8, n_boot: int = 1000, seed: int = 1337, progress: bool = True) -> dict:
    """Score ``pairs`` (their ``split`` part) with every complete reward model of ``methods`` in ``run_dir/train``
    and, as a reward-free reference, the base model's summed log-likelihood (``baseline_model``: auto is the
    models' base model, None skips it). Per model: ``evaluate/<variant>/rm_scores.jsonl`` (resumable) and
    ``rm_eval.json``; the summary (per-model metrics, the length baseline, and :func:`ual.evaluate.metrics.reward.
    seed_bootstrap` per method with the difference of the first two methods) goes to ``evaluate/reward_models.json``
    and is returned."""
    from ual.common.io import atomic_write_json, read_json
    from ual.data.preferences import load_many, split_pairs
    from ual.evaluate.metrics.reward import seed_bootstrap

    run_dir = Path(run_dir)
    data = load_many(pairs)
    chosen = split_pairs(data.pairs, split, heldout_fraction)
    if not chosen:
        raise InputError(None, None, "pairs", f"no pairs in the {split!r} split")
    models = [(n, m) for n, m in reward_models(run_dir) if m in methods]
    if not models:
        raise InputError(run_dir / "train", None, "method", f"no complete {' / '.join(methods)} model")
    per_model, scores = {}, {}
    for name, method in models:
        out = run_dir / "evaluate" / name
        rows = score_pairs(str(run_dir / "train" / name), chosen, out=out / "rm_scores.jsonl", batch_size=batch_size,
                           progress=progress)
        res = evaluate_pairs(rows, n_boot=n_boot, seed=seed)
        atomic_write_json(out / "rm_eval.json", {"model": name, "method": method, "split": split, **res})
        cfg = read_json(run_dir / "train" / name / "manifest.json")["config"]
        per_model[name] = {"method": method, "seed": cfg["seed"], **{k: res[k] for k in (
            "pairwise_accuracy", "balanced_accuracy", "auroc", "margin")}}
        scores.setdefault(method, {})[cfg["seed"]] = {r["id"]: (r["chosen_score"], r["rejected_score"], r["first"])
                                                      for r in rows if r["chosen_score"] is not None}
        length = res["length_baseline"]
        if baseline_model == "auto":
            baseline_model = cfg["model"]
    summary = {"pairs": list(pairs), "split": split, "heldout_fraction": heldout_fraction, "n_pairs": len(chosen),
               "dropped_rows": data.dropped, "models": per_model, "length_baseline": length}
    if baseline_model:
        rows = score_pairs(baseline_model, chosen, score="logprob", out=run_dir / "evaluate" / "base" /
                           "rm_scores_logprob.jsonl", batch_size=batch_size, progress=progress)
        base = evaluate_pairs(rows, n_boot=n_boot, seed=seed)
        summary["base_logprob"] = {k: base[k] for k in ("pairwise_accuracy", "pairwise_accuracy_ci",
                                                        "balanced_accuracy", "balanced_accuracy_ci", "auroc",
                                                        "auroc_ci", "margin")}
    present = [m for m in methods if m in scores]
    summary["bootstrap"] = seed_bootstrap({m: scores[m] for m in present}, n_boot=n_boot, seed=seed,
                                          comparisons=[tuple(present[:2])] if len(present) > 1 else [])
    atomic_write_json(run_dir / "evaluate" / "reward_models.json", summary)
    return summary


def run_rm_eval(args) -> int:
    from ual.common.io import atomic_write_json
    from ual.data.preferences import load_many, split_pairs

    if args.batch_size < 1:
        raise InputError(None, None, "--batch-size", f"must be >= 1, got {args.batch_size}")
    if args.max_length is not None and args.max_length < 2:
        raise InputError(None, None, "--max-length", f"must be >= 2, got {args.max_length}")
    if args.run:
        res = evaluate_run(args.run, args.pairs, split=args.split, heldout_fraction=args.heldout_fraction,
                           batch_size=args.batch_size, n_boot=args.n_boot, seed=args.seed,
                           progress=not args.no_progress)
        print(json.dumps(res, indent=2))
        return 0
    data = load_many(args.pairs)
    pairs = split_pairs(data.pairs, args.split, args.heldout_fraction)
    if not pairs:
        raise InputError(None, None, "--pairs", f"no pairs in the {args.split!r} split")
    rows = score_pairs(args.model, pairs, score=args.score, batch_size=args.batch_size, max_length=args.max_length,
                       template=args.template, out=args.out, progress=not args.no_progress)
    res = {"model": args.model, "pairs": list(args.pairs), "split": args.split,
           "heldout_fraction": args.heldout_fraction if args.split != "all" else None, "score": args.score,
           "dropped_rows": data.dropped, **evaluate_pairs(rows, n_boot=args.n_boot, seed=args.seed)}
    text = json.dumps(res, indent=2)
    if args.metrics_out:
        atomic_write_json(args.metrics_out, res)
    print(text)
    return 0
