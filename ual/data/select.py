"""Deita-style subset selection of one training source (``select: deita``), as the authors built MetaMath-6k.

Steps (docs/paper-data.md says which are the authors' recorded choices and which are our reading of their code):

1. **Complexity**: the Deita complexity scorer reads each user turn in its prompt (:data:`COMPLEXITY_TEMPLATE`);
   the rating is the expectation of 1..6 under the softmax of the next-token logits of the tokens "1".."6".
   A sample's complexity is the sum over its user turns (authors' ``data/deita_score.py``).
2. **Quality**: the Deita quality scorer reads each (instruction, response) pair (:data:`QUALITY_TEMPLATE`), the
   same way; summed over pairs.
3. **Rank** by complexity x quality, descending; ties keep source order (Python's stable sort, as the authors').
4. **Greedy walk** down the ranking: embed a candidate (mean of the embedding model's final hidden states, the
   input of ``lm_head``, over the tokens of every turn, each turn encoded and run on its own without special
   tokens, as the authors' ``scripts/hkust_select.py``), keep it only if its cosine similarity to every kept sample
   is <= ``threshold``; stop when ``target`` samples are kept.

Files, in the selection folder (``<run_dir>/data/select/`` unless ``select_dir`` names a shared one):

- ``complexity.jsonl``, ``quality.jsonl``: a header row (scorer, dtype, max_length, templates) then one row per
  sample ``{"id", "sha", "score", "turns", "truncated"}``, appended as scored; a rerun skips ids already there and
  refuses a row whose sample text changed (``sha``) or a header made with other settings.
- ``walk.jsonl``: a header row (fingerprint of the ranking and walk settings, embedding size) then one row per batch
  of ranked candidates ``{"start", "ids", "kept", "max_cos"}`` (``max_cos``: the largest similarity to a sample kept
  before it, null for the first).
- ``kept_embeddings.f32``: the kept samples' embeddings, float32, row-major ``[kept, hidden]``, in kept order.
- ``selection.json``: settings, scorer token ids, counts and the kept ids in rank order. When it matches the
  settings and the pool, a rerun reads the kept ids and loads no model, so the selection is exact.

A kill loses at most the batch in flight: scores and walk rows are appended per batch; the embeddings are
written before their walk row, and a resumed walk cuts the embeddings file back to the kept count of the walk rows
(or recomputes them if it is short). CPU tests use ``ual.common.models.build_tiny_model`` folders as all three
models.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Sequence

from ual.common.errors import InputError
from ual.data.records import Record

# Deita's prompts, verbatim (hkust-nlp/deita src/deita/selection/scorer/llama_scorer.py; the authors' copy in
# data/model_utils.py is identical), including the trailing spaces the scorers were trained with.
COMPLEXITY_TEMPLATE = ("You are a helpful assistant. Please identify the complexity score of the following user query. "
                       "\n##Query: {instruction}  \n##Complexity: ")
QUALITY_TEMPLATE = ("You are a helpful assistant. Please identify the quality score of the Response corresponding to "
                    "the Question. \n #Question#:\n{instruction}\n#Response#:\n{output} \n##Quality: ")
# What must stay when a prompt is cut to max_length: the text after the last placeholder.
TEMPLATE_TAIL = {"complexity": "  \n##Complexity: ", "quality": " \n##Quality: "}
RATING_TOKENS = ("1", "2", "3", "4", "5", "6")
# Deita hard-codes these Llama vocabulary ids for "1".."6" (llama_scorer.py id2score); we read the ids from the
# scorer's tokenizer and check them against this table for the two Deita scorers.
DEITA_LLAMA_IDS = (29896, 29906, 29941, 29946, 29945, 29953)
DEITA_SCORERS = ("hkust-nlp/deita-complexity-scorer", "hkust-nlp/deita-quality-scorer")
SIMILARITY_CHUNK = 4096  # kept embeddings compared per matrix product: memory b x 4096, never N x N (ours)
RECORDS_PER_WRITE = 32  # batches of records scored between two appends to the scores file (ours)


# ------------------------------------------------------------------------------------------------ prompts

def complexity_prompts(record: Record) -> list[str]:
    """One complexity prompt per user turn."""
    return [COMPLEXITY_TEMPLATE.format(instruction=m["content"]) for m in record.messages if m["role"] == "user"]


def quality_prompts(record: Record) -> list[str]:
    """One quality prompt per (user turn, assistant turn) pair, paired in order as the authors' ``zip`` does."""
    users = [m["content"] for m in record.messages if m["role"] == "user"]
    answers = [m["content"] for m in record.messages if m["role"] == "assistant"]
    return [QUALITY_TEMPLATE.format(instruction=u, output=a) for u, a in zip(users, answers)]


