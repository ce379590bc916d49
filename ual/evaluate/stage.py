"""The evaluation stage of a run: every model (base and each trained variant) on every evaluation set the run has.

For each model, outputs go to ``<run_dir>/evaluate/<model>/`` and are saved before any metric is computed:

- controlled benchmark (``data/eval_controlled.jsonl`` + ``controlled_spec.json``): ``controlled/`` (greedy outputs,
  samples, per-item likelihoods; ``ual.data.controlled``);
- math sets (every record has an ``answer``): ``generations_<set>.jsonl``, plus gold-solution NLL and the
  confidence of the greedy answer in ``math_<set>.jsonl``;
- chat sets (reference responses, e.g. AlpacaEval): ``generations_<set>.jsonl``, judge-free measures per record
  in ``chat_<set>.jsonl`` (the reference response's NLL under the model, distinct-n and length of the output),
  ``model_outputs_<set>.json`` (AlpacaEval format), judge verdicts in ``judge_<set>.jsonl`` and
  ``annotations_<set>.json``;
- token clustering on a probe set: ``clustering.json``.

``metrics.json`` is then computed from those files alone (:func:`metrics_from_files`), so metrics can be
recomputed, or a protocol added, without a model. Every step resumes where a kill left it.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ual.common.errors import InputError
from ual.common.io import atomic_write_json, read_json, read_jsonl
from ual.evaluate.config import EvalConfig
from ual.evaluate.metrics.run_files import CHAT_FIELDS, chat_metrics, eval_sets, metrics_from_files


# --------------------------------------------------------------------------------------------------- models

def models_to_evaluate(cfg: EvalConfig, run_dir: str | Path) -> list[dict]:
    """``[{name, method, mean_eps, seed, model, adapter, template}]`` for the base model and each variant."""
    run_dir = Path(run_dir)
    out = []
    trained = []
    for m in sorted(run_dir.glob("train/*/manifest.json")):
        man = read_json(m)
        if man.get("status") != "complete":
            continue
        if cfg.variants and m.parent.name not in cfg.variants:
            continue
        c = man["config"]
        trained.append({"name": m.parent.name, "method": c["method"], "mean_eps": c["mean_eps"], "seed": c["seed"],
                        "model": c["model"], "adapter": str(m.parent / "adapter"),
                        "template": c["template"] if cfg.template == "auto" else cfg.template})
    missing = set(cfg.variants) - {t["name"] for t in trained}
    if missing:
        raise InputError(run_dir / "train", None, "evaluate.variants", f"not trained (or not complete): {sorted(missing)}")
    base_model = cfg.model if cfg.model != "auto" else (trained[0]["model"] if trained else None)
    if base_model is None:
        raise InputError(run_dir, None, "evaluate.model", "no trained variants to take the model from; set model")
    template = cfg.template if cfg.template != "auto" else (trained[0]["template"] if trained else "chat")
    if cfg.include_base:
        out.append({"name": "base", "method": "base", "mean_eps": None, "seed": None, "model": base_model,
                    "adapter": None, "template": template})
    return out + trained


# --------------------------------------------------------------------------------------------------- one model

def _math_extras(model, tok, recs, gens_path: Path, out_path: Path, cfg: EvalConfig, template: str) -> None:
    """Gold-solution NLL per record and the model's confidence in its own (first) answer -> math_<set>.jsonl."""
    from ual.evaluate.metrics.answers import answer_as_written, answer_confidence, extract_answer, gold_answer
    from ual.evaluate.likelihood import answer_logprobs, gold_answer_nll
    from ual.common.io import write_jsonl

    if out_path.exists():
        return
    gens = {r["id"]: r for r in read_jsonl(gens_path)}
    nll = gold_answer_nll(model, tok, recs, template=template, batch_size=cfg.batch_size)
    outputs = [_first_output(gens[r.id]) for r in recs]
    answers = [extract_answer(o, "flexible") for o in outputs]
    # Confidence: p(answer tokens as written | prompt, the model's own reasoning before them).
    written = [answer_as_written(o, "flexible") for o in outputs]
    lps = answer_logprobs(model, tok, [r.messages for r in recs], outputs, written, template=template,
                          batch_size=cfg.batch_size)
    rows = []
    for r, a, lp, n in zip(recs, answers, lps, nll):
        conf = answer_confidence(a, None if lp is None else lp[0])
        rows.append({"id": r.id, "gold_nll_per_token": n, "answer": a, "confidence": conf,
                     "correct": a is not None and a == gold_answer(r.answer)})
    write_jsonl(out_path, rows)


