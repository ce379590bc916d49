"""The evaluation stage of a run: every model (base and each trained variant) on every evaluation set the run has.

For each model, outputs go to ``<run_dir>/evaluate/<model>/`` and are saved before any metric is computed:

- controlled benchmark (``data/eval_controlled.jsonl`` + ``controlled_spec.json``): ``controlled/`` (greedy outputs,
  samples, per-item likelihoods; ``ual.controlled``);
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ual.errors import InputError
from ual.io import atomic_write_json, read_json, read_jsonl


@dataclass
class EvalConfig:
    """Evaluation stage settings. Paper values are noted; defaults are ours where a CPU needs less.

    include_base: also evaluate the base model without an adapter (the reference point).
    variants: trained variants to evaluate (folder names under train/); empty = all complete ones.
    model: base model when the run trained nothing ("auto" = the model the variants were trained from).
    template: prompt template; "auto" = the one each variant was trained with.
    batch_size: sequences per forward pass. dtype: "float32" on CPU.
    seed: sampling seed (per item, so results do not depend on batch size).
    k_samples / temperature / max_new_tokens_low / max_new_tokens_high: controlled benchmark sampling (K samples at
        temperature 1 per high-entropy prompt) and output lengths.
    math_max_new_tokens / math_do_sample / math_temperature / math_top_k / math_n: math decoding. Paper: sampled,
        T 0.8, top-k 200, 256 new tokens, n 1; our default greedy (deterministic).
    chat_max_new_tokens / chat_do_sample / chat_temperature / chat_top_k: chat decoding. Paper: T 0.8, top-k 200,
        1536 new tokens.
    judge: "local" (a local LM reads the preference from token probabilities), "openai" (an OpenAI-compatible
        endpoint, AlpacaEval-2.0-style), or "none". judge_model: for local, a model name; for openai, the model id.
    judge_base_url / judge_api_key_env / judge_concurrency: openai judge endpoint, NAME of the environment variable
        with the key, parallel requests.
    lc_method: length-controlled win rate method for ``ual.evaluate.winrate`` ("auto" picks the best available).
    clustering: run the token-clustering analysis; clustering_set: "train" or an eval set name as probe texts;
        clustering_n: probe texts; clustering_top_k: most frequent tokens (paper 42); clustering_max_length: tokens.
    """

    include_base: bool = True
    variants: list[str] = field(default_factory=list)
    model: str = "auto"
    template: str = "auto"
    batch_size: int = 8
    dtype: Literal["float32", "bfloat16"] = "float32"
    seed: int = 1337
    k_samples: int = 16
    temperature: float = 1.0
    max_new_tokens_low: int = 96
    max_new_tokens_high: int = 16
    math_max_new_tokens: int = 256
    math_do_sample: bool = False
    math_temperature: float = 0.8
    math_top_k: int = 200
    math_n: int = 1
    chat_max_new_tokens: int = 256
    chat_do_sample: bool = True
    chat_temperature: float = 0.8
    chat_top_k: int = 200
    judge: Literal["local", "openai", "none"] = "local"
    judge_model: str = "smollm2-135m"
    judge_base_url: str = "https://api.openai.com/v1"
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_concurrency: int = 4
    lc_method: str = "auto"
    clustering: bool = False
    clustering_set: str = "train"
    clustering_n: int = 100
    clustering_top_k: int = 42
    clustering_max_length: int = 256


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


def eval_sets(run_dir: str | Path) -> dict[str, dict]:
    """The run's evaluation sets: ``{name: {"kind": "controlled"|"math"|"chat", "path": ...}}``."""
    from ual.data import load_records

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


# --------------------------------------------------------------------------------------------------- one model

def _math_extras(model, tok, recs, gens_path: Path, out_path: Path, cfg: EvalConfig, template: str) -> None:
    """Gold-solution NLL per record and the model's confidence in its own (first) answer -> math_<set>.jsonl."""
    import math

    from ual.evaluate.answers import extract_answer, gold_answer
    from ual.evaluate.likelihood import answer_logprobs, gold_answer_nll
    from ual.io import write_jsonl

    if out_path.exists():
        return
    gens = {r["id"]: r for r in read_jsonl(gens_path)}
    nll = gold_answer_nll(model, tok, recs, template=template, batch_size=cfg.batch_size)
    outputs = [_first_output(gens[r.id]) for r in recs]
    answers = [extract_answer(o, "flexible") for o in outputs]
    # Confidence: p(answer tokens as written | prompt, the model's own reasoning before them).
    written = [None if a is None else _answer_as_written(o, a) for o, a in zip(outputs, answers)]
    lps = answer_logprobs(model, tok, [r.messages for r in recs], outputs, written, template=template,
                          batch_size=cfg.batch_size)
    rows = []
    for r, a, lp, n in zip(recs, answers, lps, nll):
        conf = 0.0 if (a is None or lp is None) else min(1.0, math.exp(lp[0]))
        rows.append({"id": r.id, "gold_nll_per_token": n, "answer": a, "confidence": conf,
                     "correct": a is not None and a == gold_answer(r.answer)})
    write_jsonl(out_path, rows)