PROMPTS = {"complexity": complexity_prompts, "quality": quality_prompts}


def sample_sha(record: Record) -> str:
    """A short hash of a sample's conversation: a score row is reused only for the very text it scored."""
    return hashlib.sha1(json.dumps(record.messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def rating_token_ids(tokenizer, model_name: str = "") -> list[int]:
    """Vocabulary ids of "1".."6" in the scorer's tokenizer (each must be a single token)."""
    ids = tokenizer.convert_tokens_to_ids(list(RATING_TOKENS))
    unk = tokenizer.unk_token_id
    bad = [t for t, i in zip(RATING_TOKENS, ids) if i is None or (i == unk and t != tokenizer.unk_token)]
    if bad:
        raise InputError(None, None, "select_*_model", f"{model_name or 'the scorer'}: rating {bad[0]!r} is not one "
                         "token of its vocabulary; a Deita-style scorer reads the ratings 1-6 as single tokens")
    if model_name in DEITA_SCORERS and tuple(ids) != DEITA_LLAMA_IDS:
        raise InputError(None, None, "select_*_model", f"{model_name}: ids of '1'..'6' are {ids}, Deita reads "
                         f"{list(DEITA_LLAMA_IDS)}; is this the Deita tokenizer?")
    return list(ids)


def encode_prompt(tokenizer, prompt: str, kind: str, max_length: int) -> tuple[list[int], bool]:
    """Prompt ids with the tokenizer's special tokens (Deita's ``tokenizer.encode``: BOS for Llama). A prompt over
    ``max_length`` keeps its start and the template's tail, so the rating is still read after "##Complexity: " /
    "##Quality: " (ours: the authors never cut; MetaMathQA prompts fit). Returns (ids, truncated)."""
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if len(ids) <= max_length:
        return ids, False
    tail = tokenizer(TEMPLATE_TAIL[kind], add_special_tokens=False)["input_ids"]
    return ids[: max_length - len(tail)] + tail, True


# ------------------------------------------------------------------------------------------------ model passes

def _device(model):
    return next(model.parameters()).device


def expected_ratings(model, encoded: Sequence[list[int]], token_ids: Sequence[int], *, pad_id: int,
                     batch_size: int) -> list[float]:
    """Expected rating sum_k k * softmax(logits at the last prompt position over the ids of "1".."6")_k, per prompt.

    ``encoded``: prompt ids (non-empty). Right padding with an attention mask, so a prompt's rating does not depend
    on its batch mates (up to float rounding); prompts run longest first. Only the last position goes through the
    output layer. Returns floats in [1, 6], in input order.
    """
    import torch

    from ual.common.batching import right_pad

    head = model.get_output_embeddings()
    decoder = model.get_decoder()
    dev = _device(model)
    idx = torch.tensor(list(token_ids), device=dev)
    values = torch.arange(1, len(token_ids) + 1, dtype=torch.float32, device=dev)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    out = [math.nan] * len(encoded)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            ids, mask = right_pad([encoded[i] for i in chunk], pad_id)
            hidden = decoder(input_ids=ids.to(dev), attention_mask=mask.to(dev)).last_hidden_state  # [B, L, H]
            last = hidden[torch.arange(len(chunk), device=dev), mask.sum(1).to(dev) - 1]  # [B, H]
            logits = head(last).float()[:, idx]  # [B, 6]
            rating = (torch.softmax(logits, dim=-1) * values).sum(-1)  # [B]
            for i, r in zip(chunk, rating.tolist()):
                out[i] = r
    return out


def embed(model, tokenizer, records: Sequence[Record], *, batch_size: int, max_length: int):
    """Mean final hidden state (the input of ``lm_head``) over every token of every turn of each record.

    Each turn is tokenized without special tokens and run on its own (the authors' ``get_sentence_embedding``);
    turns longer than ``max_length`` tokens keep their start. Returns ``[len(records), hidden]`` float32 numpy.
    """
    import numpy as np
    import torch

    from ual.common.batching import right_pad

    segs = []  # (owner record, ids)
    for k, r in enumerate(records):
        for m in r.messages:
            ids = tokenizer(m["content"], add_special_tokens=False)["input_ids"][:max_length]
            if ids:
                segs.append((k, ids))
    decoder = model.get_decoder()
    dev = _device(model)
    hidden_size = model.get_output_embeddings().weight.shape[1]
    sums = torch.zeros(len(records), hidden_size, dtype=torch.float64)
    counts = torch.zeros(len(records), dtype=torch.float64)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(segs)), key=lambda i: -len(segs[i][1]))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = [segs[i] for i in order[start:start + batch_size]]
            ids, mask = right_pad([s for _, s in chunk], pad_id)
            hidden = decoder(input_ids=ids.to(dev), attention_mask=mask.to(dev)).last_hidden_state  # [B, L, H]
            total = (hidden.float() * mask.to(dev)[:, :, None].float()).sum(1).double().cpu()  # [B, H]
            owners = torch.tensor([k for k, _ in chunk])
            sums.index_add_(0, owners, total)
            counts.index_add_(0, owners, mask.sum(1).double())
    if (counts == 0).any():
        k = int((counts == 0).nonzero()[0])
        raise InputError(None, None, "messages", f"sample {records[k].id!r} has no tokens to embed")
    return (sums / counts[:, None]).float().numpy()


