"""Backends that score samples with a local causal LM (transformers): ``local``, ``likelihood``, ``sampling``.

All scores are >= 0 by construction (an expected rating in [0, 99]; NLLs and entropies in nats; the LCA score is
a cross-entropy) and each row records its ``scale``.

Tokenisation of ratings (``local``). Numbers 0-99 may be one token or several (SmolLM2 and the byte tokenizer
split digits). We score every candidate's token sequence exactly: ``P(n) = prod_j p(t_j | prompt, t_<j) *
p(end | prompt, t)`` where "end" is any next token that does not start with a digit (so "8" is not counted as the
start of "85"); zero-padded forms ("05") are not candidates. The prompt is run once; the 100 candidates run as
one batch (in chunks) on a copy of its KV cache. The expected rating is ``sum n P(n) / sum P(n)``, i.e.
conditioned on the reply being a number in 0-99; ``number_mass = sum P(n)`` records how much probability the
model put on such a reply at all. Candidates are tokenized on their own, after the assistant header (a token
boundary in ChatML and the paper template).
"""
from __future__ import annotations

import copy
import math
from typing import Iterator, Sequence

from ual.data.records import Record
from ual.elicit.backends.base import ERROR, OK, Backend
from ual.elicit.config import ElicitConfig
from ual.elicit.lca import answer_class, assign_classes, lca_reconstruction, predictive_entropy
from ual.elicit.prompt import load_prompt, rating_messages, render_example
from ual.common.errors import InputError
from ual.common.models import cache_kwargs

CANDIDATE_CHUNK = 25  # rating candidates per forward pass: bounds the expanded KV cache's memory