def chat_extras(model, tok, recs, gens_path: Path, out_path: Path, *, batch_size: int, template: str) -> None:
    """Judge-free measures of a chat set -> ``out_path`` (JSONL, one row per record, written once):
    ``reference_nll_per_token`` (nats/token of the reference response given the prompt: how much of the reference
    writer's distribution the model keeps), ``distinct_1`` / ``distinct_2`` of the model's (first) output (0-1,
    null for outputs shorter than n words) and ``output_chars``."""
    import math

    from ual.evaluate.diversity import distinct_n
    from ual.evaluate.likelihood import gold_answer_nll
    from ual.io import write_jsonl

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


def _answer_as_written(output: str, normalised: str) -> str | None:
    """The last number in ``output`` whose normalised form is ``normalised`` (as it appears in the text)."""
    from ual.evaluate.answers import normalize_number, number_tokens

    for tok in reversed(number_tokens(output)):
        if normalize_number(tok) == normalised:
            return tok
    return None


def evaluate_model(entry: dict, cfg: EvalConfig, run_dir: str | Path, *, progress: bool = True) -> dict:
    """Run every evaluation of one model into ``evaluate/<name>/`` and return its metrics (also written)."""
    from ual.data import load_records
    from ual.models import load_model, load_tokenizer

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
            from ual.controlled import score_controlled

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

    from ual.data import load_records
    from ual.evaluate.clustering import collect_hidden_states, pairwise_silhouette
    from ual.formatting import build_example

    if path.exists():
        return
    src = run_dir / "data" / ("train.jsonl" if cfg.clustering_set == "train" else f"eval_{cfg.clustering_set}.jsonl")
    recs = load_records(src)
    rng = random.Random(cfg.seed)
    recs = rng.sample(recs, min(cfg.clustering_n, len(recs)))
    # Probe texts are the full conversations, as the paper feeds LIMA test prompts with their responses.
    texts = [tok.decode(build_example(r.messages, tok, template=template)["input_ids"]) for r in recs]
    feats, labels = collect_hidden_states(model, tok, texts, max_length=cfg.clustering_max_length,
                                          batch_size=cfg.batch_size)
    res = pairwise_silhouette(feats, labels, top_k=cfg.clustering_top_k, seed=cfg.seed, tokenizer=tok)
    res["probe"] = {"set": cfg.clustering_set, "n_texts": len(texts), "n_positions": int(len(labels))}
    atomic_write_json(path, res)


def _judge(entry: dict, name: str, s: dict, cfg: EvalConfig, out: Path, progress: bool) -> None:
    from ual.data import load_records
    from ual.evaluate.export import model_outputs_from_generations, write_model_outputs
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


CHAT_FIELDS = ("reference_nll_per_token", "distinct_1", "distinct_2", "output_chars")


def chat_metrics(path: str | Path) -> dict:
    """Means over records of a ``chat_<set>.jsonl`` file (null entries left out), plus ``n``."""
    rows = read_jsonl(path)
    out: dict = {"n": len(rows)}
    for k in CHAT_FIELDS:
        vals = [float(r[k]) for r in rows if r.get(k) is not None]
        out[k] = sum(vals) / len(vals) if vals else None
    return out


def metrics_from_files(run_dir: str | Path, entry: dict, cfg: EvalConfig) -> dict:
    """All metrics of one model from its saved files (no model needed)."""
    from ual.evaluate.answers import score_math_file
    from ual.evaluate.calibration import expected_calibration_error, reliability_bins

    run_dir = Path(run_dir)
    out = run_dir / "evaluate" / entry["name"]
    m: dict = {"model": entry["name"], "method": entry["method"], "mean_eps": entry["mean_eps"],
               "seed": entry["seed"], "base_model": entry["model"], "adapter": entry["adapter"],
               "template": entry["template"], "config": dataclasses.asdict(cfg)}
    for name, s in eval_sets(run_dir).items():
        if s["kind"] == "controlled" and (out / "controlled" / "scores.jsonl").exists():
            from ual.controlled import controlled_metrics_file

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
                from ual.evaluate.winrate import evaluate_annotations

                ann = [a for a in read_json(out / f"annotations_{name}.json")]
                m.setdefault("winrate", {})[name] = evaluate_annotations(ann, lc_method=cfg.lc_method)
    if (out / "clustering.json").exists():
        c = read_json(out / "clustering.json")
        m["clustering"] = {"mean_silhouette": c["mean"], "median_silhouette": c["median"], "n_pairs": c["n_pairs"],
                           "pairs": c["pairs"], "probe": c.get("probe")}
    return m


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


def evaluate_run(cfg: EvalConfig, run_dir: str | Path, *, progress: bool = True) -> list[dict]:
    """Evaluate every model of the run (see module doc); models whose metrics exist for this config are skipped."""
    run_dir = Path(run_dir)
    sets = eval_sets(run_dir)
    if not sets:
        raise InputError(run_dir / "data", None, "eval_*.jsonl", "the run has no evaluation sets")
    results = []
    for entry in models_to_evaluate(cfg, run_dir):
        mpath = run_dir / "evaluate" / entry["name"] / "metrics.json"
        if (mpath.exists() and read_json(mpath).get("config") == dataclasses.asdict(cfg)
                and all(p.exists() for p in expected_files(cfg, run_dir, entry["name"], sets))):
            results.append(read_json(mpath))
            continue
        print(f"evaluating {entry['name']}", flush=True)
        results.append(evaluate_model(entry, cfg, run_dir, progress=progress))
    return results


def metrics_table(run_dir: str | Path):
    """Headline metrics per method group, mean ± std over seeds (see ``ual.results.summary_table``)."""
    from ual.results import summary_table

    return summary_table(run_dir)