def chat_extras(model, tok, recs, gens_path: Path, out_path: Path, *, batch_size: int, template: str) -> None:
    """Judge-free measures of a chat set -> ``out_path`` (JSONL, one row per record, written once):
    ``reference_nll_per_token`` (nats/token of the reference response given the prompt: how much of the reference
    writer's distribution the model keeps), ``distinct_1`` / ``distinct_2`` of the model's (first) output (0-1,
    null for outputs shorter than n words) and ``output_chars``."""
    import math

    from ual.evaluate.metrics.diversity import distinct_n
    from ual.evaluate.likelihood import gold_answer_nll
    from ual.common.io import write_jsonl

    if out_path.exists():
        return
    gens = {r["id"]: r for r in read_jsonl(gens_path)}
    missing = [r.id for r in recs if r.id not in gens]
    if missing:
        raise InputError(gens_path, None, "id", f"{len(missing)} records have no generation (first: {missing[0]!r})")
    nll = gold_answer_nll(model, tok, recs, template=template, batch_size=batch_size)
    rows = []
    for r, n in zip(recs, nll):
        o = _first_output(gens[r.id])
        d1, d2 = distinct_n(o, 1), distinct_n(o, 2)
        rows.append({"id": r.id, "reference_nll_per_token": n, "distinct_1": None if math.isnan(d1) else d1,
                     "distinct_2": None if math.isnan(d2) else d2, "output_chars": len(o)})
    write_jsonl(out_path, rows)


def _first_output(row: dict) -> str:
    """The (first) output of a generations row: ``output`` is a string, or a list of n sampled strings."""
    o = row["output"]
    return o if isinstance(o, str) else o[0]


def evaluate_model(entry: dict, cfg: EvalConfig, run_dir: str | Path, *, progress: bool = True) -> dict:
    """Run every evaluation of one model into ``evaluate/<name>/`` and return its metrics (also written)."""
    from ual.data.records import load_records
    from ual.common.models import load_model, load_tokenizer

    run_dir = Path(run_dir)
    out = run_dir / "evaluate" / entry["name"]
    out.mkdir(parents=True, exist_ok=True)
    sets = eval_sets(run_dir)
    model = load_model(entry["model"], adapter=entry["adapter"], dtype=cfg.dtype)
    tok = load_tokenizer(entry["model"], padding_side="left")
    pair = (model, tok)
    template = entry["template"]
    for name, s in sets.items():
        recs = load_records(s["path"])
        if s["kind"] == "controlled":
            from ual.evaluate.controlled import score_controlled

            score_controlled(pair, recs, read_json(s["spec"]), out / "controlled", template=template,
                             batch_size=cfg.batch_size, k_samples=cfg.k_samples, temperature=cfg.temperature,
                             max_new_tokens_low=cfg.max_new_tokens_low, max_new_tokens_high=cfg.max_new_tokens_high,
                             seed=cfg.seed, progress=progress)
        elif s["kind"] == "math":
            from ual.evaluate.generate import generate

            gens = generate(pair, recs, out / f"generations_{name}.jsonl", template=template,
                            batch_size=cfg.batch_size, max_new_tokens=cfg.math_max_new_tokens,
                            do_sample=cfg.math_do_sample, temperature=cfg.math_temperature, top_k=cfg.math_top_k,
                            n=cfg.math_n, seed=cfg.seed, progress=progress)
            _math_extras(model, tok, recs, gens, out / f"math_{name}.jsonl", cfg, template)
        else:
            from ual.evaluate.generate import generate

            gens = generate(pair, recs, out / f"generations_{name}.jsonl", template=template,
                            batch_size=cfg.batch_size, max_new_tokens=cfg.chat_max_new_tokens,
                            do_sample=cfg.chat_do_sample, temperature=cfg.chat_temperature, top_k=cfg.chat_top_k,
                            seed=cfg.seed, progress=progress)
            chat_extras(model, tok, recs, gens, out / f"chat_{name}.jsonl", batch_size=cfg.batch_size,
                        template=template)
    if cfg.clustering:
        _clustering(model, tok, cfg, run_dir, out / "clustering.json", template)
    del model, pair
    for name, s in sets.items():
        if s["kind"] == "chat" and cfg.judge != "none":
            _judge(entry, name, s, cfg, out, progress)
    metrics = metrics_from_files(run_dir, entry, cfg)
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def _clustering(model, tok, cfg: EvalConfig, run_dir: Path, path: Path, template: str) -> None:
    import random

    from ual.data.records import load_records
    from ual.evaluate.clustering import collect_hidden_states, pairwise_silhouette
    from ual.common.formatting import build_example, encode_prompt

    if path.exists():
        return
    data, name = run_dir / "data", cfg.clustering_set
    # A probe set (data.probe_sets, e.g. the paper's LIMA test prompts) is read before an eval set of that name.
    src = data / "train.jsonl" if name == "train" else data / f"probe_{name}.jsonl"
    if not src.exists():
        src = data / f"eval_{name}.jsonl"
    recs = load_records(src)
    rng = random.Random(cfg.seed)
    recs = rng.sample(recs, min(cfg.clustering_n, len(recs)))
    # Probe texts are the full conversations; a prompt-only record (the LIMA test split) is its prompt in the
    # template up to the assistant header, as the authors fed it.
    texts = [tok.decode(build_example(r.messages, tok, template=template)["input_ids"] if r.response is not None
                        else encode_prompt(r.messages, tok, template=template)) for r in recs]
    feats, labels = collect_hidden_states(model, tok, texts, max_length=cfg.clustering_max_length,
                                          batch_size=cfg.batch_size)
    res = pairwise_silhouette(feats, labels, top_k=cfg.clustering_top_k, seed=cfg.seed, tokenizer=tok)
    res["probe"] = {"set": cfg.clustering_set, "n_texts": len(texts), "n_positions": int(len(labels))}
    atomic_write_json(path, res)