class GreedyDiversityFilter:
    """Exact greedy near-duplicate filter: candidates arrive in rank order; one is kept only if its cosine
    similarity to every sample kept before it (earlier batches and earlier candidates of its own batch) is
    <= ``threshold``.

    The kept embeddings (unit-normalised float32) sit in a ``[capacity, hidden]`` buffer; a batch of b candidates
    is compared with them ``chunk`` rows at a time, so memory is O(b x chunk + capacity x hidden), never N x N.
    (Deita's batched filter also drops a candidate that is close to a *rejected* earlier candidate of its batch;
    this one is the authors' one-by-one walk, batched.)
    """

    def __init__(self, threshold: float, hidden: int, capacity: int, *, chunk: int = SIMILARITY_CHUNK,
                 device: str = "cpu"):
        import torch

        self.threshold = float(threshold)
        self.chunk = chunk
        self.device = device
        self.buf = torch.zeros(capacity, hidden, dtype=torch.float32, device=device)
        self.n = 0

    @staticmethod
    def _unit(x):
        import torch

        x = torch.as_tensor(x, dtype=torch.float32)
        return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def add(self, emb) -> None:
        """Put already-kept embeddings ``[k, hidden]`` back (a resumed walk)."""
        x = self._unit(emb).to(self.device)
        self.buf[self.n:self.n + len(x)] = x
        self.n += len(x)

    def offer(self, emb, limit: int | None = None) -> tuple[list[bool], list[float | None]]:
        """Decide candidates ``[b, hidden]`` in order; stops after ``limit`` keeps (the rest are not visited and
        get no decision). Returns (kept flags, max similarity to what was kept before each; None if nothing was)."""
        import torch

        x = self._unit(emb).to(self.device)
        b = len(x)
        best = torch.full((b,), -math.inf, device=self.device)
        for i in range(0, self.n, self.chunk):  # [b, chunk] at a time
            best = torch.maximum(best, (x @ self.buf[i:min(i + self.chunk, self.n)].T).max(dim=1).values)
        within = x @ x.T  # [b, b]: b is a batch, not the pool
        kept, max_cos, local = [], [], []
        for j in range(b):
            if limit is not None and sum(kept) >= limit:
                break
            m = best[j]
            if local:
                m = torch.maximum(m, within[j, local].max())
            m = float(m)
            ok = m <= self.threshold  # -inf (nothing kept yet) passes
            kept.append(ok)
            max_cos.append(None if m == -math.inf else m)
            if ok:
                local.append(j)
        if local:
            self.buf[self.n:self.n + len(local)] = x[local]
            self.n += len(local)
        return kept, max_cos