class _ModelBackend(Backend):
    """Shared: lazy model/tokenizer loading, encodings, truncation. A reference response is scored up to and
    including its end-of-turn token, as ``ual.evaluate.likelihood`` does."""

    def __init__(self, cfg: ElicitConfig):
        if not cfg.model:
            raise InputError(None, None, "model", f"the {self.name} backend needs --model (e.g. smollm2-135m)")
        if cfg.max_length < 16 or cfg.batch_size < 1 or cfg.max_new_tokens < 1:
            raise InputError(None, None, "max_length", "max_length must be >= 16, batch_size and max_new_tokens >= 1")
        self.cfg = cfg
        self.model = cfg.model
        self._lm = None
        self._tok = None

    def prepare(self) -> None:
        self._load()

    def _load(self):
        if self._lm is None:
            from ual.common.models import load_model, load_tokenizer

            self._tok = load_tokenizer(self.cfg.model)
            self._lm = load_model(self.cfg.model, dtype=self.cfg.dtype)
        return self._lm, self._tok

    def _eos_ids(self) -> list[int]:
        lm, tok = self._load()
        eos = lm.generation_config.eos_token_id if lm.generation_config is not None else None
        eos = tok.eos_token_id if eos is None else eos
        return [eos] if isinstance(eos, int) else list(eos)

    def _prompt_and_response(self, r: Record) -> tuple[list[int], list[int], bool]:
        """Prompt and reference-response ids; the prompt keeps at most half of ``max_length`` (its end), the
        response fills the rest (its start). Returns (prompt, response, truncated)."""
        from ual.common.formatting import encode_prompt_and_response

        _, tok = self._load()
        p, resp = encode_prompt_and_response(r.messages, r.response, tok, template=self.cfg.template)
        if tok.eos_token_id in resp:  # score the reply up to its end-of-turn, not the template's newline after it
            resp = resp[: resp.index(tok.eos_token_id) + 1]
        n = self.cfg.max_length
        truncated = len(p) + len(resp) > n
        if truncated:
            keep_p = min(len(p), max(n // 2, n - len(resp)))
            p = p[len(p) - keep_p:]
            resp = resp[: n - keep_p]
        return p, resp, truncated

    def _generation_prompt(self, r: Record) -> tuple[list[int], bool]:
        from ual.common.formatting import encode_prompt

        _, tok = self._load()
        p = encode_prompt(r.messages, tok, template=self.cfg.template)
        budget = self.cfg.max_length - self.cfg.max_new_tokens
        if budget < 8:
            raise InputError(None, None, "max_new_tokens", "leaves fewer than 8 prompt tokens inside max_length")
        return (p[-budget:], True) if len(p) > budget else (p, False)

    def _check_responses(self, records: Sequence[Record]) -> None:
        bad = [r.id for r in records if not r.response or not r.response.strip()]
        if bad:
            raise InputError(None, None, "messages", f"{len(bad)} sample(s) have no assistant turn to score "
                             f"(first: {bad[0]!r}); the {self.name} backend needs reference responses")


def _no_grad(fn):
    """Run ``fn`` without autograd; scoped to the call (a global switch would leak into the caller's process)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper


def _batches(records: Sequence[Record], size: int) -> Iterator[list[Record]]:
    for i in range(0, len(records), size):
        yield list(records[i: i + size])


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="sample", disable=not enabled, dynamic_ncols=True)


@_no_grad
def response_token_stats(lm, pairs: Sequence[tuple[list[int], list[int]]], pad_id: int) -> list[tuple[list[float], list[float]]]:
    """Per-token NLL and predictive entropy (nats) of each response given its prompt, in one padded batch.

    ``pairs``: [(prompt ids, response ids)], response non-empty. Returns, per pair, (nll [R], entropy [R]) as
    Python floats, where entry j is about the distribution that predicts response token j. Right padding with an
    attention mask, so a pair's values do not depend on its batch mates (up to float rounding).
    """
    import torch

    from ual.common.batching import right_pad

    ids, mask = right_pad([p + r for p, r in pairs], pad_id)
    hidden = lm.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, L, H]
    head = lm.get_output_embeddings()
    cap = getattr(lm.config, "final_logit_softcapping", None)
    out = []
    for i, (p, r) in enumerate(pairs):
        pos = torch.arange(len(p) - 1, len(p) + len(r) - 1)  # positions whose next token is a response token
        logits = head(hidden[i, pos]).float()  # [R, V]
        if cap:
            logits = torch.tanh(logits / cap) * cap
        logp = torch.log_softmax(logits, dim=-1)
        target = torch.tensor(r)
        nll = -logp.gather(1, target[:, None])[:, 0]
        ent = (-(logp.exp() * logp).sum(-1)).clamp_min(0.0)  # clamp: float rounding only; entropy >= 0
        out.append((nll.tolist(), ent.tolist()))
    return out


@_no_grad
def generate(lm, prompts: Sequence[list[int]], *, pad_id: int, eos_ids: list[int], max_new_tokens: int,
             do_sample: bool, num_return_sequences: int = 1, temperature: float = 1.0,
             top_k: int = 0) -> list[dict]:
    """Batched generation (left padding) with each reply's NLL under the model's unmodified distribution.

    Returns ``len(prompts) * num_return_sequences`` dicts (prompt-major): ``ids`` (reply tokens up to and
    including the first EOS), ``nll`` (sum over those tokens, nats), ``token_nll`` (per token), ``len``,
    ``finished`` (EOS reached).
    """
    import torch
    from transformers import GenerationConfig

    from ual.common.batching import left_pad

    ids, mask = left_pad(prompts, pad_id)
    width = ids.shape[1]
    gcfg = GenerationConfig(do_sample=do_sample, max_new_tokens=max_new_tokens, num_beams=1,
                            num_return_sequences=num_return_sequences, eos_token_id=eos_ids, pad_token_id=pad_id,
                            temperature=temperature if do_sample else None, top_k=top_k if do_sample else None,
                            top_p=None, output_logits=True, return_dict_in_generate=True)
    out = lm.generate(input_ids=ids, attention_mask=mask, generation_config=gcfg)
    gen = out.sequences[:, width:]  # [N, S]
    logits = torch.stack(out.logits, dim=1).float()  # [N, S, V] raw (unprocessed) logits
    tok_nll = -torch.log_softmax(logits, -1).gather(2, gen[:, :, None])[:, :, 0]  # [N, S]
    eos = torch.tensor(eos_ids)
    rows = []
    for i in range(gen.shape[0]):
        g = gen[i].tolist()
        is_eos = torch.isin(gen[i], eos).nonzero()
        n = int(is_eos[0]) + 1 if len(is_eos) else len(g)
        rows.append({"ids": g[:n], "nll": float(tok_nll[i, :n].sum()), "token_nll": tok_nll[i, :n].tolist(), "len": n,
                     "finished": bool(len(is_eos))})
    return rows


class LocalBackend(_ModelBackend):
    """The rating prompt answered by a local LM: the expected 0-99 rating under its score-token distribution."""

    name = "local"
    scale = "0-99 rating (expected value under the model)"

    def __init__(self, cfg: ElicitConfig):
        super().__init__(cfg)
        self.prompt = load_prompt(cfg.prompt_file)
        self.prompt_version = self.prompt.version
        self._cands = None

    def settings(self) -> dict:
        return {"template": self.cfg.template, "max_length": self.cfg.max_length,
                "answer_prefix": self.cfg.answer_prefix, "dtype": self.cfg.dtype}

    def _candidates(self):
        """Token ids of "0".."99" and a [V] bool mask of tokens that start with a digit (built once)."""
        if self._cands is None:
            import torch

            lm, tok = self._load()
            cands = [tok(str(n), add_special_tokens=False)["input_ids"] for n in range(100)]
            vocab = lm.get_output_embeddings().weight.shape[0]
            digit = torch.zeros(vocab, dtype=torch.bool)
            for i in range(min(vocab, len(tok))):
                s = tok.decode([i])
                digit[i] = bool(s) and s[0].isdigit()
            self._cands = (cands, digit)
        return self._cands

    def _prompt_ids(self, r: Record) -> tuple[list[int], bool]:
        from ual.common.formatting import encode_prompt

        _, tok = self._load()
        example = render_example(r.messages)

        def encode(ex: str) -> list[int]:
            msgs = [{"role": "user", "content": self.prompt.render(ex)}]
            ids = encode_prompt(msgs, tok, template=self.cfg.template)
            return ids + (tok(self.cfg.answer_prefix, add_special_tokens=False)["input_ids"] if self.cfg.answer_prefix else [])

        ids = encode(example)
        if len(ids) <= self.cfg.max_length:
            return ids, False
        ex_ids = tok(example, add_special_tokens=False)["input_ids"]
        keep = len(ex_ids) - (len(ids) - self.cfg.max_length) - 8  # 8: slack for re-tokenisation at the cut
        if keep < 1:
            raise InputError(None, None, "max_length", f"the rating prompt alone exceeds max_length for {r.id!r}")
        ids = encode(tok.decode(ex_ids[:keep]))
        return ids[: self.cfg.max_length], True

    @_no_grad
    def rating_distribution(self, prompt_ids: list[int]) -> list[float]:
        """P(n) for n = 0..99 (unnormalised: sums to the number mass), see the module docstring."""
        import torch

        from ual.common.batching import right_pad

        lm, _ = self._load()
        cands, digit = self._candidates()
        out = lm(input_ids=torch.tensor([prompt_ids]), use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(out.logits[0, -1].float(), -1)
        cache = out.past_key_values
        logp = [0.0] * 100
        for start in range(0, 100, CANDIDATE_CHUNK):
            chunk = cands[start: start + CANDIDATE_CHUNK]
            ids, cand_mask = right_pad(chunk, 0)
            # the cached prompt is visible to every candidate; candidate padding is not
            mask = torch.cat([torch.ones((len(chunk), len(prompt_ids)), dtype=torch.long), cand_mask], dim=1)
            c_cache = copy.deepcopy(cache)
            c_cache.batch_repeat_interleave(len(chunk))
            lp = torch.log_softmax(lm(input_ids=ids, attention_mask=mask, **cache_kwargs(lm, c_cache),
                                      use_cache=True).logits.float(), -1)  # [C, W, V]
            for i, c in enumerate(chunk):
                n = start + i
                if len(str(n)) > 1 and str(n)[0] == "0":
                    continue
                total = float(first[c[0]])
                for j in range(1, len(c)):
                    total += float(lp[i, j - 1, c[j]])
                end = 1.0 - float(lp[i, len(c) - 1].exp()[digit].sum())
                logp[n] = total + math.log(max(end, 1e-30))
        return [math.exp(v) for v in logp]

    def run(self, records: Sequence[Record], progress: bool) -> Iterator[dict]:
        with _progress(len(records), progress, "elicit local") as bar:
            for r in records:
                ids, truncated = self._prompt_ids(r)
                p = self.rating_distribution(ids)
                mass = sum(p)
                row = {"id": r.id, "score": None, "status": ERROR, "error": "no probability on any rating 0-99",
                       "number_mass": mass, "truncated": truncated}
                if mass > 0:
                    row.update(score=sum(n * pn for n, pn in enumerate(p)) / mass, status=OK, error=None,
                               top_rating=max(range(100), key=p.__getitem__))
                bar.update(1)
                yield row


class LikelihoodBackend(_ModelBackend):
    """Measures of the sample's own reference response under a local LM (no generation unless ``greedy``)."""

    name = "likelihood"
    _SCALES = {"mean_nll": "nats per token (mean NLL of the reference response)",
               "mean_entropy": "nats per token (mean predictive entropy over the reference response)",
               "gnll": "nats (summed NLL of the greedy reply, G-NLL)",
               "gnll_mean": "nats per token (length-normalised G-NLL)"}

    def __init__(self, cfg: ElicitConfig):
        super().__init__(cfg)
        if cfg.likelihood_score.startswith("gnll") and not cfg.greedy:
            raise InputError(None, None, "likelihood_score", f"{cfg.likelihood_score} needs greedy=true")
        self.scale = self._SCALES[cfg.likelihood_score]

    def settings(self) -> dict:
        s = {"template": self.cfg.template, "max_length": self.cfg.max_length, "score": self.cfg.likelihood_score,
             "greedy": self.cfg.greedy, "dtype": self.cfg.dtype}
        if self.cfg.greedy:
            s["max_new_tokens"] = self.cfg.max_new_tokens
        return s

    def check(self, records: Sequence[Record]) -> None:
        self._check_responses(records)

    def run(self, records: Sequence[Record], progress: bool) -> Iterator[dict]:
        lm, tok = self._load()
        # Batch records of similar length: padding to the longest sequence was measured to cost more than batching
        # saves on a CPU (benchmarks/RESULTS.md, bench_batching). Rows are keyed by id, so their order is free.
        encoded = {r.id: self._prompt_and_response(r) for r in records}
        records = sorted(records, key=lambda r: len(encoded[r.id][0]) + len(encoded[r.id][1]))
        with _progress(len(records), progress, "elicit likelihood") as bar:
            for batch in _batches(records, self.cfg.batch_size):
                enc = [encoded[r.id] for r in batch]
                stats = response_token_stats(lm, [(p, resp) for p, resp, _ in enc], tok.pad_token_id)
                greedy = None
                if self.cfg.greedy:
                    gp = [self._generation_prompt(r)[0] for r in batch]
                    greedy = generate(lm, gp, pad_id=tok.pad_token_id, eos_ids=self._eos_ids(),
                                      max_new_tokens=self.cfg.max_new_tokens, do_sample=False)
                for k, r in enumerate(batch):
                    nll, ent = stats[k]
                    row = {"id": r.id, "status": OK, "error": None, "mean_nll": sum(nll) / len(nll),
                           "mean_entropy": sum(ent) / len(ent), "sum_nll": sum(nll), "n_tokens": len(nll),
                           "truncated": enc[k][2]}
                    if greedy is not None:
                        g = greedy[k]
                        row.update(gnll=g["nll"], gnll_mean=g["nll"] / g["len"], greedy_len=g["len"],
                                   greedy_finished=g["finished"], greedy_text=tok.decode(g["ids"], skip_special_tokens=True))
                    row["score"] = row[self.cfg.likelihood_score]
                    bar.update(1)
                    yield row


LCA_METHOD = ("LCA reconstruction-v2 (docs/elicitation.md): H(P+) - log P+(c_g) and its pointwise term; v1 kept "
              "for comparison; not the published formula")


def lca_row(r: Record, texts: Sequence[str], samples: Sequence[dict], label: dict, variant: str) -> dict:
    """Answer classes of K sampled replies, their predictive entropy and every LCA reconstruction for one label.

    ``samples``: :func:`generate` rows; ``label``: ``{"text", "nll", "len"}`` of the label source g. Math records
    (category ``math`` or a gold ``answer``) are classed by final number, others by normalised exact match."""
    is_math = r.category == "math" or r.answer is not None
    classes = assign_classes([answer_class(t, math_answer=is_math) for t in texts])
    label_class = answer_class(label["text"], math_answer=is_math) or "invalid:label"
    lca = lca_reconstruction(classes, [s["nll"] for s in samples], [s["len"] for s in samples],
                             label_class, label["nll"], label["len"], variant=variant)
    return {"predictive_entropy": predictive_entropy(classes), "classes": classes, "label_class": label_class,
            **{k: lca[k] for k in ("lca", "lca_full", "lca_pointwise", "lca_v1", "lca_entropy", "lca_kl",
                                   "label_confidence", "label_agreement")}}


def sar_row(similarity, tok, prompt_text: str, samples: Sequence[dict], temperature: float) -> dict:
    """token-SAR, sentence-SAR and SAR (:mod:`ual.elicit.sar`) of K sampled replies (:func:`generate` rows):
    one embedder pass over every reply with each token removed, one over the K replies. Also returns the
    similarity model's description and the seconds each pass took."""
    import time

    from ual.elicit.sar import removal_texts, sar_measures

    decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    t0, c0 = time.perf_counter(), time.process_time()
    groups = [removal_texts(decode, prompt_text, s["ids"]) for s in samples]
    token_sims = similarity.removal_similarities(groups)
    t1, c1 = time.perf_counter(), time.process_time()
    pair = similarity.pairwise([full for full, _ in groups])
    t2, c2 = time.perf_counter(), time.process_time()
    out = sar_measures([s["token_nll"] for s in samples], token_sims, pair, temperature=temperature)
    out.update(sar_similarity_model=similarity.describe(), seconds_token_relevance=t1 - t0, seconds_pairwise=t2 - t1,
               cpu_seconds_token_relevance=c1 - c0, cpu_seconds_pairwise=c2 - c1)
    return out


class SamplingBackend(_ModelBackend):
    """K sampled replies per prompt: predictive entropy over answer classes and the LCA score (a reconstruction,
    see :func:`ual.elicit.lca.lca_reconstruction`; ``lca_variant`` picks which one is the score, all are recorded).
    Math samples (category ``math`` or a gold ``answer``) are classed by final number, others by normalised exact
    match."""

    name = "sampling"

    def __init__(self, cfg: ElicitConfig):
        super().__init__(cfg)
        if cfg.num_samples < 1 or cfg.sample_temperature <= 0 or cfg.sample_top_k < 0:
            raise InputError(None, None, "num_samples", "num_samples >= 1, sample_temperature > 0, sample_top_k >= 0")
        self.scale = (f"nats (LCA reconstruction, variant {cfg.lca_variant}, over answer classes)"
                      if cfg.sampling_score == "lca" else "nats (predictive entropy over answer classes)")

    def settings(self) -> dict:
        c = self.cfg
        return {"template": c.template, "max_length": c.max_length, "num_samples": c.num_samples,
                "temperature": c.sample_temperature, "top_k": c.sample_top_k, "max_new_tokens": c.max_new_tokens,
                "score": c.sampling_score, "lca_variant": c.lca_variant, "label_source": c.label_source,
                "seed": c.seed, "dtype": c.dtype, "lca": "reconstruction-v2 (docs/elicitation.md)",
                "classes": "flexible-number|normalised-exact"}

    def check(self, records: Sequence[Record]) -> None:
        if self.cfg.label_source == "reference":
            self._check_responses(records)

    def sample(self, batch: Sequence[Record]) -> list[list[dict]]:
        """K sampled replies per record (:func:`generate` rows), seeded by the batch's first id so that a resumed
        run draws the same samples for the same batch."""
        import torch

        lm, tok = self._load()
        c = self.cfg
        torch.manual_seed(c.seed + sum(map(ord, batch[0].id)))
        prompts = [self._generation_prompt(r)[0] for r in batch]
        samples = generate(lm, prompts, pad_id=tok.pad_token_id, eos_ids=self._eos_ids(),
                           max_new_tokens=c.max_new_tokens, do_sample=True, num_return_sequences=c.num_samples,
                           temperature=c.sample_temperature, top_k=c.sample_top_k)
        return [samples[k * c.num_samples: (k + 1) * c.num_samples] for k in range(len(batch))]

    def greedy_labels(self, batch: Sequence[Record]) -> list[dict]:
        """The greedy reply per record: :func:`generate` rows plus ``text``."""
        lm, tok = self._load()
        prompts = [self._generation_prompt(r)[0] for r in batch]
        return [dict(g, text=tok.decode(g["ids"], skip_special_tokens=True)) for g in
                generate(lm, prompts, pad_id=tok.pad_token_id, eos_ids=self._eos_ids(),
                         max_new_tokens=self.cfg.max_new_tokens, do_sample=False)]

    def reference_labels(self, batch: Sequence[Record]) -> list[dict]:
        """The reference response per record: ``{"text", "nll", "len", "token_nll", "token_entropy"}``."""
        lm, tok = self._load()
        enc = [self._prompt_and_response(r) for r in batch]
        stats = response_token_stats(lm, [(p, resp) for p, resp, _ in enc], tok.pad_token_id)
        return [{"nll": sum(s[0]), "len": len(s[0]), "text": r.response, "token_nll": s[0], "token_entropy": s[1],
                 "truncated": e[2]} for s, r, e in zip(stats, batch, enc)]

    def run(self, records: Sequence[Record], progress: bool) -> Iterator[dict]:
        c = self.cfg
        with _progress(len(records), progress, f"elicit {self.name}") as bar:
            for batch in _batches(records, c.batch_size):
                samples = self.sample(batch)
                labels = self.greedy_labels(batch) if c.label_source == "greedy" else self.reference_labels(batch)
                for k, r in enumerate(batch):
                    yield self._row(r, samples[k], labels[k])
                    bar.update(1)

    def _row(self, r: Record, samples: list[dict], label: dict) -> dict:
        _, tok = self._load()
        texts = [tok.decode(s["ids"], skip_special_tokens=True) for s in samples]
        m = lca_row(r, texts, samples, label, self.cfg.lca_variant)
        classes = m.pop("classes")
        row = {"id": r.id, "status": OK, "error": None, **m, "method": LCA_METHOD,
               "samples": [{"text": t, "class": cl, "nll": s["nll"], "len": s["len"], "finished": s["finished"]}
                           for t, cl, s in zip(texts, classes, samples)]}
        row["score"] = m["lca"] if self.cfg.sampling_score == "lca" else m["predictive_entropy"]
        return row


class SarBackend(SamplingBackend):
    """SAR (Duan et al., ACL 2024; :mod:`ual.elicit.sar`) over K sampled replies, plus everything ``sampling``
    records. The similarity model (``sar_similarity``) is loaded once and named in every row."""

    name = "sar"

    def __init__(self, cfg: ElicitConfig):
        super().__init__(cfg)
        if cfg.sar_temperature <= 0:
            raise InputError(None, None, "sar_temperature", "must be > 0")
        self.scale = (f"nats ({cfg.sar_score.replace('_', '-')}, Duan et al. 2024; similarity {cfg.sar_similarity}"
                      + ("" if cfg.sar_score == "token_sar" else "; plus score_offset = -log(1 + (K - 1) / t), so "
                         "that the score is >= 0") + ")")
        self._sim = None

    def settings(self) -> dict:
        return {**super().settings(), "score": self.cfg.sar_score, "sar_temperature": self.cfg.sar_temperature,
                "sar_similarity": self.cfg.sar_similarity}

    def similarity(self):
        from ual.elicit.sar import Similarity

        if self._sim is None:
            self._sim = Similarity(self.cfg.sar_similarity)
        return self._sim

    def prepare(self) -> None:
        super().prepare()
        self.similarity()

    def _row(self, r: Record, samples: list[dict], label: dict) -> dict:
        from ual.elicit.sar import sentence_sar_floor

        row = super()._row(r, samples, label)
        _, tok = self._load()
        sar = sar_row(self.similarity(), tok, r.prompt, samples, self.cfg.sar_temperature)
        row.update(sar)
        # sentence-SAR and SAR can be negative (support / t > 1); shift by their floor so the score is >= 0
        offset = 0.0 if self.cfg.sar_score == "token_sar" else -sentence_sar_floor(len(samples), self.cfg.sar_temperature)
        row.update(score=sar[self.cfg.sar_score] + offset, score_offset=offset)
        return row
