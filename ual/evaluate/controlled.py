"""The model side of the controlled benchmark: greedy outputs, K samples and per-item likelihoods, saved per item.

Writes ``scores.jsonl`` (schema in :func:`ual.evaluate.metrics.controlled.controlled_metrics`), from which every
metric is computed without a model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ual.common.errors import InputError
from ual.common.io import JsonlAppender, iter_jsonl
from ual.data.controlled import family
from ual.data.records import Record


def score_controlled(model: Any, eval_records: Sequence[Record], spec: dict, out_dir: str | Path, *,
                     adapter: str | None = None, template: str = "chat", batch_size: int = 8, k_samples: int = 16,
                     temperature: float = 1.0, max_new_tokens_low: int = 128, max_new_tokens_high: int = 24,
                     seed: int = 1337, dtype: str = "float32", items_per_chunk: int = 16,
                     answer_batch_size: int = 64, progress: bool = True) -> Path:
    """Run the model parts of the benchmark and write ``out_dir/scores.jsonl`` (one row per eval item).

    ``model``: a name/folder (plus ``adapter``) or a loaded ``(model, tokenizer)`` pair. Writes, resumably,
    ``greedy.jsonl`` (greedy outputs of every item), ``samples.jsonl`` (``k_samples`` samples per high item at
    ``temperature``) with :func:`ual.evaluate.generate.generate`, then per item the likelihoods (schema in
    :func:`controlled_metrics`), appended ``items_per_chunk`` items at a time. A high item's valid answers are
    scored ``answer_batch_size`` at a time on one shared prompt cache. Returns the scores path.
    """
    from tqdm.auto import tqdm

    from ual.evaluate.generate import generate, resolve_model

    out_dir = Path(out_dir)
    fams = {r.id: family(r, spec) for r in eval_records}
    low = [r for r in eval_records if fams[r.id] == "low"]
    high = [r for r in eval_records if fams[r.id] == "high"]
    mdl, tok, name = resolve_model(model, adapter, dtype)
    pair = (mdl, tok)
    common = dict(template=template, batch_size=batch_size, seed=seed, dtype=dtype, progress=progress)
    greedy_low = generate(pair, low, out_dir / "greedy_low.jsonl", max_new_tokens=max_new_tokens_low, **common)
    greedy_high = generate(pair, high, out_dir / "greedy_high.jsonl", max_new_tokens=max_new_tokens_high, **common)
    samples = generate(pair, high, out_dir / "samples.jsonl", max_new_tokens=max_new_tokens_high, do_sample=True,
                       temperature=temperature, n=k_samples, **common) if k_samples > 0 else None
    gen = {row["id"]: row for p in (greedy_low, greedy_high) for _, row in iter_jsonl(p)}
    smp = {row["id"]: row for _, row in iter_jsonl(samples)} if samples else {}
    settings = {"model": name, "adapter": None if adapter is None else str(adapter), "template": template,
                "k_samples": k_samples, "temperature": temperature, "max_new_tokens_low": max_new_tokens_low,
                "max_new_tokens_high": max_new_tokens_high, "seed": seed, "dtype": dtype,
                "benchmark_version": spec.get("version")}
    path = out_dir / "scores.jsonl"
    done = set()
    if path.exists():
        for line, row in iter_jsonl(path):
            if row.get("settings") != settings:
                raise InputError(path, line, "settings", "scores were written with other settings; use another "
                                 "output folder")
            done.add(row["id"])
    todo = [r for r in eval_records if r.id not in done]
    bar = tqdm(total=len(todo), desc="controlled scores", unit="item", disable=not progress)
    with JsonlAppender(path) as out:
        for start in range(0, len(todo), items_per_chunk):
            chunk = todo[start:start + items_per_chunk]
            high_lps = _score_high_items(mdl, tok, [r for r in chunk if fams[r.id] == "high"], spec,
                                         template=template, answer_batch_size=answer_batch_size)
            low_scores = _score_low_items(mdl, tok, [r for r in chunk if fams[r.id] == "low"], gen,
                                          template=template, batch_size=batch_size)
            for r in chunk:
                row = {"id": r.id, "family": fams[r.id], "category": r.category, "source": r.source,
                       "greedy": gen[r.id]["output"], "greedy_finished": gen[r.id]["finished"]}
                if fams[r.id] == "high":
                    row.update(high_lps[r.id])
                    if samples:
                        row["samples"] = smp[r.id]["output"] if k_samples > 1 else [smp[r.id]["output"]]
                else:
                    row.update(low_scores[r.id])
                row["settings"] = settings
                out.write(row)
            bar.update(len(chunk))
    bar.close()
    return path


def _score_high_items(model, tokenizer, records: Sequence[Record], spec: dict, *, template: str,
                      answer_batch_size: int) -> dict[str, dict]:
    """Per open prompt: the log-probability and token count of every valid answer of its category."""
    from ual.evaluate.likelihood import answer_set_logprobs

    out = {}
    for r in records:
        items = spec["categories"][r.category]["items"]
        lps = answer_set_logprobs(model, tokenizer, r.messages, items, template=template,
                                  batch_size=answer_batch_size)
        out[r.id] = {"valid_logprobs": {it: v[0] for it, v in zip(items, lps)},
                     "valid_n_tokens": {it: v[1] for it, v in zip(items, lps)}}
    return out


def _score_low_items(model, tokenizer, records: Sequence[Record], gen: dict[str, dict], *, template: str,
                     batch_size: int) -> dict[str, dict]:
    """Per arithmetic item: the whole gold solution's log-probability, its answer span's, and the greedy answer's
    under both extraction protocols. One forward pass per response: the solution and its answer span come from the
    same scores, as do the greedy answer's spans under both protocols."""
    from ual.evaluate.likelihood import answer_span_logprobs, final_answer_text, token_logprobs
    from ual.evaluate.metrics.answers import answer_as_written, extract_answer

    if not records:
        return {}
    msgs = [r.messages for r in records]
    gold_scored = token_logprobs(model, tokenizer, msgs, [r.response for r in records], template=template,
                                 batch_size=batch_size)
    gold_ans = answer_span_logprobs(tokenizer, gold_scored, [final_answer_text(r.response) for r in records])
    protos = ("strict", "flexible")
    outputs = [gen[r.id]["output"] for r in records]
    own_scored = token_logprobs(model, tokenizer, msgs, outputs, template=template, batch_size=batch_size)
    own = {p: answer_span_logprobs(tokenizer, own_scored, [answer_as_written(o, p) for o in outputs])
           for p in protos}
    out = {}
    for i, (r, (_, lp)) in enumerate(zip(records, gold_scored)):
        ga = gold_ans[i] or (None, 0)
        out[r.id] = {"answer": r.answer, "gold_logprob": float(sum(lp)), "gold_n_tokens": len(lp),
                     "gold_answer_logprob": ga[0], "gold_answer_n_tokens": ga[1],
                     "greedy_answers": {p: extract_answer(outputs[i], p) for p in protos},
                     "greedy_answer_logprobs": {p: None if own[p][i] is None else own[p][i][0] for p in protos}}
    return out