def rank(records: Sequence[Record], complexity: dict[str, float], quality: dict[str, float]) -> list[int]:
    """Indices of ``records`` by complexity x quality, descending; ties keep source order (stable sort)."""
    return sorted(range(len(records)), key=lambda i: -(complexity[records[i].id] * quality[records[i].id]))


# ------------------------------------------------------------------------------------------------ files

def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _load_model(name: str, dtype: str, allow_pickle: bool):
    import torch

    from ual.common.models import load_model, load_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = load_tokenizer(name, padding_side="right")
    return load_model(name, dtype=dtype, allow_pickle=allow_pickle, device=device), tok


def _free(model) -> None:
    import gc

    import torch

    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def score_file_header(cfg, kind: str) -> dict:
    """What a scores file's rows depend on (besides each sample's text)."""
    model = cfg.select_complexity_model if kind == "complexity" else cfg.select_quality_model
    template = COMPLEXITY_TEMPLATE if kind == "complexity" else QUALITY_TEMPLATE
    return {"header": True, "kind": kind, "model": model, "dtype": cfg.select_dtype,
            "max_length": cfg.select_max_length, "template_sha": hashlib.sha1(template.encode()).hexdigest()[:16]}


def read_scores(path: Path, header: dict, records: Sequence[Record] | None = None) -> dict[str, dict]:
    """The rows of a scores file by id (later rows win), after checking its header and each row's text hash."""
    from ual.common.io import iter_jsonl

    if not path.exists():
        return {}
    rows = list(iter_jsonl(path))  # tolerant: a torn last line (a kill) is skipped
    if not rows:
        return {}
    line, first = rows[0]
    if not first.get("header"):
        raise InputError(path, line, None, "the first row must be the header of the scorer settings")
    if {k: first.get(k) for k in header} != header:
        diff = next(k for k in header if first.get(k) != header[k])
        raise InputError(path, line, diff, f"was scored with {diff}={first.get(diff)!r}, this run asks for "
                         f"{header[diff]!r}; delete the file or point select_dir elsewhere")
    sha = {r.id: sample_sha(r) for r in records} if records is not None else None
    out: dict[str, dict] = {}
    for line, row in rows[1:]:
        rid = row.get("id")
        if not isinstance(rid, str) or not isinstance(row.get("score"), (int, float)):
            raise InputError(path, line, "score", "a score row needs an id and a numeric score")
        if sha is not None and rid in sha and row.get("sha") != sha[rid]:
            raise InputError(path, line, "sha", f"sample {rid!r} has changed since it was scored; delete the file "
                             "or point select_dir elsewhere")
        out[rid] = row
    return out