def _judge(entry: dict, name: str, s: dict, cfg: EvalConfig, out: Path, progress: bool) -> None:
    from ual.data.records import load_records
    from ual.evaluate.metrics.model_outputs import model_outputs_from_generations, write_model_outputs
    from ual.evaluate.judge import LocalJudge, OpenAIJudge, judge_outputs

    recs = load_records(s["path"])
    outputs = model_outputs_from_generations(out / f"generations_{name}.jsonl", recs, entry["name"])
    reference = [{"instruction": r.prompt, "output": r.response, "generator": "reference",
                  "dataset": r.category or name} for r in recs]
    write_model_outputs(out / f"model_outputs_{name}.json", outputs, reference=reference)
    if (out / f"annotations_{name}.json").exists():
        return
    if cfg.judge == "local":
        judge = LocalJudge(cfg.judge_model, batch_size=cfg.batch_size, dtype=cfg.dtype)
    else:
        judge = OpenAIJudge(cfg.judge_base_url, cfg.judge_model, api_key_env=cfg.judge_api_key_env,
                            concurrency=cfg.judge_concurrency)
    ann = judge_outputs(outputs, reference, judge, out / f"judge_{name}.jsonl", progress=progress)
    atomic_write_json(out / f"annotations_{name}.json", ann)


# --------------------------------------------------------------------------------------------------- stage

def expected_files(cfg: EvalConfig, run_dir: str | Path, name: str, sets: dict | None = None) -> list[Path]:
    """The files a complete evaluation of model ``name`` leaves under ``evaluate/<name>/`` for this config. A model
    whose metrics exist but that lacks one of them (e.g. a file that a newer version adds) is evaluated again, and
    only the missing pieces are computed (every other step finds its file and skips). ``sets``: the run's
    :func:`eval_sets`, when the caller has them already."""
    out = Path(run_dir) / "evaluate" / name
    files = [out / "metrics.json"]
    for set_name, s in (eval_sets(run_dir) if sets is None else sets).items():
        if s["kind"] == "controlled":
            files.append(out / "controlled" / "scores.jsonl")
        elif s["kind"] == "math":
            files += [out / f"generations_{set_name}.jsonl", out / f"math_{set_name}.jsonl"]
        else:
            files += [out / f"generations_{set_name}.jsonl", out / f"chat_{set_name}.jsonl"]
            if cfg.judge != "none":
                files.append(out / f"annotations_{set_name}.json")
    if cfg.clustering:
        files.append(out / "clustering.json")
    return files


def evaluation_fingerprint(cfg: EvalConfig, run_dir: Path, entry: dict) -> str:
    """What a model's evaluation depends on: the config, the model entry, the content of its adapter and of the
    run's evaluation sets. Outputs under ``evaluate/<model>/`` are reused only while this matches."""
    import hashlib
    import json

    h = hashlib.sha256(json.dumps([dataclasses.asdict(cfg), entry], sort_keys=True, default=str).encode())
    data = run_dir / "data"
    files = sorted(data.glob("eval_*.jsonl")) + sorted(data.glob("probe_*.jsonl")) + sorted(data.glob("*spec.json"))
    if entry.get("adapter"):
        files += sorted(p for p in Path(entry["adapter"]).glob("*") if p.suffix in (".safetensors", ".json"))
    for f in files:
        h.update(f.name.encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def run(cfg: EvalConfig, run_dir: str | Path, *, progress: bool = True) -> list[dict]:
    """Evaluate every model of the run (see module doc). A model whose outputs were made from the same config,
    adapter and evaluation sets (:func:`evaluation_fingerprint`) is reused (missing files are topped up); one whose
    inputs changed is evaluated again from scratch."""
    import shutil

    run_dir = Path(run_dir)
    sets = eval_sets(run_dir)
    if not sets:
        raise InputError(run_dir / "data", None, "eval_*.jsonl", "the run has no evaluation sets")
    results = []
    for entry in models_to_evaluate(cfg, run_dir):
        out = run_dir / "evaluate" / entry["name"]
        mpath, fpath = out / "metrics.json", out / "fingerprint.json"
        fp = evaluation_fingerprint(cfg, run_dir, entry)
        old = read_json(fpath).get("fingerprint") if fpath.exists() else None
        if out.exists() and old is not None and old != fp:
            print(f"{entry['name']}: its adapter, evaluation sets or settings changed; evaluating it again", flush=True)
            shutil.rmtree(out)
        if (mpath.exists() and old == fp and read_json(mpath).get("config") == dataclasses.asdict(cfg)
                and all(p.exists() for p in expected_files(cfg, run_dir, entry["name"], sets))):
            results.append(read_json(mpath))
            continue
        print(f"evaluating {entry['name']}", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(fpath, {"fingerprint": fp, "model": entry})
        results.append(evaluate_model(entry, cfg, run_dir, progress=progress))
    return results
