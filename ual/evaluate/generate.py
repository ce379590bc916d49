"""Batched generation from a base model plus an optional LoRA adapter, saved as resumable JSONL.

Prompts are built with :func:`ual.formatting.encode_prompt`, so the ids the model sees at evaluation are the
ids it was trained on. Prompts are left-padded (a decoder continues from the last position of every row), and
generation stops at the tokenizer's end-of-turn token (``eos``) or after ``max_new_tokens``.

Sampling is seeded per sample, not per batch: the random stream of sample ``k`` of record ``id`` comes from a
``torch.Generator`` seeded with a hash of ``(seed, id, k)``, and the draw is made inside a logits processor.
The same settings therefore give the same outputs whatever the batch size and wherever a killed run resumed
(up to float rounding differences between padded and unpadded rows, which can flip a near-tie).

Output JSONL, one row per record, appended as each batch finishes::

    {"id": str, "prompt": str, "output": str | [str] * n, "n_new_tokens": int | [int],
     "finished": bool | [bool],   # stopped at eos (False: cut at max_new_tokens)
     "answer": str,               # only when the record has one
     "category": str, "source": str,
     "settings": {"model", "adapter", "template", "max_new_tokens", "do_sample", "temperature", "top_k",
                  "top_p", "n", "seed", "dtype"},
     "batch_size": int}

A rerun with the same settings skips ids already in the file; a file written with other settings is refused.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

from ual.data.records import Record
from ual.common.batching import left_pad
from ual.common.errors import InputError
from ual.common.formatting import TEMPLATES, encode_prompt
from ual.common.io import JsonlAppender, iter_jsonl

SETTING_KEYS = ("model", "adapter", "template", "max_new_tokens", "do_sample", "temperature", "top_k", "top_p",
                "n", "seed", "dtype")


def row_seed(seed: int, record_id: str, k: int) -> int:
    """A 63-bit seed for sample ``k`` of ``record_id``, stable across processes and Python versions."""
    digest = hashlib.sha256(f"{seed}\x00{record_id}\x00{k}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class _RowSampler:
    """Logits processor that warps (temperature, top-k, top-p, as transformers does) and then draws one token per
    row from that row's own generator; it returns scores that are -inf except at the drawn token, so greedy
    selection in ``generate`` picks the draw."""

    def __init__(self, generators: list, temperature: float, top_k: int, top_p: float):
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        self.generators = generators
        warpers = []
        if temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
        if top_k and top_k > 0:
            warpers.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
        self.warpers = LogitsProcessorList(warpers)

    def __call__(self, input_ids, scores):
        import torch

        scores = self.warpers(input_ids, scores)
        probs = torch.softmax(scores.float(), dim=-1)
        picks = torch.stack([torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(self.generators)])
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(out.shape[0]), picks] = 0.0
        return out


def _as_records(records: Sequence[Record | dict]) -> list[Record]:
    out = []
    for i, r in enumerate(records):
        if isinstance(r, Record):
            out.append(r)
        elif isinstance(r, dict):
            try:
                out.append(Record(id=str(r["id"]), source=r.get("source", ""), messages=r["messages"],
                                  answer=r.get("answer"), category=r.get("category")))
            except KeyError as e:
                raise InputError(None, i + 1, e.args[0], "is missing") from None
        else:
            raise InputError(None, i + 1, None, f"expected a Record or a dict, got {type(r).__name__}")
    seen = set()
    for i, r in enumerate(out):
        if r.id in seen:
            raise InputError(None, i + 1, "id", f"duplicate id {r.id!r}")
        seen.add(r.id)
    return out


def resolve_model(model, adapter: str | None = None, dtype: str = "float32"):
    """(model, tokenizer, model name) from a name/path or an already-loaded (model, tokenizer) pair."""
    from ual.common.models import load_model, load_tokenizer

    if isinstance(model, (tuple, list)):
        if adapter is not None:
            raise ValueError("adapter must be merged into an already-loaded model by the caller")
        m, tok = model
        name = getattr(getattr(m, "config", None), "_name_or_path", None) or type(m).__name__
        return m, tok, str(name)
    return load_model(str(model), dtype=dtype, adapter=adapter), load_tokenizer(str(model)), str(model)


def _done_ids(path: Path, settings: dict) -> set[str]:
    done: set[str] = set()
    if not path.exists():
        return done
    for line, row in iter_jsonl(path):
        if row.get("settings") != settings:
            diff = sorted(k for k in SETTING_KEYS if (row.get("settings") or {}).get(k) != settings[k])
            raise InputError(path, line, "settings", f"file was written with other generation settings "
                             f"(differ in {', '.join(diff) or 'keys'}); use another output path")
        done.add(str(row["id"]))
    return done


def _check_generation_args(template, batch_size, n, max_new_tokens, temperature, top_p, top_k, do_sample) -> None:
    if template not in TEMPLATES:
        raise InputError(None, None, "template", f"must be one of {TEMPLATES}, got {template!r}")
    for name, value, ok in (("batch_size", batch_size, batch_size >= 1), ("n", n, n >= 1),
                            ("max_new_tokens", max_new_tokens, max_new_tokens >= 1),
                            ("temperature", temperature, temperature > 0), ("top_p", top_p, 0 < top_p <= 1),
                            ("top_k", top_k, top_k >= 0)):
        if not ok:
            raise InputError(None, None, name, f"invalid value {value!r}")
    if n > 1 and not do_sample:
        raise InputError(None, None, "n", "greedy decoding gives one output per prompt; set do_sample for n > 1")


def _decode_new_tokens(tok, new_ids: list[list[int]]) -> tuple[list[str], list[int], list[bool]]:
    """Per generated sequence: its text up to the first EOS (special tokens dropped), its token count up to there,
    and whether it stopped at EOS (``False``: it ran out of ``max_new_tokens``)."""
    texts, lengths, finished = [], [], []
    for ids in new_ids:
        stopped = tok.eos_token_id in ids
        if stopped:
            ids = ids[:ids.index(tok.eos_token_id)]
        finished.append(stopped)
        lengths.append(len(ids))
        texts.append(tok.decode(ids, skip_special_tokens=True))
    return texts, lengths, finished


def generate(model: Any, records: Sequence[Record | dict], output_path: str | Path, *, adapter: str | None = None,
             template: str = "chat", batch_size: int = 8, max_new_tokens: int = 256, do_sample: bool = False,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, n: int = 1, seed: int = 1337,
             dtype: str = "float32", progress: bool = True) -> Path:
    """Generate ``n`` outputs per record and append them to ``output_path`` (JSONL, schema in the module doc).

    ``model``: a model name/folder for :func:`ual.models.load_model` (with ``adapter``: a LoRA folder merged in),
    or an already-loaded ``(model, tokenizer)`` pair. ``batch_size``: sequences per forward pass (a record with
    ``n`` samples contributes ``n`` sequences). ``top_k=0`` and ``top_p=1.0`` disable those filters. Greedy
    decoding (``do_sample=False``) requires ``n=1``. Returns ``output_path``.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig, LogitsProcessorList

    _check_generation_args(template, batch_size, n, max_new_tokens, temperature, top_p, top_k, do_sample)
    recs = _as_records(records)
    output_path = Path(output_path)
    mdl, tok, name = resolve_model(model, adapter, dtype)
    settings = {"model": name, "adapter": None if adapter is None else str(adapter), "template": template,
                "max_new_tokens": max_new_tokens, "do_sample": do_sample,
                "temperature": temperature if do_sample else None, "top_k": top_k if do_sample else None,
                "top_p": top_p if do_sample else None, "n": n, "seed": seed, "dtype": dtype}
    done = _done_ids(output_path, settings)
    todo = [r for r in recs if r.id not in done]
    if tok.eos_token_id is None:
        raise InputError(None, None, "tokenizer", "has no eos token to stop generation at")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    # Every generation parameter set explicitly, so nothing leaks in from the model's generation_config.
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                               eos_token_id=tok.eos_token_id, pad_token_id=pad_id, repetition_penalty=1.0,
                               no_repeat_ngram_size=0, min_new_tokens=0, temperature=None, top_k=None, top_p=None)

    prompts = {r.id: encode_prompt(r.messages, tok, template=template) for r in todo}
    # One sequence per (record, sample); records are kept whole inside a batch so a row is written complete.
    per_batch = max(1, batch_size // n)
    bar = tqdm(total=len(todo), desc=f"generate {output_path.name}", unit="prompt", disable=not progress)
    with JsonlAppender(output_path) as out, torch.no_grad():
        for start in range(0, len(todo), per_batch):
            chunk = todo[start:start + per_batch]
            seqs = [(r, k) for r in chunk for k in range(n)]
            input_ids, mask = left_pad([prompts[r.id] for r, _ in seqs], pad_id)
            procs = LogitsProcessorList()
            if do_sample:
                gens = [torch.Generator(device=mdl.device).manual_seed(row_seed(seed, r.id, k)) for r, k in seqs]
                procs.append(_RowSampler(gens, temperature, top_k, top_p))
            gen = mdl.generate(input_ids=input_ids.to(mdl.device), attention_mask=mask.to(mdl.device),
                               generation_config=gen_cfg, logits_processor=procs)
            texts, lengths, finished = _decode_new_tokens(tok, gen[:, input_ids.shape[1]:].cpu().tolist())
            for j, r in enumerate(chunk):
                sl = slice(j * n, (j + 1) * n)
                row = {"id": r.id, "prompt": tok.decode(prompts[r.id]),
                       "output": texts[sl][0] if n == 1 else texts[sl],
                       "n_new_tokens": lengths[sl][0] if n == 1 else lengths[sl],
                       "finished": finished[sl][0] if n == 1 else finished[sl]}
                if r.answer is not None:
                    row["answer"] = r.answer
                if r.category is not None:
                    row["category"] = r.category
                row["source"] = r.source
                row["settings"] = settings
                row["batch_size"] = batch_size
                out.write(row)
            bar.update(len(chunk))
    bar.close()
    return output_path