def score(records: Sequence[Record], cfg, kind: str, path: Path, *, progress: bool = True) -> dict[str, float]:
    """Score every record with the ``kind`` ("complexity" | "quality") scorer, appending rows to ``path`` and
    skipping ids already there. Returns ``{id: score}`` for ``records``."""
    from tqdm.auto import tqdm

    from ual.common.io import JsonlAppender

    header = score_file_header(cfg, kind)
    done = read_scores(path, header, records)
    todo = [r for r in records if r.id not in done]
    if todo:
        model, tok = _load_model(header["model"], cfg.select_dtype, cfg.select_allow_pickle)
        ids = rating_token_ids(tok, header["model"])
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        step = cfg.select_batch_size * RECORDS_PER_WRITE
        bar = tqdm(total=len(records), initial=len(records) - len(todo), desc=f"{kind} scores", unit="sample",
                   disable=not progress, dynamic_ncols=True)
        # No fsync per row: a killed process loses nothing the OS has; a torn last line is skipped on resume.
        with JsonlAppender(path, fsync=False) as out:
            if not path.stat().st_size:
                out.write(header)
            for start in range(0, len(todo), step):
                chunk = todo[start:start + step]
                owners, encoded, truncated = [], [], set()
                for k, r in enumerate(chunk):
                    prompts = PROMPTS[kind](r)
                    if not prompts:
                        raise InputError(None, None, "messages", f"sample {r.id!r} has no "
                                         f"{'user turn' if kind == 'complexity' else 'user/assistant pair'} to score")
                    for p in prompts:
                        e, cut = encode_prompt(tok, p, kind, cfg.select_max_length)
                        owners.append(k)
                        encoded.append(e)
                        if cut:
                            truncated.add(k)
                ratings = expected_ratings(model, encoded, ids, pad_id=pad_id, batch_size=cfg.select_batch_size)
                turns: list[list[float]] = [[] for _ in chunk]
                for k, v in zip(owners, ratings):
                    turns[k].append(v)
                for k, r in enumerate(chunk):
                    row = {"id": r.id, "sha": sample_sha(r), "score": sum(turns[k]), "turns": turns[k],
                           "truncated": k in truncated}
                    out.write(row)
                    done[r.id] = row
                bar.update(len(chunk))
        bar.close()
        _free(model)
    return {r.id: float(done[r.id]["score"]) for r in records}


def _walk_fingerprint(cfg, ranked_ids: list[str]) -> str:
    return _fingerprint({"ranking": hashlib.sha256("\n".join(ranked_ids).encode()).hexdigest(),
                         "threshold": cfg.select_threshold, "target": cfg.select_target,
                         "model": cfg.select_embedding_model, "dtype": cfg.select_dtype,
                         "max_length": cfg.select_max_length})


def _read_walk(path: Path, fingerprint: str) -> tuple[dict | None, list[dict]]:
    """The walk's header and batch rows, or (None, []) when there is no walk with this fingerprint."""
    from ual.common.io import iter_jsonl

    if not path.exists():
        return None, []
    rows = [row for _, row in iter_jsonl(path)]
    if not rows or rows[0].get("fingerprint") != fingerprint:
        return None, []
    batches, visited = [], 0
    for row in rows[1:]:
        if row.get("start") != visited:  # rows are appended in order; anything else is not ours
            raise InputError(path, None, "start", f"walk rows are not contiguous (expected start {visited})")
        batches.append(row)
        visited += len(row["ids"])
    return rows[0], batches


