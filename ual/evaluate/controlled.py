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

    from ual.evaluate.metrics.answers import answer_as_written, extract_answer
    from ual.evaluate.generate import generate, resolve_model
    from ual.evaluate.likelihood import (answer_set_logprobs, answer_span_logprobs, final_answer_text,
                                         token_logprobs)

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
            scored = {}
            for r in chunk:
                if fams[r.id] == "high":
                    items = spec["categories"][r.category]["items"]
                    lps = answer_set_logprobs(mdl, tok, r.messages, items, template=template,
                                              batch_size=answer_batch_size)
                    scored.update({(r.id, it): v for it, v in zip(items, lps)})
            lows = [r for r in chunk if fams[r.id] == "low"]
            if lows:
                # one forward pass per response: the whole gold solution and its answer span come from the same
                # scores, as do the greedy answer's spans under both protocols
                msgs = [r.messages for r in lows]
                gold_scored = token_logprobs(mdl, tok, msgs, [r.response for r in lows], template=template,
                                             batch_size=batch_size)
                gold = [(float(sum(lp)), len(lp)) for _, lp in gold_scored]
                gold_ans = answer_span_logprobs(tok, gold_scored, [final_answer_text(r.response) for r in lows])
                protos = ("strict", "flexible")
                written = {p: [answer_as_written(gen[r.id]["output"], p) for r in lows] for p in protos}
                own_scored = token_logprobs(mdl, tok, msgs, [gen[r.id]["output"] for r in lows], template=template,
                                            batch_size=batch_size)
                own = {p: answer_span_logprobs(tok, own_scored, written[p]) for p in protos}
            li = 0
            for r in chunk:
                g = gen[r.id]
                row = {"id": r.id, "family": fams[r.id], "category": r.category, "source": r.source,
                       "greedy": g["output"], "greedy_finished": g["finished"]}
                if fams[r.id] == "high":
                    items = spec["categories"][r.category]["items"]
                    row["valid_logprobs"] = {it: scored[(r.id, it)][0] for it in items}
                    row["valid_n_tokens"] = {it: scored[(r.id, it)][1] for it in items}
                    if samples:
                        row["samples"] = smp[r.id]["output"] if k_samples > 1 else [smp[r.id]["output"]]
                else:
                    row["answer"] = r.answer
                    row["gold_logprob"], row["gold_n_tokens"] = gold[li]
                    row["gold_answer_logprob"], row["gold_answer_n_tokens"] = gold_ans[li] or (None, 0)
                    row["greedy_answers"] = {p: extract_answer(g["output"], p) for p in protos}
                    row["greedy_answer_logprobs"] = {p: None if own[p][li] is None else own[p][li][0]
                                                     for p in protos}
                    li += 1
                row["settings"] = settings
                out.write(row)
            bar.update(len(chunk))
    bar.close()
    return path