def walk(records: Sequence[Record], order: Sequence[int], cfg, folder: Path, *, progress: bool = True) -> dict:
    """The greedy similarity walk over ``records`` in ``order`` (indices), resumable; returns
    ``{"kept": [ids], "visited": n, "max_cos": [per visited candidate], "exhausted": bool}``."""
    import numpy as np
    from tqdm.auto import tqdm

    from ual.common.io import JsonlAppender

    ranked_ids = [records[i].id for i in order]
    fp = _walk_fingerprint(cfg, ranked_ids)
    wpath, epath = folder / "walk.jsonl", folder / "kept_embeddings.f32"
    header, batches = _read_walk(wpath, fp)
    visited = sum(len(b["ids"]) for b in batches)
    kept_ids = [i for b in batches for i, k in zip(b["ids"], b["kept"]) if k]
    max_cos = [c for b in batches for c in b["max_cos"]]
    if len(kept_ids) >= cfg.select_target or visited >= len(order):
        return {"kept": kept_ids[:cfg.select_target], "visited": visited, "max_cos": max_cos,
                "exhausted": len(kept_ids) < cfg.select_target}
    model, tok = _load_model(cfg.select_embedding_model, cfg.select_dtype, cfg.select_allow_pickle)
    hidden = model.get_output_embeddings().weight.shape[1]
    by_id = {r.id: r for r in records}
    if header is None:
        if wpath.exists() or epath.exists():
            print(f"{wpath}: made with other selection settings or another ranking; starting the walk again "
                  "(the scores are kept)", flush=True)
        for p in (wpath, epath):
            p.unlink(missing_ok=True)
        header = {"fingerprint": fp, "dim": hidden}
        with JsonlAppender(wpath) as w:
            w.write(header)
    if header.get("dim") != hidden:
        raise InputError(wpath, 1, "dim", f"embeddings of size {header.get('dim')}, the model gives {hidden}")
    filt = GreedyDiversityFilter(cfg.select_threshold, hidden, cfg.select_target, device=str(_device(model)))
    row_bytes = 4 * hidden
    have = epath.stat().st_size // row_bytes if epath.exists() else 0
    if have >= len(kept_ids):
        with open(epath, "r+b" if epath.exists() else "wb") as f:  # drop rows of a batch whose walk row was lost
            f.truncate(len(kept_ids) * row_bytes)
        kept_emb = np.fromfile(epath, dtype=np.float32).reshape(-1, hidden) if kept_ids else None
    else:  # embeddings file short (lost): recompute the kept ones, deterministic up to float rounding
        kept_emb = embed(model, tok, [by_id[i] for i in kept_ids], batch_size=cfg.select_batch_size,
                         max_length=cfg.select_max_length)
        kept_emb.astype(np.float32).tofile(epath)
    if kept_emb is not None:
        filt.add(kept_emb)
    bar = tqdm(total=cfg.select_target, initial=len(kept_ids), desc="diverse walk (kept)", unit="sample",
               disable=not progress, dynamic_ncols=True)
    exhausted = False
    with JsonlAppender(wpath) as w, open(epath, "ab") as ef:
        while len(kept_ids) < cfg.select_target:
            if visited >= len(order):
                exhausted = True
                break
            cand = [records[i] for i in order[visited:visited + cfg.select_batch_size]]
            emb = embed(model, tok, cand, batch_size=cfg.select_batch_size, max_length=cfg.select_max_length)
            flags, cos = filt.offer(emb, limit=cfg.select_target - len(kept_ids))
            ef.write(emb[[j for j, k in enumerate(flags) if k]].astype(np.float32).tobytes())
            ef.flush()
            os.fsync(ef.fileno())
            w.write({"start": visited, "ids": [r.id for r in cand[:len(flags)]], "kept": flags,
                     "max_cos": [None if c is None else round(c, 6) for c in cos]})
            kept_ids += [r.id for r, k in zip(cand, flags) if k]
            max_cos += cos
            visited += len(flags)
            bar.update(sum(flags))
    bar.close()
    _free(model)
    if exhausted:
        print(f"selection: the pool ran out after {visited} candidates with {len(kept_ids)} kept (target "
              f"{cfg.select_target}); a higher select_threshold keeps more", flush=True)
    return {"kept": kept_ids, "visited": visited, "max_cos": max_cos, "exhausted": exhausted}


def selection_fingerprint(cfg, records: Sequence[Record]) -> str:
    """Everything the kept ids depend on: the pool (ids and texts) and every selection setting."""
    pool = hashlib.sha256("\n".join(f"{r.id}:{sample_sha(r)}" for r in records).encode()).hexdigest()
    return _fingerprint({"pool": pool, "complexity": score_file_header(cfg, "complexity"),
                         "quality": score_file_header(cfg, "quality"), "embedding": cfg.select_embedding_model,
                         "threshold": cfg.select_threshold, "target": cfg.select_target})


def select_folder(cfg, run_dir: str | Path) -> Path:
    """Where the selection's files go: ``select_dir`` if set, else ``<run_dir>/data/select``."""
    return Path(cfg.select_dir).expanduser() if cfg.select_dir else Path(run_dir) / "data" / "select"


def select(records: Sequence[Record], cfg, folder: str | Path, *, progress: bool = True) -> list[Record]:
    """Run (or resume, or read back) the Deita selection of ``records`` with the ``select_*`` settings of ``cfg``
    (a :class:`ual.data.DataConfig`); returns the kept records in rank order and writes ``selection.json``."""
    from ual.common.io import atomic_write_json, check_writable, read_json

    folder = Path(folder)
    check_writable(folder)
    if len(set(r.id for r in records)) != len(records):
        raise InputError(None, None, "id", "the selection pool has duplicate ids")
    by_id = {r.id: r for r in records}
    fp = selection_fingerprint(cfg, records)
    done = folder / "selection.json"
    if done.exists():
        prev = read_json(done)
        if prev.get("fingerprint") == fp:
            return [by_id[i] for i in prev["kept_ids"]]
    complexity = score(records, cfg, "complexity", folder / "complexity.jsonl", progress=progress)
    quality = score(records, cfg, "quality", folder / "quality.jsonl", progress=progress)
    order = rank(records, complexity, quality)
    res = walk(records, order, cfg, folder, progress=progress)
    kept = res["kept"]
    evol = [complexity[i] * quality[i] for i in kept]
    atomic_write_json(done, {
        "method": "deita", "fingerprint": fp, "pool": len(records), "target": cfg.select_target,
        "threshold": cfg.select_threshold, "kept": len(kept), "visited": res["visited"],
        "exhausted": res["exhausted"],
        "models": {"complexity": cfg.select_complexity_model, "quality": cfg.select_quality_model,
                   "embedding": cfg.select_embedding_model},
        "dtype": cfg.select_dtype, "max_length": cfg.select_max_length,
        "files": {"complexity": "complexity.jsonl", "quality": "quality.jsonl", "walk": "walk.jsonl",
                  "kept_embeddings": "kept_embeddings.f32"},
        "kept_score_range": [min(evol), max(evol)] if kept else None, "kept_ids": kept})
    return [by_id[i] for i in kept]


def plan(cfg, pool: int | None = None) -> dict:
    """What ``select: deita`` will do for ``cfg`` (a DataConfig), without loading anything; ``pool``: the number of
    samples it chooses from, when known."""
    if cfg.select == "none":
        return {"select": "none"}
    out = {"select": "deita", "source": cfg.select_source, "pool": pool, "target": cfg.select_target,
           "threshold": cfg.select_threshold,
           "steps": [f"complexity of every pool sample ({cfg.select_complexity_model}, one prompt per user turn)",
                     f"quality of every pool sample ({cfg.select_quality_model}, one prompt per exchange)",
                     "rank by complexity x quality, descending",
                     f"walk the ranking embedding each candidate ({cfg.select_embedding_model}, mean final hidden "
                     f"state); keep it if its cosine similarity to every kept one is <= {cfg.select_threshold}; stop "
                     f"at {cfg.select_target}"],
           "dtype": cfg.select_dtype, "batch_size": cfg.select_batch_size,
           "folder": cfg.select_dir or "<run_dir>/data/select"}
    if pool is not None and pool < cfg.select_target:
        out["warning"] = f"the pool ({pool}) is smaller than the target ({cfg.select_target})"
    return out
